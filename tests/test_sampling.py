"""The compiled multinomial sampler (sim.engine.sampling) draws the multinomial distribution:
outcome by outcome against an independent inversion, by pmf goodness of fit, by moments,
and by the properties every draw must have."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sim.engine.sampling import LogFactorials, categories, multinomial


class Uniforms:
    """Stands in for a Generator: hands out the given uniforms."""

    def __init__(self, u):
        self.u = np.asarray(u, dtype=float)

    def random(self, n):
        assert n == len(self.u)
        return self.u


def reference_binomial(n: int, p: float, U: float) -> int:
    """Inversion in the order m, m+1, m-1, m+2, ... with scipy's pmf (written apart from
    the sampler: no shared recurrences)."""
    m = min(int((n + 1) * p), n)
    order = [m]
    for d in range(1, n + 1):
        order += [x for x in (m + d, m - d) if 0 <= x <= n]
    pmf = stats.binom.pmf(np.array(order), n, p)
    k = int(np.searchsorted(np.cumsum(pmf), U))
    return order[min(k, len(order) - 1)]


def test_each_uniform_gives_the_outcome_of_an_independent_inversion():
    rng = np.random.default_rng(7)
    logf = LogFactorials()
    cases = [(n, p) for n in (1, 2, 7, 40, 1100) for p in (0.003, 1 / 64, 0.3, 0.5, 0.8)]
    cases += [(20000, 0.01), (20000, 0.5)]
    for n, p in cases:
        u = rng.random(300)
        got = multinomial(Uniforms(u), np.full(300, n), categories([p, 1 - p]), logf)[:, 0]
        want = [reference_binomial(n, p, x) for x in u]
        assert got.tolist() == want, (n, p)


@pytest.mark.parametrize("n, p", [(3, 0.01), (10, 0.3), (1100, 1 / 64), (1100, 0.7),
                                  (20000, 0.3), (50, 0.999)])
def test_binomials_fit_their_pmf(n, p):
    """Chi-square against the exact pmf (tails merged to at least 5 expected); a sampler
    off by a fraction of a percent in any region of the support fails."""
    draws = 40000
    x = multinomial(np.random.default_rng(11), np.full(draws, n), categories([p, 1 - p]),
                    LogFactorials())
    assert (x.sum(axis=1) == n).all()
    k = np.arange(n + 1)
    expected = stats.binom.pmf(k, n, p) * draws
    observed = np.bincount(x[:, 0], minlength=n + 1).astype(float)
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
        assert stats.chisquare(obs, exp).pvalue > 1e-4


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
