"""Exact multinomial draws, compiled: the routing of every step (costs.draw_routing).

numpy's `Generator.multinomial` draws each row as a chain of conditional binomials, each by
inversion from zero when n p <= 30: about n p dependent divisions per binomial, so a row of
n copies costs O(n) however few the categories. A step of 8,000 tokens with top-8 routing
over 64 GPUs and 64 EP ranks is 4,032 such binomials, and it was a third to a half of the
simulator's wall time.

This module draws the same distribution by the same chain: row i, category j gets
binomial(left_i, p_j / (p_j + ... + p_{K-1})) of the copies left_i that the categories
before j did not take. The rows are independent, so category j is drawn for all rows at
once, each row a lane of a compiled loop that steps every lane together (branch-free, so
the compiler vectorizes it and no lane's stopping point is a mispredicted branch).

Each binomial is drawn by inversion with one uniform U: walk the outcomes in a fixed order,
subtracting each one's probability from U, and stop at the one that takes U to zero or
below. Inversion is exact in any fixed order of the outcomes; the only departure from exact
arithmetic is floating-point rounding (of order 1e-12 in each probability), as in any
sampler. A column takes one of two orders, by the largest n of the column and the largest
odds p / q of its rows: from zero when n p / q < _ZERO_ODDS (shared probabilities) or
_ZERO_ODDS_ROWS (a distribution per row), from each lane's mode otherwise. (A binomial's
walk from zero is about n p + 3 sqrt(n p q) outcomes, from the mode about 5 sqrt(n p q),
and a step from the mode costs about three steps from zero, which share their divisors
across the lanes; the thresholds are where the two measured the same, at 64 rows.)

- from zero (0, 1, 2, ...: algorithm BINV of Kachitvichyanukul and Schmeiser, "Binomial
  random variate generation", Comm. ACM 31(2), 1988, as numpy does for n p <= 30), all
  lanes stepping together, _STEPS outcomes a pass, by f(k + 1) = f(k) (n - k) / (k + 1) *
  p / q with 1/(k + 1) from a table (no division in the loop). The rule keeps
  q^n > exp(-_ZERO_ODDS), far from underflow. q^n is one exp a lane or, when all rows share
  the probabilities (routing over EP ranks) and their n lie within _POWERS, a table of
  q^lo, ..., q^top from one exp.
- from the mode (the chop-down search m, m+1, m-1, m+2, m-2, ... of the same paper, section
  2), all lanes stepping outward from their own modes together, two outcomes on each side
  a pass: O(sqrt(n p q)) passes. A lane whose upper or lower tail is used up keeps walking
  the other (the used-up side's probabilities are zeros). The mode's probability is one
  exp a lane of log-factorials from a table; the ratios' divisors differ by lane, so a pass
  takes one division a lane for its four outcomes.

Both walks stop once no more than _STRAGGLERS (from zero) or _STRAGGLERS_MODE lanes are
still going; those lanes finish alone, by the same arithmetic, so where the lanes stop does
not change any outcome. The exps are a compiled polynomial (`_exp`, within 4 units in the
last place) that the compiler vectorizes, as it cannot the library's.

The uniforms come from xoshiro256+ (Blackman and Vigna, "Scrambled linear pseudorandom number
generators", ACM Trans. Math. Softw. 47(4), 2021), the authors' choice for floating-point
numbers: its 53 upper bits, used here, pass BigCrush (only its lowest bits fail linearity
tests). It is seeded for each call by SplitMix64 (Steele, Lea and Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014; the seeding the xoshiro authors recommend)
from the 53 bits of one uniform drawn from the caller's numpy Generator. So a call is
reproducible from the Generator's state and advances it by one number (drawing the rows x
(K - 1) uniforms from the Generator itself took about a quarter of a 64 x 64 call). The
uniform of row i, category j is the (j * rows + i)-th output, used or not. Compiled with
numba (`cache=True`: compiled once per installation and kept beside the module or in
numba's user cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic
from scipy.special import gammaln

_STEPS = 8              # outcomes per pass over the lanes (inversion from zero)
_ZERO_ODDS = 118.0      # from zero when (largest n) p / q < this (one distribution) ...
_ZERO_ODDS_ROWS = 90.0  # ... or this (a distribution per row)
_STRAGGLERS = 4         # lanes left to finish alone (inversion from zero) ...
_STRAGGLERS_MODE = 12   # ... and from the mode
_POWERS = 256           # the widest range of n for a table of q^n
_U64 = np.uint64


@dataclass(frozen=True)
class Categories:
    """Category probabilities prepared for `multinomial`: row r of `p` is one distribution
    (a single row serves every draw row). For the kernel, `prob` stacks, per row and
    category, the chain's conditional probability cond = p_j / (1 - p_0 - ... - p_{j-1}),
    log(cond), log(1 - cond), the odds cond / (1 - cond) and their inverse; `odds_max` is
    each category's largest odds over the rows."""

    p: np.ndarray         # [rows, K]
    prob: np.ndarray      # [5, rows, K]
    odds_max: np.ndarray  # [K]


