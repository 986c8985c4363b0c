"""The compiled multinomial sampler (sim.engine.sampling) draws the multinomial distribution:
outcome by outcome against an independent inversion fed the same uniforms, by pmf goodness
of fit, by moments, and by the properties every draw must have."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sim.engine.sampling import (_ZERO_ODDS, _ZERO_ODDS_ROWS, LogFactorials, _exp, categories,
                                 multinomial)

M64 = 2**64


class Seeded:
    """Stands in for a Generator whose one uniform carries the given 53-bit seed."""

    def __init__(self, seed: int):
        assert 0 <= seed < 2**53
        self.seed = seed

    def random(self):
        return self.seed / 2**53


def splitmix64(state: int) -> tuple[int, int]:
    """(next state, output), after Vigna's splitmix64.c."""
    state = (state + 0x9E3779B97F4A7C15) % M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % M64
    return state, z ^ (z >> 31)


def reference_uniforms(seed: int, count: int) -> np.ndarray:
    """xoshiro256+ after Blackman and Vigna's xoshiro256plus.c, seeded with four SplitMix64
    outputs; each uniform is an output's 53 upper bits / 2^53 (Python integers: written
    apart from the sampler's compiled generator)."""
    state, s = seed % M64, []
    for _ in range(4):
        state, z = splitmix64(state)
        s.append(z)
    u = []
    for _ in range(count):
        u.append(((s[0] + s[3]) % M64 >> 11) / 2**53)
        t = (s[1] << 17) % M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = ((s[3] << 45) | (s[3] >> 19)) % M64
    return np.array(u)


def odds(p: float) -> float:
    return p / (1.0 - p) if p < 1.0 else np.inf


def from_zero(top: int, column_odds: float, shared: bool) -> bool:
    """The sampler's choice of order for a column: from zero when its largest n times the
    largest odds p / q of its rows is below the threshold (one distribution, or one a row)."""
    with np.errstate(invalid="ignore"):
        return bool(top * column_odds < (_ZERO_ODDS if shared else _ZERO_ODDS_ROWS))


def reference_binomial(n: int, p: float, U, zero: bool) -> np.ndarray:
    """The outcome of each uniform in U by inversion with scipy's pmf (written apart from
    the sampler: no shared recurrences) in the order 0, 1, 2, ... when `zero`, else
    m, m+1, m-1, m+2, m-2, ... from the mode m."""
    if zero:
        order = list(range(n + 1))
    else:
        m = min(int((n + 1) * p), n)
        order = [m]
        for d in range(1, n + 1):
            order += [x for x in (m + d, m - d) if 0 <= x <= n]
    cdf = np.cumsum(stats.binom.pmf(np.array(order), n, p))
    k = np.searchsorted(cdf, np.asarray(U, dtype=float))
    return np.array(order)[np.minimum(k, n)]


def reference_chain(n: np.ndarray, p: np.ndarray, seed: int) -> tuple[np.ndarray, set]:
    """The multinomial draws of rows n over p (one row of p for all, or one each) by the
    chain of reference binomials: category j of row i with the uniform j * rows + i, in the
    order the sampler chooses for column j; and the orders taken ("zero", "mode")."""
    rows, K = len(n), p.shape[1]
    shared = p.shape[0] == 1
    u = reference_uniforms(seed, rows * (K - 1)).reshape(K - 1, rows)
    p = p / p.sum(axis=1, keepdims=True)
    left = np.array(n, dtype=np.int64)
    out = np.zeros((rows, K), dtype=np.int64)
    orders = set()
    for j in range(K - 1):
        cond = [min(pi[j] / pi[j:].sum(), 1.0) if pi[j:].sum() > 0 else 1.0 for pi in p]
        zero = from_zero(int(left.max()), max(odds(c) for c in cond), shared)
        orders.add("zero" if zero else "mode")
        for i in range(rows):
            x = int(reference_binomial(int(left[i]), cond[0 if shared else i], u[j, i], zero))
            out[i, j] = x
            left[i] -= x
    out[:, K - 1] = left
    return out, orders


def test_splitmix64_gives_its_published_outputs():
    state, out = 0, []
    for _ in range(4):
        state, z = splitmix64(state)
        out.append(z)
    assert out == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F,
                   0xF88BB8A8724C81EC]


