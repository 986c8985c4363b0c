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
sampler. Two orders are used:

- from zero (0, 1, 2, ...: algorithm BINV of Kachitvichyanukul and Schmeiser, "Binomial
  random variate generation", Comm. ACM 31(2), 1988, as numpy does for n p <= 30) when
  P(X = 0) = q^n >= exp(-_FROM_ZERO), so for means up to about 50 (beyond, the walk is long
  and q^n heads for underflow). All lanes step together until the last one stops, by
  f(k + 1) = f(k) (n - k) / (k + 1) * p / q with 1/(k + 1) from a table (no division in
  the loop). q^n costs one exp a lane, or, when all rows share the probabilities (routing
  over EP ranks), one exp per bit of n for all lanes: q^n as a product of q^(2^b).
- from the mode otherwise (the chop-down search m, m+1, m-1, m+2, ... of the same paper,
  section 2), one lane at a time: O(sqrt(n p q)) steps, the mode's probability from a table
  of log-factorials.

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
from scipy.special import gammaln

_FROM_ZERO = 50.0   # inversion from zero when q^n >= exp(-_FROM_ZERO)
_STEPS = 4          # outcomes per pass over the lanes (inversion from zero)
_U64 = np.uint64


@dataclass(frozen=True)
class Categories:
    """Category probabilities prepared for `multinomial`: row r of `p` is one distribution
    (a single row serves every draw row); the chain's conditional probabilities p_j /
    (1 - p_0 - ... - p_{j-1}), their logs, log(1 - .), and odds."""

    p: np.ndarray       # [rows, K]
    cond: np.ndarray
    log_p: np.ndarray
    log_q: np.ndarray
    odds: np.ndarray


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
    return Categories(p, cond, log_p, log_q, odds)


class LogFactorials:
    """log(k!) (`table`) and 1/k (`inverse`; 0 at k = 0) for k = 0..n and a few beyond,
    grown on demand."""

    def __init__(self, n: int = 4096):
        self._build(n)

    def _build(self, n: int) -> None:
        k = np.arange(n + 1, dtype=float)
        self.table = gammaln(k + 1.0)
        self.inverse = np.divide(1.0, k, out=np.zeros_like(k), where=k > 0)

    def upto(self, n: int) -> np.ndarray:
        if n + _STEPS >= len(self.table):
            self._build(max(n + _STEPS + 1, 2 * len(self.table)))
        return self.table


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
    lf = logf.upto(int(n.max()))
    _draw(n, cats.cond, cats.log_p, cats.log_q, cats.odds, seed, lf, logf.inverse, out)
    return out


@numba.njit(cache=True, nogil=True)
def _draw(n, cond, log_p, log_q, odds, seed, lf, rk, out):   # pragma: no cover (compiled)
    """out[i, j] for j < K - 1: binomial(left_i, cond[i or 0, j]), a column for all rows at
    a time (see the module docstring); out[i, K - 1]: the copies left."""
    rows, K = out.shape
    shared = cond.shape[0] == 1
    s0, s1, s2, s3 = _seed(seed)
    left = n.copy()
    # a lane per row: while inverting from zero, U is the uniform less the probabilities of
    # the x outcomes passed, f the probability of the current outcome, nf = left as a float,
    # w = p / q of its row (rows of their own)
    U = np.empty(rows)
    f = np.empty(rows)
    nf = np.empty(rows)
    w = np.empty(rows)
    x = np.empty(rows, np.int64)
    c = np.empty(_STEPS)
    top = 0
    for i in range(rows):
        top = max(top, left[i])
    for j in range(K - 1):
        if shared:                      # q^left as a product of q^(2^b)
            for i in range(rows):
                f[i] = 1.0
            b = 0
            while top >> b:
                qb = math.exp(log_q[0, j] * (1 << b))
                for i in range(rows):
                    f[i] *= qb if (left[i] >> b) & 1 else 1.0
                b += 1
        far = 0                         # the largest n inverted from zero
        for i in range(rows):
            s0, s1, s2, s3, u = _xoshiro256plus(s0, s1, s2, s3)
            r = 0 if shared else i
            x[i] = 0
            if left[i] * log_q[r, j] >= -_FROM_ZERO:
                if not shared:
                    f[i] = math.exp(left[i] * log_q[i, j])
                    w[i] = odds[i, j]
                U[i] = u - f[i]
                nf[i] = left[i]
                far = max(far, left[i])
            else:                       # from the mode, alone; the lane sits still
                x[i] = _chop_down(left[i], cond[r, j], log_p[r, j], log_q[r, j], odds[r, j],
                                  u, lf, rk)
                U[i] = -1.0
                f[i] = w[i] = nf[i] = 0.0
        # inversion from zero, all lanes together, _STEPS outcomes a pass, until every lane
        # has stopped (a lane whose U exceeds its rounded total mass runs on to far; its x
        # is capped at n below)
        k = 0
        while k < far:
            for s in range(_STEPS):
                c[s] = rk[k + s + 1] * (odds[0, j] if shared else 1.0)
            going = 0
            for i in range(rows):
                ui, fi, g, xi = U[i], f[i], nf[i] - k, 0
                for s in range(_STEPS):
                    xi += ui > 0.0
                    fi *= g * c[s] if shared else g * c[s] * w[i]
                    g -= 1.0
                    ui -= fi
                U[i], f[i] = ui, fi
                x[i] += xi
                going += ui > 0.0
            if going == 0:
                break
            k += _STEPS
        top = 0
        for i in range(rows):
            xi = min(x[i], left[i])
            out[i, j] = xi
            left[i] -= xi
            top = max(top, left[i])
    for i in range(rows):
        out[i, K - 1] = left[i]


@numba.njit(cache=True, nogil=True)
def _chop_down(n, p, log_p, log_q, odds, U, lf, rk):   # pragma: no cover (compiled)
    """Binomial(n, p) by inversion from the mode with uniform U: walk the outcomes m, m+1,
    m-1, m+2, m-2, ... subtracting each one's probability from U and stop at the one that
    takes it to zero or below (probabilities by the ratio recurrences, 1/k from `rk`)."""
    if n == 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    m = min(int((n + 1) * p), n)
    f = math.exp(lf[n] - lf[m] - lf[n - m] + m * log_p + (n - m) * log_q)
    U -= f
    if U <= 0.0:
        return m
    inverse_odds = 1.0 / odds
    hi = lo = m
    f_hi = f_lo = f
    while True:
        if hi < n:
            f_hi *= (n - hi) * rk[hi + 1] * odds
            hi += 1
            U -= f_hi
            if U <= 0.0:
                return hi
        elif lo <= 0:
            return m          # both tails used up: U exceeded the rounded total mass
        if lo > 0:
            f_lo *= lo * rk[n - lo + 1] * inverse_odds
            lo -= 1
            U -= f_lo
            if U <= 0.0:
                return lo


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