def categories(p: np.ndarray) -> Categories:
    p = np.atleast_2d(np.asarray(p, dtype=float))
    total = p.sum(axis=1, keepdims=True)
    if not (np.isfinite(p).all() and (p >= 0).all() and (total > 0).all()):
        raise ValueError("each row of p must be finite, non-negative and not all zero")
    p = p / total
    before = np.cumsum(p, axis=1) - p
    rest = 1.0 - before
    cond = np.clip(np.divide(p, rest, out=np.ones_like(p), where=rest > 0), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        log_p, log_q = np.log(cond), np.log1p(-cond)
        odds = np.divide(cond, 1.0 - cond, out=np.full_like(cond, np.inf), where=cond < 1)
        evens = np.divide(1.0 - cond, cond, out=np.full_like(cond, np.inf), where=cond > 0)
    prob = np.ascontiguousarray(np.stack([cond, log_p, log_q, odds, evens]))
    return Categories(p, prob, odds.max(axis=0))


class LogFactorials:
    """`tables`: log(k!) and 1/k (0 at k = 0) for k = 0..n and a few beyond, grown on
    demand (`upto`)."""

    def __init__(self, n: int = 4096):
        self._build(n)

    def _build(self, n: int) -> None:
        k = np.arange(n + 1, dtype=float)
        self.tables = np.stack([gammaln(k + 1.0),
                                np.divide(1.0, k, out=np.zeros_like(k), where=k > 0)])

    def upto(self, n: int) -> None:
        """Grow the tables to cover n (and the _STEPS beyond it a pass may read)."""
        size = self.tables.shape[1]
        if n + _STEPS >= size:
            self._build(max(n + _STEPS + 1, 2 * size))


def multinomial(rng: np.random.Generator, n: np.ndarray, cats: Categories,
                logf: LogFactorials) -> np.ndarray:
    """Row i: n[i] draws over the categories of row i of `cats` (or its only row); returns
    the [len(n), K] counts. Same distribution as rng.multinomial(n, p); takes one uniform
    from rng (the seed of the call's own uniforms)."""
    n = np.ascontiguousarray(n, dtype=np.int64)
    rows, K = len(n), cats.p.shape[1]
    if cats.p.shape[0] not in (1, rows):
        raise ValueError(f"{cats.p.shape[0]} distributions for {rows} rows")
    out = np.empty((rows, K), dtype=np.int64)
    if rows == 0:
        return out
    seed = int(rng.random() * 2**53)      # the 53 bits of one uniform
    while top := _draw(n, cats.prob, cats.odds_max, seed, logf.tables, out):
        logf.upto(top)                    # the tables were too short: grow them, draw again
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _draw(n, prob, odds_max, seed, tables, out):   # pragma: no cover (compiled)
    """out[i, j] for j < K - 1: binomial(left_i, prob[0, i or 0, j]), a column for all rows
    at a time (see the module docstring); out[i, K - 1]: the copies left. Returns 0, or the
    largest n if the tables are too short for it (and draws nothing)."""
    rows, K = out.shape
    shared = prob.shape[1] == 1
    lf, rk = tables[0], tables[1]
    top = lo = n[0]
    for i in range(rows):
        top = max(top, n[i])
        lo = min(lo, n[i])
    if top + _STEPS >= len(rk):
        return top
    s0, s1, s2, s3 = _seed(seed)
    left = n.copy()
    # a lane per row: U is its uniform less the probabilities of the outcomes passed, f (fl)
    # the probability of the last outcome passed (below the mode), cnt the outcomes passed,
    # nf its n as a float (n - m from the mode), mf its mode, w and v its p / q and q / p
    U = np.empty(rows)
    f = np.empty(rows)
    fl = np.empty(rows)
    nf = np.empty(rows)
    mf = np.empty(rows)
    w = np.empty(rows)
    v = np.empty(rows)
    y = np.empty(rows)
    cnt = np.empty(rows, np.int64)
    x = np.empty(rows, np.int64)
    c = np.empty(_STEPS)
    qn = np.empty(_POWERS + 4)
    if K > 1:
        for i in range(rows):
            s0, s1, s2, s3, U[i] = _xoshiro256plus(s0, s1, s2, s3)
    for j in range(K - 1):
        if top == 0:
            for i in range(rows):
                x[i] = 0
        elif top * odds_max[j] < (_ZERO_ODDS if shared else _ZERO_ODDS_ROWS):
            # ---- inversion from zero: 0, 1, 2, ...
            if shared and top - lo < _POWERS:
                # q^left from a table of q^lo, ..., q^top: four chains by q^4
                q = 1.0 - prob[0, 0, j]
                qn[0] = _exp(lo * prob[2, 0, j])
                for s in range(1, 4):
                    qn[s] = qn[s - 1] * q
                q4 = (q * q) * (q * q)
                for t in range(4, top - lo + 1):
                    qn[t] = qn[t - 4] * q4
                for i in range(rows):
                    nf[i] = left[i]
                    f[i] = qn[left[i] - lo]
                    U[i] -= f[i]
                    cnt[i] = 0
            else:
                for i in range(rows):
                    r = 0 if shared else i
                    nf[i] = left[i]
                    y[i] = nf[i] * prob[2, r, j]
                    w[i] = prob[3, r, j]
                for i in range(rows):
                    f[i] = _exp(y[i])
                for i in range(rows):
                    U[i] -= f[i]
                    cnt[i] = 0
            # all lanes together, _STEPS outcomes a pass (a lane whose U exceeds its rounded
            # total mass runs on; its count is capped at n below)
            k = 0
            while k < top:
                for s in range(_STEPS):
                    c[s] = rk[k + s + 1] * (prob[3, 0, j] if shared else 1.0)
                going = 0
                for i in range(rows):
                    ui, fi, g, xi = U[i], f[i], nf[i] - k, 0
                    for s in range(_STEPS):
                        xi += ui > 0.0
                        fi *= g * c[s] if shared else g * c[s] * w[i]
                        g -= 1.0
                        ui -= fi
                    U[i], f[i] = ui, fi
                    cnt[i] += xi
                    going += ui > 0.0
                k += _STEPS
                if going <= _STRAGGLERS:
                    break
            for i in range(rows):
                xi = cnt[i]
                if U[i] > 0.0:          # the stragglers, alone
                    xi = _from_zero_on(left[i], k, U[i], f[i], w[i],
                                       prob[3, 0, j] if shared else 1.0, shared, rk)
                x[i] = min(xi, left[i])
        else:
            # ---- inversion from each lane's mode: m, m + 1, m - 1, m + 2, m - 2, ...
            far = 0
            for i in range(rows):
                r = 0 if shared else i
                li = left[i]
                m = min(int((li + 1) * prob[0, r, j]), li)
                t = lf[li] - lf[m] - lf[li - m]
                t += m * prob[1, r, j] if m > 0 else 0.0
                t += (li - m) * prob[2, r, j] if li > m else 0.0
                y[i] = t
                x[i] = m
                mf[i] = m
                nf[i] = li - m
                w[i] = prob[3, r, j]
                v[i] = prob[4, r, j]
                far = max(far, max(m, li - m))
            for i in range(rows):
                f[i] = _exp(y[i])
            for i in range(rows):
                fl[i] = f[i]
                U[i] -= f[i]
                cnt[i] = U[i] > 0.0
            # all lanes together, passes d + 1 and d + 2 at a time: outcomes m + d + 1,
            # m - d - 1, m + d + 2, m - d - 2 (a side used up gives zeros: its ratio's
            # numerator reaches 0 and stays at or below it)
            d = 0
            while d < far:
                d1 = d + 1.0
                going = 0
                for i in range(rows):
                    a1 = mf[i] + d1                 # m + d + 1
                    b1 = nf[i] + d1                 # n - m + d + 1
                    a2 = a1 + 1.0
                    b2 = b1 + 1.0
                    p1 = a1 * b1
                    p2 = a2 * b2
                    inv = 1.0 / (p1 * p2)
                    i1 = p2 * inv                   # 1 / (a1 b1)
                    i2 = p1 * inv                   # 1 / (a2 b2)
                    fh = f[i] * ((b1 - (2.0 * d1 - 1.0)) * b1 * i1 * w[i])
                    u1 = U[i] - fh
                    fo = fl[i] * ((a1 - (2.0 * d1 - 1.0)) * a1 * i1 * v[i])
                    u2 = u1 - fo
                    fh *= (b2 - (2.0 * d1 + 1.0)) * b2 * i2 * w[i]
                    u3 = u2 - fh
                    fo *= (a2 - (2.0 * d1 + 1.0)) * a2 * i2 * v[i]
                    u4 = u3 - fo
                    f[i] = fh
                    fl[i] = fo
                    U[i] = u4
                    cnt[i] += (u1 > 0.0) + (u2 > 0.0) + (u3 > 0.0) + (u4 > 0.0)
                    going += u4 > 0.0
                d += 2
                if going <= _STRAGGLERS_MODE:
                    break
            for i in range(rows):                   # cnt outcomes passed: m, m + 1, m - 1, ...
                s = cnt[i]
                h = (s + 1) >> 1
                x[i] = x[i] + h if s & 1 else x[i] - h
            for i in range(rows):
                if U[i] > 0.0:                      # the stragglers, alone
                    x[i] = _mode_on(left[i], int(mf[i]), d, U[i], f[i], fl[i], w[i], v[i])
        top = 0
        lo = left[0] - x[0]
        for i in range(rows):
            xi = x[i]
            out[i, j] = xi
            li = left[i] - xi
            left[i] = li
            top = max(top, li)
            lo = min(lo, li)
        if j < K - 2:
            for i in range(rows):
                s0, s1, s2, s3, U[i] = _xoshiro256plus(s0, s1, s2, s3)
    for i in range(rows):
        out[i, K - 1] = left[i]
    return 0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _from_zero_on(n, k, U, f, w, c, shared, rk):   # pragma: no cover (compiled)
    """Inversion from zero by one lane, continued after outcome k as the lanes compute it
    (U and f as they left them; c = p / q of the shared probabilities, w of this row's):
    the outcome."""
    g = float(n - k)
    while U > 0.0 and k < n:
        f *= g * (rk[k + 1] * c) if shared else g * rk[k + 1] * w
        g -= 1.0
        k += 1
        U -= f
    return k


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _mode_on(n, m, d, U, fh, fl, w, v):   # pragma: no cover (compiled)
    """Inversion from the mode m by one lane, continued after pass d as the lanes compute
    it (U, and fh and fl the probabilities of m + d and m - d, as they left them): the
    outcome; m if both tails are used up (U exceeded the rounded total mass)."""
    mf = float(m)
    nf = float(n - m)
    while d < max(m, n - m):
        d1 = d + 1.0
        a1 = mf + d1
        b1 = nf + d1
        a2 = a1 + 1.0
        b2 = b1 + 1.0
        p1 = a1 * b1
        p2 = a2 * b2
        inv = 1.0 / (p1 * p2)
        i1 = p2 * inv
        i2 = p1 * inv
        fh *= (b1 - (2.0 * d1 - 1.0)) * b1 * i1 * w
        U -= fh
        if U <= 0.0:
            return m + d + 1
        fl *= (a1 - (2.0 * d1 - 1.0)) * a1 * i1 * v
        U -= fl
        if U <= 0.0:
            return m - d - 1
        fh *= (b2 - (2.0 * d1 + 1.0)) * b2 * i2 * w
        U -= fh
        if U <= 0.0:
            return m + d + 2
        fl *= (a2 - (2.0 * d1 + 1.0)) * a2 * i2 * v
        U -= fl
        if U <= 0.0:
            return m - d - 2
        d += 2
    return m


@intrinsic
def _as_double(typingctx, bits):
    """The float64 with the bits of an int64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@intrinsic
def _as_int(typingctx, value):
    """The int64 with the bits of a float64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


_ROUND = 6755399441055744.0          # 1.5 * 2^52: adding it rounds to an integer
_LOG2E4 = 4.0 / math.log(2.0)
_LN2_4_HI = 0.17328679491765797      # ln(2) / 4 to 2^-32 (exact times any k here) ...
_LN2_4_LO = 2.2232835597216693e-10   # ... and the rest
_ROOT1, _ROOT2, _ROOT3 = 1.189207115002721, 1.4142135623730951, 1.681792830507429  # 2^(i/4)
_C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9 = (1.0 / math.factorial(i) for i in range(2, 10))


@numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _exp(y):   # pragma: no cover (compiled)
    """exp(y) for -700 < y < 700, within 4 units in the last place, in operations the
    compiler vectorizes: y = k ln(2) / 4 + r with |r| <= ln(2) / 8, exp(r) by its Taylor
    polynomial to r^9 (the rest is below 1e-17), 2^(k / 4) from the exponent bits and a
    root of 2."""
    t = y * _LOG2E4 + _ROUND
    kf = t - _ROUND                  # k, the integer nearest 4 y / ln(2); t's low bits hold k
    r = (y - kf * _LN2_4_HI) - kf * _LN2_4_LO
    q = kf - 4.0 * np.floor(kf * 0.25)
    s = _ROOT1 if q == 1.0 else 1.0
    s = _ROOT2 if q == 2.0 else s
    s = _ROOT3 if q == 3.0 else s
    e = _as_double(((_as_int(t) >> 2) + 1023) << 52)     # 2^floor(k / 4)
    r2 = r * r
    r4 = r2 * r2
    p = (((1.0 + r) + r2 * (_C2 + r * _C3))
         + r4 * (((_C4 + r * _C5) + r2 * (_C6 + r * _C7)) + r4 * (_C8 + r * _C9)))
    return p * s * e


@numba.njit(cache=True, nogil=True, inline="always")
def _seed(seed):   # pragma: no cover (compiled)
    """xoshiro256+'s state: the first four SplitMix64 outputs from state `seed`."""
    z = _U64(seed)
    z, s0 = _splitmix64(z)
    z, s1 = _splitmix64(z)
    z, s2 = _splitmix64(z)
    z, s3 = _splitmix64(z)
    return s0, s1, s2, s3


@numba.njit(cache=True, nogil=True, inline="always")
def _splitmix64(z):   # pragma: no cover (compiled)
    """The next state and output of SplitMix64."""
    z += _U64(0x9E3779B97F4A7C15)
    v = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    v = (v ^ (v >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z, v ^ (v >> _U64(31))


@numba.njit(cache=True, nogil=True, inline="always")
def _xoshiro256plus(s0, s1, s2, s3):   # pragma: no cover (compiled)
    """The next state and a uniform in [0, 1) from its 53 upper bits."""
    u = np.int64((s0 + s3) >> _U64(11)) * (1.0 / 9007199254740992.0)
    t = s1 << _U64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = (s3 << _U64(45)) | (s3 >> _U64(19))
    return s0, s1, s2, s3, u