def test_each_uniform_gives_the_outcome_of_an_independent_inversion():
    logf = LogFactorials()
    cases = [(n, p) for n in (1, 2, 7, 40, 72, 73, 1100) for p in (0.003, 1 / 64, 0.3, 0.5, 0.8)]
    cases += [(20000, 0.01), (20000, 0.5)]
    cases += [(1000, 0.016), (1100, 0.0145)]     # means about 16 (from zero)
    cases += [(1100, 0.25), (1050, 0.27)]        # means about 280 (from the mode)
    cases += [(117, 0.5), (118, 0.5), (275, 0.3), (276, 0.3)]   # either side of the switch
    orders = {from_zero(n, odds(p), True) for n, p in cases}
    assert orders == {True, False}              # both orders are exercised
    assert not from_zero(118, 1.0, True) and from_zero(117, 1.0, True)
    assert not from_zero(276, odds(0.3), True) and from_zero(275, odds(0.3), True)
    for seed, (n, p) in enumerate(cases):
        seed = seed * 0x5851F42D4C957F2D % 2**53   # seeds spread over their 53 bits
        u = reference_uniforms(seed, 1000)
        got = multinomial(Seeded(seed), np.full(1000, n), categories([p, 1 - p]), logf)[:, 0]
        zero = from_zero(n, odds(p), True)
        assert got.tolist() == reference_binomial(n, p, u, zero).tolist(), (n, p)


@pytest.mark.parametrize("shared", [True, False])
def test_each_row_is_the_chain_of_an_independent_inversion(shared):
    """Rows of many sizes (a wide spread of n in every column) and K = 6 categories, one
    distribution for all rows or one per row: category j of row i is the reference binomial
    of what the categories before it left, with the uniform j * rows + i."""
    rng = np.random.default_rng(9)
    rows, K, seed = 80, 6, 2024
    p = rng.dirichlet(np.ones(K), size=1 if shared else rows)
    p[:, 3] = 0.0
    n = rng.choice([0, 1, 5, 30, 200, 900, 5000], size=rows)
    got = multinomial(Seeded(seed), n, categories(p), LogFactorials(16))
    want, orders = reference_chain(n, p, seed)
    assert orders == {"zero", "mode"}
    assert (got == want).all()


