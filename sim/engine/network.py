"""Flow-level network: links are capacities shared max-min fairly by the flows crossing them.

A *flow* here is an aggregate: one transfer whose bytes are spread over several links, given
as a load vector (bytes on each link it crosses). A point-to-point send is a flow whose load
is its size on each link of its path; a whole all-to-all phase is one flow whose load on a
link is the sum of the bytes all its pairs put there. A flow progresses as one unit: at rate
`x` (in units of its own size per second) it puts `x * load[l]` bytes/s on link l. Alone it
finishes in max_l(load[l] / capacity[l]): the bottleneck link's drain time, which is the
closed form for an all-to-all on a switch, for a ring step, and for a two-tier fabric.

Sharing: weighted max-min fairness by progressive filling. Each round raises the progress
rate of every unfrozen flow by the same amount, scaled so that a flow's rate counts the bytes
it moves over its own most loaded link (two flows bottlenecked on the same link get equal
bytes/s there), until a link saturates; flows crossing it freeze. Rates are recomputed only
when a flow starts or ends; a whole collective phase is one flow, so an all-to-all costs
one solve when it starts and one when it ends.

Capacities may change mid-run (faults, docs/faults.md): `set_capacity` moves every flow to
the change instant at its old rate, swaps the capacities, re-routes (through a callback) the
flows that cross a link left with no capacity, and re-solves. Byte conservation stays exact:
a flow's remaining fraction is carried over, and its bytes count per route.

Blind spots (also in docs/architecture.md): no packet queueing, incast, congestion control
or ECMP collisions; inside one aggregated flow every pair progresses in proportion, as an
ideally paced collective kernel would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import math
from array import array

import numba
import numpy as np
import simpy

EPS = 1e-12
SAT_LOG_ROWS = 200_000  # saturation intervals kept (5 MB) before compaction
# finished trains whose link statistics are logged together: numpy's cost per call is
# paid once per batch instead of once per train (their byte counts are current at once)
SETTLE_BATCH = 128
SATURATED = 1 - 1e-9   # utilisation counted as "at capacity"


def _union_length(starts: np.ndarray, ends: np.ndarray) -> float:
    """Total length covered by intervals [starts, ends)."""
    o = np.argsort(starts, kind="stable")
    s, e = starts[o], ends[o]
    cover = np.maximum.accumulate(e)
    before = np.concatenate([[-np.inf], cover[:-1]])
    return float(np.maximum(cover - np.maximum(s, before), 0.0).sum())


def _merge_intervals(starts: np.ndarray, ends: np.ndarray):
    """Disjoint sorted intervals covering the same points as [starts, ends)."""
    o = np.argsort(starts, kind="stable")
    s, e = starts[o], ends[o]
    cover = np.maximum.accumulate(e)
    new = np.r_[True, s[1:] > cover[:-1]]
    last = np.r_[np.flatnonzero(new)[1:] - 1, len(s) - 1]
    return s[new], cover[last]


def _tick(now: float) -> float:
    """The smallest step the clock can take at `now` (a few float ulps): a flow with less
    time than this left is finished, or it would never advance."""
    return 4.0 * math.ulp(max(abs(now), 1.0))


class Prepared:
    """A transfer's loads, normalised once and reusable for many identical flows (every MoE
    layer of a step sends the same pattern). Everything that does not depend on other flows
    is precomputed here (`Network.prepare`, one compiled pass). Treat as read-only."""

    __slots__ = ("links", "load", "size", "total", "alone_bps", "alone_util",
                 "alone_sat", "alone_sat_tiers", "alone_tier_util", "alone_sat_mask",
                 "alone_dur", "bind", "epoch")

    def __init__(self, links, load, size, total, alone_bps, alone_util, alone_sat,
                 alone_sat_tiers, alone_tier_util, alone_sat_mask, alone_dur, bind, epoch=0):
        self.links = links                  # unique link ids
        self.load = load                    # bytes per link / size (most loaded link = 1)
        self.size = size                    # bytes on the most loaded link
        self.total = total                  # bytes over all links
        self.alone_bps = alone_bps          # bytes/s on its most loaded link when alone
        self.alone_util = alone_util        # utilisation of its links when alone
        self.alone_sat = alone_sat          # its bottleneck links (saturated when alone)
        self.alone_sat_tiers = alone_sat_tiers
        self.alone_tier_util = alone_tier_util  # per tier: mean utilisation of its links alone
        self.alone_sat_mask = alone_sat_mask    # per tier: holds one of its bottleneck links
        self.alone_dur = alone_dur          # seconds alone (its most loaded link's drain time)
        self.bind = bind                    # its links that can bind (see Network._binding)
        self.epoch = epoch                  # the capacities alone_* were computed for


@numba.njit(cache=True, nogil=True)
def _prepare(links, load, capacity, tier, binding, tier_links):   # pragma: no cover
    """Network.prepare's arithmetic in one compiled pass over a transfer's links (those
    with no load dropped), packed in three arrays (each array handed back to Python
    costs about a microsecond): `ints` = links | saturated links | binding links |
    saturated tiers, `per_link` = normalised load | utilisation alone, `per_tier` =
    weight | mean utilisation alone | holds a saturated link (0/1); then the counts
    (links, saturated, binding) and size, total, bytes/s alone, seconds alone."""
    n = 0
    for i in range(len(load)):
        if load[i] > 0:
            n += 1
    n_tiers = len(tier_links)
    ids = np.empty(n, np.int64)
    per_link = np.empty(2 * n)          # kept load (then normalised) | drain (then util)
    size = slowest = total = 0.0
    k = 0
    for i in range(len(load)):
        if load[i] > 0:
            ids[k] = links[i]
            per_link[k] = load[i]
            per_link[n + k] = load[i] / capacity[links[i]]   # seconds alone at full rate
            total += load[i]
            size = max(size, load[i])
            slowest = max(slowest, per_link[n + k])
            k += 1
    per_tier = np.zeros(3 * n_tiers)
    n_sat = n_bind = 0
    for i in range(n):
        t = tier[ids[i]]
        per_tier[t] += per_link[n + i] / size      # utilisation per byte/s on the top link
        per_link[i] /= size
        per_link[n + i] /= slowest
        if per_link[n + i] >= SATURATED:
            per_tier[2 * n_tiers + t] = 1.0
            n_sat += 1
        n_bind += binding[ids[i]] > 0
    n_st = 0
    for t in range(n_tiers):
        n_st += per_tier[2 * n_tiers + t] > 0
    ints = np.empty(n + n_sat + n_bind + n_st, np.int64)
    for i in range(n):                  # (a slice copy would compile a shape check's message)
        ints[i] = ids[i]
    a, b = n, n + n_sat
    for i in range(n):
        if per_link[n + i] >= SATURATED:
            ints[a] = ids[i]
            a += 1
        if binding[ids[i]] > 0:
            ints[b] = ids[i]
            b += 1
    for t in range(n_tiers):
        if per_tier[2 * n_tiers + t] > 0:
            ints[b] = t
            b += 1
    bps = size / slowest if n else 0.0
    for t in range(n_tiers):
        per_tier[n_tiers + t] = per_tier[t] * bps / max(tier_links[t], 1)
    return ints, per_link, per_tier, n, n_sat, n_bind, size, total, bps, slowest


@numba.njit(cache=True, nogil=True)
def _reserve_train(links, reserved, pool_count, train, waits, pidx, xdur,
                   now):   # pragma: no cover
    """Network.start_train's arithmetic (compiled): if no train or shared flow holds any
    of `links`, reserve them for `train` and return True, the absolute end of each of its
    [wait0, xfer0, wait1, xfer1, ...] and how many of those take time; else False and
    nothing reserved. Segment k waits waits[k], then runs transfer pidx[k] for
    xdur[pidx[k]]."""
    for i in range(len(links)):
        if reserved[links[i]] >= 0 or pool_count[links[i]] != 0:
            return False, np.empty(0), 0
    for i in range(len(links)):
        reserved[links[i]] = train
    ends = np.empty(2 * len(waits))
    acc = 0.0
    events = 0
    for k in range(len(waits)):
        acc += waits[k]
        ends[2 * k] = now + acc
        acc += xdur[pidx[k]]           # pidx -1: the last entry, 0 (nothing moves)
        ends[2 * k + 1] = now + acc
        events += (waits[k] != 0.0) + (xdur[pidx[k]] != 0.0)
    return True, ends, events


@numba.njit(cache=True, nogil=True)
def _max_min(links, load, offsets, capacity, tier, tier_links, slot):   # pragma: no cover
    """Weighted max-min rates of several flows by progressive filling (compiled): flow i
    puts load[k] bytes per byte/s of its own on link links[k], offsets[i] <= k <
    offsets[i + 1]. Each round raises every unfrozen flow by the same amount until a link
    fills; the flows crossing it freeze. `slot` is scratch over all links, -1 on entry and
    on return.

    Returns, per flow, its bytes/s on its most loaded link; per entry k, its link's
    utilisation (duplicates included, as `links`); the saturated links (each once, in
    order of first appearance) and their tiers (ascending); and each tier's mean
    utilisation over all its links. When no
    link is shared the flows run as if alone: empty arrays (the caller has those figures)."""
    n_f, n_e = len(offsets) - 1, len(links)
    union = np.empty(n_e, np.int64)
    n_u = 0
    for k in range(n_e):
        if slot[links[k]] < 0:
            slot[links[k]] = n_u
            union[n_u] = links[k]
            n_u += 1
    if n_u == n_e:                      # every link in one flow only
        for k in range(n_e):
            slot[links[k]] = -1
        return np.empty(0), np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64), \
            np.empty(0)
    a = np.zeros((n_f, n_u))            # a[i, j]: load of flow i on union link j
    for i in range(n_f):
        for k in range(offsets[i], offsets[i + 1]):
            a[i, slot[links[k]]] = load[k]
    cap = np.empty(n_u)
    for j in range(n_u):
        cap[j] = capacity[union[j]]
    residual = cap.copy()
    bps = np.zeros(n_f)
    active = np.ones(n_f, np.bool_)
    demand = np.empty(n_u)
    left = n_f
    while left > 0:
        for j in range(n_u):
            demand[j] = 0.0
        for i in range(n_f):
            if active[i]:
                for j in range(n_u):
                    demand[j] += a[i, j]
        inc = np.inf
        for j in range(n_u):
            if demand[j] > EPS:
                inc = min(inc, residual[j] / demand[j])
        for i in range(n_f):
            if active[i]:
                bps[i] += inc
        for j in range(n_u):
            residual[j] -= inc * demand[j]
        frozen = 0
        for j in range(n_u):
            if demand[j] > EPS and residual[j] <= 1e-9 * cap[j]:   # j is full
                for i in range(n_f):
                    if active[i] and a[i, j] > EPS:
                        active[i] = False
                        frozen += 1
        if frozen == 0:   # numerical guard: freeze the flows of the tightest link
            best, jb = np.inf, 0
            for j in range(n_u):
                if demand[j] > EPS and residual[j] / demand[j] < best:
                    best, jb = residual[j] / demand[j], j
            for i in range(n_f):
                if active[i] and a[i, jb] > EPS:
                    active[i] = False
                    frozen += 1
        left -= frozen
    util_u = np.zeros(n_u)
    n_sat = 0
    level = np.zeros(len(tier_links))
    sat_tier = np.zeros(len(tier_links), np.bool_)
    for j in range(n_u):
        for i in range(n_f):
            util_u[j] += bps[i] * a[i, j]
        util_u[j] /= cap[j]
        level[tier[union[j]]] += util_u[j]
        if util_u[j] >= SATURATED:
            n_sat += 1
            sat_tier[tier[union[j]]] = True
    sat = np.empty(n_sat, np.int64)
    n_sat = 0
    for j in range(n_u):
        if util_u[j] >= SATURATED:
            sat[n_sat] = union[j]
            n_sat += 1
    util = np.empty(n_e)
    for k in range(n_e):
        util[k] = util_u[slot[links[k]]]
    for k in range(n_e):                # after: a shared link appears more than once
        slot[links[k]] = -1
    n_st = 0
    for t in range(len(tier_links)):
        level[t] /= max(tier_links[t], 1)
        n_st += sat_tier[t]
    tiers = np.empty(n_st, np.int64)
    n_st = 0
    for t in range(len(tier_links)):
        if sat_tier[t]:
            tiers[n_st] = t
            n_st += 1
    return bps, util, sat, tiers, level


@dataclass
class Flow:
    prep: Prepared
    label: str
    done: simpy.Event
    remaining: float = 1.0     # fraction of the flow still to move
    rate: float = 0.0          # fraction per second
    counted: float = 0.0       # fraction moved inside the statistics window
    owner: int = -1            # who started it (the engine's replica), for cancel()
    tag: object = None         # opaque to the network: what a reroute callback needs
    initial: float = 1.0       # fraction left when it joined (< 1: the rest of a train's)


class TrainShape:
    """The fixed structure of a train: segment k is a wait then transfer pidx[k] (-1: none).
    A stage's trains all have the same shape; what follows from it (which segments move
    bytes for a given set of transfers that move anything, how often each transfer runs)
    is worked out once per such set and kept (`moving`)."""

    __slots__ = ("pidx", "_moving")

    def __init__(self, pidx: np.ndarray):
        self.pidx = np.asarray(pidx, dtype=np.int64)
        self._moving: dict = {}

    def moving(self, moves: tuple) -> "_Moving":
        """The shape when only the transfers u with moves[u] move bytes."""
        m = self._moving.get(moves)
        if m is None:
            ok = np.array(list(moves) + [False])
            pidx = np.where(ok[self.pidx], self.pidx, -1)
            k = np.flatnonzero(pidx >= 0)
            uses = np.bincount(pidx[k], minlength=len(moves))
            m = self._moving[moves] = _Moving(pidx, k, 2 * k + 1, pidx[k],
                                              tuple(int(c) for c in uses))
        return m


@dataclass(frozen=True)
class _Moving:
    pidx: np.ndarray      # per segment: its transfer, -1 where none moves bytes
    k: np.ndarray         # the segments whose transfer moves bytes
    xs: np.ndarray        # their transfer's index in the [wait0, xfer0, wait1, ...] timeline
    u: np.ndarray         # their transfer (pidx[k])
    uses: tuple           # per transfer: how many segments run it


@dataclass(slots=True)
class Train:
    """A stage-step's whole sequence of waits and transfers, run as one event while no other
    flow touches its links (the solo times are then exact). `seg_end` holds absolute end
    times; `preps[k]` is the transfer of segment k (None for a wait)."""

    id: int
    links: np.ndarray
    t0: float
    seg_end: np.ndarray
    preps: list              # the distinct transfers
    shape: _Moving           # per segment: index into preps (-1 for none), and more
    labels: list
    owner: int
    done: simpy.Event
    tags: list | None = None  # per transfer: the tag its flow carries if it joins the pool
    moved: float = 0.0       # link bytes of all its transfers
    events: int = 0          # waits and transfers that take time (each an event flow by flow)
    active: bool = True


@dataclass
class LinkStats:
    """Per-link statistics over the window (from `stats_from` on)."""

    bytes: np.ndarray           # bytes moved; mean utilisation = bytes / (capacity x window)
    saturated: np.ndarray       # time at capacity
    peak: np.ndarray            # highest utilisation seen
    tier_saturated: np.ndarray  # per tier: time during which any of its links was at capacity
    # times the rates changed, and per-tier mean utilisation from then (flat, n_tiers per
    # time), as compact arrays: one entry per re-solve adds up over long runs
    series_t: array = field(default_factory=lambda: array("d"))
    series_util: array = field(default_factory=lambda: array("d"))


class Network:
    """Owns every active flow, their rates, and the link statistics."""

    def __init__(self, env: simpy.Environment, capacity: np.ndarray, tier: np.ndarray,
                 record_series: bool = True, stats_from: float = 0.0,
                 nonbinding: np.ndarray | None = None, series_bin: float = 1e-3):
        self.env = env
        self.stats_from = stats_from  # statistics start here (the end of warm-up)
        self.capacity = np.asarray(capacity, dtype=float)
        self.tier = np.asarray(tier)
        n = len(self.capacity)
        self.n_tiers = int(self.tier.max()) + 1 if n else 0
        self.tier_links = np.bincount(self.tier, minlength=self.n_tiers) if n else np.zeros(0)
        self._tier_links1 = np.maximum(self.tier_links, 1)
        self._no_tiers = np.zeros(self.n_tiers, dtype=bool)   # a train segment moving nothing
        self._no_util = np.zeros(self.n_tiers)
        self.stats = LinkStats(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(self.n_tiers))
        self.flows: list[Flow] = []
        self._last = 0.0
        self._timer_version = 0
        self._record_series = record_series
        # set by each solve, used until the next: links in use, their utilisation, and the
        # saturated links and tiers
        self._union = np.zeros(0, dtype=np.int64)
        self._util = np.zeros(0)
        self._sat = np.zeros(0, dtype=np.int64)
        self._sat_tiers = np.zeros(0, dtype=np.int64)
        self._peak_pending = False
        self.solves = 0
        self.bytes_injected = 0.0
        self.bytes_delivered = 0.0
        self.bytes_dropped = 0.0   # bytes of cancelled flows never moved
        self._epoch = 0            # bumped by every capacity change
        # trains (see start_train): links they hold, pool flows per link, and the logs that
        # let statistics of out-of-order train segments merge with the pool's at the end
        self._reserved = np.full(n, -1, dtype=np.int64)
        # links that can never bind (a non-blocking leaf: its feeders saturate first) do not
        # make trains and flows conflict; their statistics still add up (peaks of trains
        # on them are their own, not the sum)
        self._binding = np.ones(n, dtype=np.int64) if nonbinding is None else \
            (~np.asarray(nonbinding, dtype=bool)).astype(np.int64)
        self._pool_count = np.zeros(n, dtype=np.int64)
        self._slot = np.full(n, -1, dtype=np.int64)   # scratch for _max_min
        self.trains: dict[int, Train] = {}
        self._finished: list[Train] = []   # ended, statistics not logged yet
        self._next_train = 0
        self.trains_split = 0
        # the events trains resolved without the event loop: each wait or transfer that
        # takes time (flow by flow, each would be at least one SimPy event)
        self.train_events = 0
        # per-tier utilisation series as integrals over bins of `series_bin` seconds
        # (bounded memory whatever the number of flows), filled by trains and the pool
        self._bin = float(series_bin)
        self._bins = np.zeros((1024, self.n_tiers))
        self._level = np.zeros(self.n_tiers)          # the pool's current per-tier level
        self._level_list, self._level_on = self._level.tolist(), False   # the same, floats
        self._level_t = 0.0
        # tier saturation: intervals, compacted into a final total once nothing can
        # overlap them any more
        self._sat_iv: list[np.ndarray] = []         # [k, 3]: tier, start, end
        self._sat_rows = 0                          # intervals in _sat_iv
        self._pool_sat_iv: list[list[float]] = []   # the pool's, contiguous ones merged
        self._sat_final = np.zeros(self.n_tiers)

    # ------------------------------------------------------------------ public

    def prepare(self, links: np.ndarray, load: np.ndarray) -> Prepared | None:
        """Normalise a transfer's loads (links must be unique); None if it moves nothing."""
        ints, per_link, per_tier, n, n_sat, n_bind, size, total, bps, slowest = _prepare(
            np.asarray(links, dtype=np.int64), np.asarray(load, dtype=float),
            self.capacity, self.tier, self._binding, self.tier_links)
        if not n:
            return None
        T = self.n_tiers
        return Prepared(ints[:n], per_link[:n], size, total, bps, per_link[n:],
                        ints[n:n + n_sat], ints[n + n_sat + n_bind:], per_tier[T:2 * T],
                        per_tier[2 * T:] > 0, slowest, ints[n + n_sat:n + n_sat + n_bind],
                        self._epoch)

    def mapped(self, p: Prepared, link_map: np.ndarray) -> Prepared:
        """The same transfer on other links: link l becomes link_map[l], each with the
        capacity, tier and binding of l (collectives.link_map checks that), so every
        figure but the link ids is p's own."""
        return Prepared(link_map[p.links], p.load, p.size, p.total, p.alone_bps, p.alone_util,
                        link_map[p.alone_sat], p.alone_sat_tiers, p.alone_tier_util,
                        p.alone_sat_mask, p.alone_dur, link_map[p.bind], p.epoch)

    def start(self, prep: Prepared | None, label: str = "", owner: int = -1,
              tag: object = None) -> simpy.Event:
        """Start a prepared flow now; the event fires when its last byte arrives."""
        done = self.env.event()
        if prep is None:
            done.succeed()
            return done
        if prep.epoch != self._epoch:  # prepared before a capacity change
            prep = self._refresh(prep)
        if self.trains:
            self._split_trains(prep.links)
        self.bytes_injected += prep.total
        self._advance()
        self._add(Flow(prep, label, done, 1.0, 0.0, 0.0, owner, tag))
        self._solve()
        return done

    def _add(self, f: Flow) -> None:
        self.flows.append(f)
        self._pool_count[f.prep.links] += self._binding[f.prep.links]

    def transfer(self, links: np.ndarray, load: np.ndarray, label: str = "") -> simpy.Event:
        """prepare() and start() in one call."""
        return self.start(self.prepare(links, load), label)

    def utilisation(self) -> np.ndarray:
        """Current utilisation of every link (0..1)."""
        util = np.zeros_like(self.capacity)
        util[self._union] = self._util
        return util

    def set_capacity(self, capacity: np.ndarray,
                     reroute: Callable[[Flow], Prepared | None] | None = None) -> list[Flow]:
        """New link capacities from now on. Flows move to now at their old rates; a flow
        that crosses a link left with no capacity gets a new route from `reroute` for its
        remaining bytes (None, or no callback, withdraws it: its done event never fires and
        the returned list names it); the rest keep their routes. Then everything re-solves."""
        if self.trains:
            self._split_trains(None)
        self._advance()
        self.capacity = np.array(capacity, dtype=float)
        self._epoch += 1
        kept, withdrawn = [], []
        for f in self.flows:
            if (self.capacity[f.prep.links] <= 0).any():
                new = reroute(f) if reroute is not None else None
                if new is None:
                    self._withdraw(f)
                    withdrawn.append(f)
                    continue
                self._swap(f, new)
            else:
                f.prep = self._refresh(f.prep)
            kept.append(f)
        self.flows = kept
        self._recount()
        self._solve()
        return withdrawn

    def cancel(self, owner: int) -> int:
        """Withdraw every flow of `owner` now (their done events never fire); returns how
        many. Bytes already moved count as delivered, the rest as dropped."""
        if self.trains:
            self._split_trains(None)
        self._advance()
        gone = [f for f in self.flows if f.owner == owner]
        if gone:
            for f in gone:
                self._withdraw(f)
            self.flows = [f for f in self.flows if f.owner != owner]
            self._recount()
            self._solve()
        return len(gone)

    def _recount(self) -> None:
        self._pool_count[:] = 0
        for f in self.flows:
            self._pool_count[f.prep.links] += self._binding[f.prep.links]

    def bytes_in_flight(self) -> float:
        """Link bytes of the flows not yet finished, part moved or not (conservation:
        injected = delivered + dropped + in flight). A train's bytes count as injected and
        delivered together, as they move (when it ends or splits)."""
        return sum(f.prep.total for f in self.flows)

    def finish_stats(self) -> None:
        """Bring the statistics up to now and count the bytes of flows still moving; merge
        the trains' utilisation steps and saturation intervals with the pool's."""
        self._advance()
        for f in self.flows:
            self._count_bytes(f)
            f.counted = 0.0
        now = self.env.now
        self._log_finished()
        for t in list(self.trains.values()):   # bytes moved so far count as delivered
            self._settle(t, now, final=False)
        self._merge_logs()

    # ------------------------------------------------------------------ trains

    @property
    def trains_run(self) -> int:
        return self._next_train

    def start_train(self, waits: np.ndarray, shape: TrainShape, preps: list, labels: list,
                    owner: int = -1, tags: list | None = None) -> simpy.Event | None:
        """Run a sequence of segments as one event: segment k is a wait of waits[k] seconds
        followed, when shape.pidx[k] >= 0, by transfer preps[shape.pidx[k]] at its solo rate
        (a step reuses a few transfers many times). Only when no flow or train holds any of
        its links (else None: run it flow by flow). The event fires with None when all is
        done, or, if another flow claims one of its links first, with (k, remaining wait of
        k, pool flow event or None): segments before k are done and the caller goes on
        from there (the transfer of k, if started, continues as an ordinary flow whose
        event is given). `labels[k]` names segment k's transfer; `tags[u]` (as start's
        `tag`) goes with transfer u if it joins the shared flows."""
        binds, moves, xdur = [], [], []
        for p in preps:
            if p is None:
                moves.append(False)
                xdur.append(0.0)
            elif p.epoch != self._epoch:   # normalised for other capacities
                return None
            else:
                binds.append(p.bind)
                moves.append(True)
                xdur.append(p.alone_dur)
        if not binds:
            return None
        xdur.append(0.0)                   # index -1: a segment that moves nothing
        links = np.concatenate(binds) if len(binds) > 1 else binds[0]
        m = shape.moving(tuple(moves))
        xdur = np.array(xdur)
        now = float(self.env.now)   # int 0 at the start: one compiled signature
        free, ends, events = _reserve_train(links, self._reserved, self._pool_count,
                                            self._next_train, np.asarray(waits, dtype=float),
                                            m.pidx, xdur, now)
        if not free:        # another flow or train holds one of its links
            return None
        moved = 0.0
        for c, p in zip(m.uses, preps):
            if c:
                moved += c * p.total
        t = Train(self._next_train, links, now, ends, preps, m, labels, owner,
                  self.env.event(), tags, moved, events)
        self._next_train += 1
        self.trains[t.id] = t
        ev = self.env.timeout(float(ends[-1] - now))
        ev.callbacks.append(lambda _e, t=t: self._train_done(t))
        return t.done

    def _train_done(self, t: Train) -> None:
        """A train ran to its end: its links are free now and its bytes delivered; its
        link statistics wait for the next batch (_log_finished)."""
        if not t.active:
            return
        self._release(t)
        self.bytes_injected += t.moved
        self.bytes_delivered += t.moved
        self.train_events += t.events
        self._finished.append(t)
        if len(self._finished) >= SETTLE_BATCH:
            self._log_finished()
        t.done.succeed(None)

    def _release(self, t: Train) -> None:
        t.active = False
        del self.trains[t.id]
        self._reserved[t.links] = -1

    def _log_finished(self) -> None:
        """Log the statistics of every finished train not logged yet, in one pass (trains
        of one shape gathered together)."""
        done, self._finished = self._finished, []
        if not done:
            return
        groups: dict = {}
        for t in done:
            groups.setdefault(id(t.shape), []).append(t)
        a, e, u, preps = [], [], [], []
        for group in groups.values():
            m = group[0].shape
            ends = np.array([t.seg_end for t in group])
            a.append(ends[:, m.xs - 1].ravel())
            e.append(ends[:, m.xs].ravel())
            n_p = len(group[0].preps)
            u.append((m.u[None, :] + (len(preps) + n_p * np.arange(len(group)))[:, None])
                     .ravel())
            for t in group:
                preps += t.preps
        a, e = np.concatenate(a), np.concatenate(e)
        self._log_transfers(a, e, np.maximum(e - a, 1e-300), preps, np.concatenate(u))

    def _split_trains(self, links: np.ndarray | None) -> None:
        """Turn the trains holding any of `links` (all if None) into what they are doing
        now: their finished segments are accounted, a transfer in progress joins the pool."""
        if links is None:
            ids = list(self.trains)
        else:
            held = self._reserved[links]
            ids = [int(i) for i in np.unique(held[held >= 0])]
        if not ids:
            return
        now = self.env.now
        self._advance()
        joined = False
        for i in ids:
            t = self.trains[i]
            self.trains_split += 1
            seg, left = self._settle(t, now, final=False)
            k = seg // 2
            if seg % 2 == 0:    # waiting before transfer k
                t.done.succeed((k, float(t.seg_end[seg] - now), None))
            else:               # inside transfer k: the rest moves as a pool flow
                u = int(t.shape.pidx[k])
                p = t.preps[u]
                done = self.env.event()
                self.bytes_injected += left * p.total
                tag = t.tags[u] if t.tags is not None else None
                self._add(Flow(p, t.labels[k], done, left, 0.0, 0.0, t.owner, tag, left))
                joined = True
                t.done.succeed((k, 0.0, done))
        if joined:
            self._solve()

    def _settle(self, t: Train, now: float, final: bool) -> tuple[int, float]:
        """Account t's transfers up to `now`, release its links and forget it. Returns the
        segment in progress (2k: wait before transfer k, 2k+1: transfer k) and, for a
        transfer, the fraction of it left. Vectorised over the train's transfers."""
        self._release(t)
        ends = t.seg_end
        n = len(ends)
        seg = n if final else min(int(np.searchsorted(ends, now, side="right")), n - 1)
        if seg % 2 and now <= ends[seg - 1]:   # a transfer due to start now has not
            seg -= 1                           # started: the wait before it ends now
        self.train_events += int(np.count_nonzero(np.diff(ends[:seg], prepend=t.t0)))
        m = t.shape
        k, xs = m.k, m.xs     # segments whose transfer moves bytes, and its segment index
        a, e = ends[xs - 1], ends[xs]
        if not final:                                # only those started by now
            started = (xs < seg) | ((xs == seg) & (now > a))
            k, xs, a, e = k[started], xs[started], a[started], e[started]
        if not len(k):
            return seg, 0.0
        b = np.minimum(e, now)
        dur = np.maximum(e - a, 1e-300)
        frac = (b - a) / dur                         # of each transfer, done by now
        u = t.shape.pidx[k]                          # which of the train's transfers
        moved = float(frac @ np.array([t.preps[v].total for v in u]))
        self.bytes_injected += moved
        self.bytes_delivered += moved
        self._log_transfers(a, b, dur, t.preps, u)
        return seg, float(1.0 - frac[-1]) if not final and xs[-1] == seg else 0.0

    def _log_transfers(self, a: np.ndarray, b: np.ndarray, dur: np.ndarray, preps: list,
                       u: np.ndarray) -> None:
        """Link statistics of transfers that ran alone at full rate: interval i ran from
        a[i] to b[i] (of its full `dur[i]`) as transfer preps[u[i]]."""
        aw = np.maximum(a, self.stats_from)
        dw = np.maximum(b - aw, 0.0)
        if dw.any():
            st, n_p = self.stats, len(preps)
            in_window = np.bincount(u, weights=dw / dur, minlength=n_p)
            secs = np.bincount(u, weights=dw, minlength=n_p)
            used = np.flatnonzero(secs > 0).tolist()
            links = np.concatenate([preps[v].links for v in used])
            scale = np.array([preps[v].size for v in used]) * in_window[used]   # bytes
            load = np.concatenate([preps[v].load for v in used]) * \
                np.repeat(scale, [len(preps[v].links) for v in used])
            st.bytes += np.bincount(links, weights=load, minlength=len(st.bytes))
            sat = [preps[v].alone_sat for v in used]
            st.saturated += np.bincount(
                np.concatenate(sat), minlength=len(st.saturated),
                weights=np.repeat(secs[used], [len(x) for x in sat]))
            np.maximum.at(st.peak, links, np.concatenate([preps[v].alone_util for v in used]))
            masks = np.array([p.alone_sat_mask if p is not None else self._no_tiers
                              for p in preps])
            iv, tier = np.nonzero(masks[u] & (dw > 0)[:, None])
            if len(iv):
                self._sat_iv.append(np.column_stack([tier.astype(float), aw[iv], b[iv]]))
                self._sat_rows += len(iv)
        if self._record_series:
            rows = np.array([p.alone_tier_util if p is not None else self._no_util
                             for p in preps])
            self._bin_add(a, b, rows[u])
        if self._sat_rows > SAT_LOG_ROWS:
            self._compact_sat()

    def _bin_add(self, a: np.ndarray, b: np.ndarray, rows: np.ndarray) -> None:
        """Add per-tier levels over intervals [a, b) to the binned integrals: `rows` holds
        one level per tier, for all intervals ([n_tiers]) or for each ([len(a), n_tiers])."""
        W = self._bin
        ia, ib = (a / W).astype(np.int64), (b / W).astype(np.int64)
        if not len(ia):
            return
        lo, hi = int(ia.min()), int(ib.max())
        if hi + 2 > len(self._bins):
            grow = np.zeros((max(hi + 2, 2 * len(self._bins)), self.n_tiers))
            grow[:len(self._bins)] = self._bins
            self._bins = grow
        span = hi - lo + 1
        rows = np.broadcast_to(rows, (len(ia), self.n_tiers))
        first = np.where(ia == ib, b, (ia + 1) * W) - a      # seconds in the first bin
        two = np.flatnonzero(ia != ib)
        last = b[two] - ib[two] * W                          # and in the last, if another
        out = self._bins[lo:hi + 1]
        for tier in range(self.n_tiers):
            out[:, tier] += np.bincount(ia - lo, weights=first * rows[:, tier], minlength=span)
            if len(two):
                out[:, tier] += np.bincount(ib[two] - lo, weights=last * rows[two, tier],
                                            minlength=span)
        for c in np.flatnonzero(ib - ia > 1):                # whole bins in between
            out[ia[c] + 1 - lo:ib[c] - lo] += W * rows[c]

    def _compact_sat(self) -> None:
        """Fold saturation intervals that end before anything still to be logged can
        start (the earliest running train's start, or now) into the final totals."""
        self._log_finished()   # nothing earlier may be logged after compaction
        # later logs start no earlier than now, a running train's start, or (while flows
        # share links) the last time the pool logged its saturation
        safe = min([self._last if self.flows else self.env.now]
                   + [t.t0 for t in self.trains.values()])
        parts = self._sat_iv + ([np.array(self._pool_sat_iv)] if self._pool_sat_iv else [])
        if not parts:
            return
        iv = np.concatenate(parts)
        keep = []
        for tier in range(self.n_tiers):
            sel = iv[iv[:, 0] == tier]
            if not len(sel):
                continue
            bs, be = _merge_intervals(sel[:, 1], sel[:, 2])
            done = be <= safe
            self._sat_final[tier] += float((be[done] - bs[done]).sum())
            rest = ~done
            keep.append(np.column_stack([np.full(int(rest.sum()), float(tier)), bs[rest],
                                         be[rest]]))
        self._sat_iv = keep
        self._sat_rows = sum(len(k) for k in keep)
        self._pool_sat_iv = []

    def _log_pool_sat(self, a: float, b: float) -> None:
        log = self._pool_sat_iv
        for tier in self._sat_tiers:
            tier = float(tier)
            for iv in reversed(log[-self.n_tiers:]):   # extend a contiguous interval
                if iv[0] == tier and iv[2] == a:
                    iv[2] = b
                    break
            else:
                log.append([tier, a, b])
                self._sat_rows += 1
        if self._sat_rows > SAT_LOG_ROWS:
            self._compact_sat()

    def _merge_logs(self) -> None:
        """Tier saturation as the union of pool and train intervals; the utilisation series
        as bin means (the last bin over the part of it the run covered)."""
        st = self.stats
        now = self.env.now
        self._compact_sat()   # leaves the intervals that may still overlap new ones
        st.tier_saturated[:] = self._sat_final
        for part in self._sat_iv:
            for tier in range(self.n_tiers):
                sel = part[part[:, 0] == tier]
                if len(sel):
                    st.tier_saturated[tier] += _union_length(sel[:, 1], sel[:, 2])
        if self._record_series:
            self._flush_level()
            W = self._bin
            n = int(now / W) + 1 if now > 0 else 0
            if n and now <= (n - 1) * W:      # the run ended on a bin boundary
                n -= 1
            width = np.full(n, W)
            if n:
                width[-1] = now - (n - 1) * W
            bins = self._bins[:n]
            if len(bins) < n:   # no flow reached the last bins
                bins = np.vstack([bins, np.zeros((n - len(bins), self.n_tiers))])
            util = bins / width[:, None]
            st.series_t = array("d", (np.arange(n) * W).tolist())
            st.series_util = array("d", util.ravel().tolist())

    # ------------------------------------------------------------------ mechanics

    def current(self, p: Prepared) -> Prepared:
        """p, normalised again if capacities changed since it was prepared."""
        return p if p.epoch == self._epoch else self._refresh(p)

    def _refresh(self, p: Prepared) -> Prepared:
        """The same transfer normalised for the current capacities."""
        return self.prepare(p.links, p.load * p.size)

    def _swap(self, f: Flow, new: Prepared) -> None:
        """Give an in-flight flow a new route for its remaining fraction. Bytes so far count
        on the old links; injected and delivered totals become old x done + new x left."""
        self._count_bytes(f)
        f.counted = 0.0
        old, left = f.prep, max(f.remaining, 0.0)
        new = new if new.epoch == self._epoch else self._refresh(new)
        self.bytes_injected += left * (new.total - old.total)
        # the flow joined with `initial` left (a split train's transfer) and will count
        # initial x total as delivered when it ends
        self.bytes_delivered += (f.initial - left) * (old.total - new.total)
        f.prep = new

    def _withdraw(self, f: Flow) -> None:
        self._count_bytes(f)
        f.counted = 0.0
        left = min(max(f.remaining, 0.0), f.initial)
        self.bytes_delivered += (f.initial - left) * f.prep.total
        self.bytes_dropped += left * f.prep.total

    def _count_bytes(self, f: Flow) -> None:
        if f.counted > 0:
            p = f.prep
            self.stats.bytes[p.links] += p.load * (p.size * f.counted)

    def _advance(self) -> None:
        """Move every flow forward to now; retire finished ones."""
        now = self.env.now
        dt = now - self._last
        self._last = now
        if not self.flows:
            return
        if dt > 0:
            counted = min(dt, max(0.0, now - self.stats_from))
            for f in self.flows:
                f.remaining -= f.rate * dt
                f.counted += f.rate * counted
            if counted > 0:
                st = self.stats
                if len(self._sat):
                    st.saturated[self._sat] += counted
                    self._log_pool_sat(now - counted, now)
                if self._peak_pending:
                    u = self._union
                    st.peak[u] = np.maximum(st.peak[u], self._util)
                    self._peak_pending = False
        alive = []
        tick = _tick(now)
        for f in self.flows:
            if f.remaining <= 1e-9 or f.remaining <= f.rate * tick:
                self._pool_count[f.prep.links] -= self._binding[f.prep.links]
                f.counted += max(f.remaining, 0.0) if now > self.stats_from else 0.0
                self._count_bytes(f)
                self.bytes_delivered += f.prep.total * f.initial
                f.done.succeed()
            else:
                alive.append(f)
        if len(alive) != len(self.flows):
            self.flows = alive
            self._solve()

    def _solve(self) -> None:
        """Rates by progressive filling; then the timer for the next completion."""
        flows = self.flows
        self._timer_version += 1
        self._peak_pending = bool(flows)
        if not flows:
            self._union = self._sat = self._sat_tiers = np.zeros(0, dtype=np.int64)
            self._util = np.zeros(0)
            self._record(self._no_util)
            return
        self.solves += 1
        if len(flows) == 1:  # alone: everything was precomputed in prepare()
            f = flows[0]
            p = f.prep
            f.rate = p.alone_bps / p.size
            self._union, self._util = p.links, p.alone_util
            self._sat, self._sat_tiers = p.alone_sat, p.alone_sat_tiers
            self._record(p.alone_tier_util)
        else:
            preps = [f.prep for f in flows]
            links = np.concatenate([p.links for p in preps])
            offsets = [0]
            for p in preps:
                offsets.append(offsets[-1] + len(p.links))
            bps, util, sat, sat_tiers, level = _max_min(
                links, np.concatenate([p.load for p in preps]), np.array(offsets),
                self.capacity, self.tier, self.tier_links, self._slot)
            if not len(bps):   # no shared link: each flow runs as if alone, exactly
                for f in flows:
                    f.rate = f.prep.alone_bps / f.prep.size
                self._union = links
                self._util = np.concatenate([p.alone_util for p in preps])
                self._sat = np.concatenate([p.alone_sat for p in preps])
                self._sat_tiers = self._tiers_of(self._sat)
                self._record(sum(p.alone_tier_util for p in preps))
            else:
                for f, b in zip(flows, bps.tolist()):
                    f.rate = b / f.prep.size
                self._union, self._util, self._sat, self._sat_tiers = links, util, sat, sat_tiers
                self._record(level)
        soonest = min(f.remaining / f.rate for f in flows)
        version = self._timer_version
        ev = self.env.timeout(max(soonest, _tick(self.env.now)))
        ev.callbacks.append(lambda _e: self._on_timer(version))

    def _tiers_of(self, links: np.ndarray) -> np.ndarray:
        """The tiers `links` belong to, ascending."""
        return np.flatnonzero(np.bincount(self.tier[links], minlength=self.n_tiers))

    def _record(self, level: np.ndarray) -> None:
        """The pool's per-tier mean utilisation is `level` from now: bin the one it had."""
        if not self._record_series:
            return
        self._flush_level()
        self._level = level
        self._level_list = level.tolist()      # for one- or two-bin updates (below)
        self._level_on = any(self._level_list)

    def _flush_level(self) -> None:
        now = self.env.now
        if now > self._level_t and self._level_on:
            a, W = self._level_t, self._bin
            ia, ib = int(a / W), int(now / W)
            if ib - ia <= 1 and ib + 2 <= len(self._bins):   # one or two bins: no arrays
                bins = self._bins
                for t, v in enumerate(self._level_list):
                    if ia == ib:
                        bins[ia, t] += (now - a) * v
                    else:
                        bins[ia, t] += (ib * W - a) * v
                        bins[ib, t] += (now - ib * W) * v
            else:
                self._bin_add(np.array([a]), np.array([now]), self._level)
        self._level_t = now

    def _on_timer(self, version: int) -> None:
        if version == self._timer_version:  # else a newer solve superseded this timer
            self._advance()