def zipf_routing(rows: int, K: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A step's routing sizes: rows of n to n + 15% copies, and expert popularity (Zipf 0.2):
    256 experts folded into K ranks (the 64 x 64 call), or 4 experts a row split over each
    row's own (the 64 x 4 call, when K == 4)."""
    pop = np.arange(1, (4 * rows if K == 4 else 256) + 1, dtype=float) ** -0.2
    p = pop.reshape(rows, 4) if K == 4 else pop.reshape(K, -1).sum(axis=1)[None, :]
    sizes = np.random.default_rng(seed).integers(n, n * 115 // 100, size=rows)
    return sizes, p


@pytest.mark.parametrize("rows, K, n, seed, orders", [
    (64, 64, 1000, 1, {"zero"}),            # 64 x 64, means about 16: q^n from a table
    (64, 64, 4000, 2, {"zero", "mode"}),    # means about 60: columns of either order
    (64, 4, 1000, 3, {"mode"}),             # 64 x 4, a distribution a row, means about 280
    (64, 4, 160, 4, {"zero", "mode"}),      # either side of the switch, column by column
    (13, 4, 1000, 5, {"mode"}),             # rows not a multiple of the vector width
    (13, 64, 1000, 6, {"zero"}),
])
def test_routing_sized_calls_follow_the_reference(rows, K, n, seed, orders):
    sizes, p = zipf_routing(rows, K, n, seed)
    got = multinomial(Seeded(seed), sizes, categories(p), LogFactorials())
    want, taken = reference_chain(sizes, p, seed)
    assert taken == orders
    assert (got == want).all()


def test_the_mode_order_with_lanes_of_mean_16():
    """A column whose largest odds send it from the mode takes every lane that way, rows of
    mean 16 with n about 1,000 among them (one distribution per row)."""
    rows, seed = 64, 77
    n = np.full(rows, 1000)
    p = np.tile([1 / 64, 1 - 1 / 64], (rows, 1))
    p[::8] = [0.5, 0.5]                          # odds 1: the column goes from the mode
    assert not from_zero(1000, 1.0, False)
    got = multinomial(Seeded(seed), n, categories(p), LogFactorials())
    want, taken = reference_chain(n, p, seed)
    assert taken == {"mode"}
    assert (got == want).all()


@pytest.mark.parametrize("n, p", [(89, 0.5), (90, 0.5)])
def test_either_side_of_the_switch_with_a_distribution_a_row(n, p):
    rows, seed = 200, 31
    assert from_zero(89, 1.0, False) and not from_zero(90, 1.0, False)
    pr = np.tile([p, 1 - p], (rows, 1))
    got = multinomial(Seeded(seed), np.full(rows, n), categories(pr), LogFactorials())
    want, taken = reference_chain(np.full(rows, n), pr, seed)
    assert taken == ({"zero"} if n < 90 else {"mode"})
    assert (got == want).all()


def test_exp_is_within_a_few_units_in_the_last_place():
    y = np.concatenate([-np.linspace(0, 700, 20001), np.linspace(0, 1, 1001),
                        -np.random.default_rng(0).random(5000) * 60])
    got = np.array([_exp(v) for v in y])
    want = np.exp(y.astype(np.longdouble))
    rel = np.abs((got - want) / want).astype(float)
    assert rel.max() < 4 * 2.0**-53 * 2          # 4 units in the last place (of [1, 2))
    assert _exp(0.0) == 1.0


def assert_fits_pmf(x: np.ndarray, n: int, p: float):
    """Chi-square of draws x against the binomial(n, p) pmf (tails merged to at least 5
    expected); a sampler off by a fraction of a percent in any region of the support fails."""
    draws = len(x)
    expected = stats.binom.pmf(np.arange(n + 1), n, p) * draws
    observed = np.bincount(x, minlength=n + 1).astype(float)
    # merge outcomes into bins of at least 5 expected
    edges, acc = [], 0.0
    for i, e in enumerate(expected):
        acc += e
        if acc >= 5:
            edges.append(i + 1)
            acc = 0.0
    edges[-1] = n + 1
    obs = np.add.reduceat(observed, [0] + edges[:-1])
    exp = np.add.reduceat(expected, [0] + edges[:-1])
    exp *= obs.sum() / exp.sum()
    if len(obs) > 1:
        assert stats.chisquare(obs, exp).pvalue > 1e-4, (n, p)


@pytest.mark.parametrize("n, p", [(3, 0.01), (10, 0.3), (1100, 1 / 64), (1100, 0.7),
                                  (20000, 0.3), (50, 0.999), (72, 0.5), (73, 0.5)])
def test_binomials_fit_their_pmf(n, p):
    x = multinomial(np.random.default_rng(11), np.full(40000, n), categories([p, 1 - p]),
                    LogFactorials())
    assert (x.sum(axis=1) == n).all()
    assert_fits_pmf(x[:, 0], n, p)


def test_rows_of_their_own_sizes_and_distributions_fit_their_pmf():
    """Rows of three kinds interleaved in one call (per-row probabilities, both orders in
    every column): each kind fits its own pmf."""
    kinds = [(12, 0.2), (60, 0.55), (3000, 0.3)]
    which = np.arange(60000) % 3
    n = np.array([kinds[k][0] for k in which])
    p = np.array([[kinds[k][1], 1 - kinds[k][1]] for k in which])
    x = multinomial(np.random.default_rng(12), n, categories(p), LogFactorials())
    for k, (nk, pk) in enumerate(kinds):
        assert_fits_pmf(x[which == k, 0], nk, pk)


def test_routing_sized_rows_have_multinomial_moments():
    """64 categories of Zipf popularity, 1,100 copies a row (a prefill-heavy step): means
    and the covariance of two categories agree with n p and -n p_i p_j."""
    K, n, rows = 64, 1100, 20000
    p = np.arange(1, K + 1) ** -0.8
    p /= p.sum()
    x = multinomial(np.random.default_rng(3), np.full(rows, n), categories(p),
                    LogFactorials()).astype(float)
    mean, sd = n * p, np.sqrt(n * p * (1 - p) / rows)
    assert np.abs(x.mean(axis=0) - mean).max() < 5 * sd.max()
    var = x.var(axis=0)
    assert var == pytest.approx(n * p * (1 - p), rel=0.06)
    cov = np.cov(x[:, 0], x[:, 1])[0, 1]
    assert cov == pytest.approx(-n * p[0] * p[1], rel=0.1)


def test_per_row_distributions():
    """A table of several distributions: row i draws from distribution i."""
    p = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    x = multinomial(np.random.default_rng(0), np.array([5, 1000, 7]), categories(p),
                    LogFactorials())
    assert x[0].tolist() == [5, 0, 0] and x[2].tolist() == [0, 0, 7]
    assert x[1, 0] == 0 and 400 < x[1, 1] < 600
    with pytest.raises(ValueError):
        multinomial(np.random.default_rng(0), np.array([1, 2]), categories(p), LogFactorials())
    with pytest.raises(ValueError):
        categories([0.0, 0.0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5000), min_size=1, max_size=20),
       st.lists(st.sampled_from([0.0, 1e-6, 0.01, 0.2, 1.0, 3.0]), min_size=2, max_size=70),
       st.integers(0, 2**32 - 1))
def test_draws_keep_counts_and_never_use_empty_categories(n, weights, seed):
    if not any(weights):
        weights[0] = 1.0
    n = np.array(n)
    cats = categories(weights)
    a = multinomial(np.random.default_rng(seed), n, cats, LogFactorials(16))
    b = multinomial(np.random.default_rng(seed), n, cats, LogFactorials())
    assert (a == b).all()                       # the same seed, the same draw
    assert (a >= 0).all() and (a.sum(axis=1) == n).all()
    assert (a[:, np.array(weights) == 0] == 0).all()
