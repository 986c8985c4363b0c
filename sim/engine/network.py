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

Blind spots (also in docs/architecture.md): no packet queueing, incast, congestion control
or ECMP collisions; inside one aggregated flow every pair progresses in proportion, as an
ideally paced collective kernel would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import simpy

EPS = 1e-12


def _tick(now: float) -> float:
    """The smallest step the clock can take at `now` (a few float ulps): a flow with less
    time than this left is finished, or it would never advance."""
    return 4.0 * float(np.spacing(max(abs(now), 1.0)))


@dataclass
class Flow:
    links: np.ndarray          # link ids (unique)
    load: np.ndarray           # bytes on each link / size (the most loaded link has 1)
    size: float                # bytes on the flow's most loaded link
    label: str
    done: simpy.Event
    tier_weight: np.ndarray    # per tier: sum of load x size / capacity (for the series)
    remaining: float = 1.0     # fraction of the flow still to move
    rate: float = 0.0          # fraction per second
    start: float = 0.0


@dataclass
class LinkStats:
    """Time integrals per link, accumulated as the fluid advances."""

    bytes: np.ndarray
    busy_integral: np.ndarray   # integral of utilisation dt
    saturated: np.ndarray       # time at capacity
    peak: np.ndarray            # highest utilisation seen
    tier_saturated: np.ndarray  # per tier: time during which any of its links was at capacity
    series_t: list = field(default_factory=list)      # times the rates changed
    series_util: list = field(default_factory=list)   # per-tier mean utilisation from then


class Network:
    """Owns every active flow, their rates, and the link statistics."""

    def __init__(self, env: simpy.Environment, capacity: np.ndarray, tier: np.ndarray,
                 record_series: bool = True, stats_from: float = 0.0):
        self.env = env
        self.stats_from = stats_from  # link integrals start here (the end of warm-up)
        self.capacity = np.asarray(capacity, dtype=float)
        self.tier = np.asarray(tier)
        n = len(self.capacity)
        self.n_tiers = int(self.tier.max()) + 1 if n else 0
        self.tier_links = np.bincount(self.tier, minlength=self.n_tiers) if n else np.zeros(0)
        self.stats = LinkStats(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n),
                               np.zeros(self.n_tiers))
        self.flows: list[Flow] = []
        self._last = 0.0
        self._timer_version = 0
        self._record_series = record_series
        # cached between solves: the links in use and the bytes/s on each
        self._union = np.zeros(0, dtype=np.int64)
        self._used = np.zeros(0)
        self.solves = 0
        self.bytes_injected = 0.0
        self.bytes_delivered = 0.0

    # ------------------------------------------------------------------ public

    def transfer(self, links: np.ndarray, load: np.ndarray, label: str = "") -> simpy.Event:
        """Start a flow now (links must be unique); the event fires when its last byte
        arrives."""
        done = self.env.event()
        load = np.asarray(load, dtype=float)
        keep = load > 0
        links, load = np.asarray(links, dtype=np.int64)[keep], load[keep]
        if len(links) == 0:
            done.succeed()
            return done
        size = float(load.max())
        self.bytes_injected += float(load.sum())
        weight = np.bincount(self.tier[links], weights=load / self.capacity[links],
                             minlength=self.n_tiers)
        self._advance()
        self.flows.append(Flow(links, load / size, size, label, done, weight,
                               start=self.env.now))
        self._solve()
        return done

    def utilisation(self) -> np.ndarray:
        """Current utilisation of every link (0..1)."""
        util = np.zeros_like(self.capacity)
        util[self._union] = self._used / self.capacity[self._union]
        return util

    # ------------------------------------------------------------------ mechanics

    def _advance(self) -> None:
        """Move every flow forward to now; retire finished ones."""
        now = self.env.now
        dt = now - self._last
        self._last = now
        if not self.flows:
            return
        counted = min(dt, max(0.0, now - self.stats_from))
        if counted > 0:
            self._integrate(counted)
        if dt > 0:
            for f in self.flows:
                f.remaining -= f.rate * dt
        alive = []
        tick = _tick(now)
        for f in self.flows:
            if f.remaining <= 1e-9 or f.remaining <= f.rate * tick:
                self.bytes_delivered += float(f.load.sum() * f.size)
                f.done.succeed()
            else:
                alive.append(f)
        if len(alive) != len(self.flows):
            self.flows = alive
            self._solve()

    def _integrate(self, dt: float) -> None:
        """Add `dt` seconds at the current rates to the link statistics."""
        st, u = self.stats, self._union
        util = self._used / self.capacity[u]
        st.bytes[u] += self._used * dt
        st.busy_integral[u] += util * dt
        full = util >= 1 - 1e-9
        st.saturated[u] += dt * full
        st.peak[u] = np.maximum(st.peak[u], util)
        if full.any():
            st.tier_saturated[np.unique(self.tier[u[full]])] += dt

    def _solve(self) -> None:
        """Progressive filling over the links the active flows touch; then set the timer."""
        flows = self.flows
        self._timer_version += 1
        if not flows:
            self._union = np.zeros(0, dtype=np.int64)
            self._used = np.zeros(0)
            self._record()
            return
        self.solves += 1
        if len(flows) == 1:  # alone: limited by its most loaded link relative to capacity
            f = flows[0]
            bps = float(np.min(self.capacity[f.links] / f.load))
            f.rate = bps / f.size
            self._union, self._used = f.links, f.load * bps
        else:
            self._solve_shared(flows)
        self._record()
        soonest = min(f.remaining / f.rate for f in flows)
        version = self._timer_version
        ev = self.env.timeout(max(soonest, _tick(self.env.now)))
        ev.callbacks.append(lambda _e: self._on_timer(version))

    def _solve_shared(self, flows: list[Flow]) -> None:
        links = np.unique(np.concatenate([f.links for f in flows]))
        n_f, n_l = len(flows), len(links)
        # a[i, j]: bytes flow i puts on link j per byte/s on its own most loaded link
        a = np.zeros((n_f, n_l))
        for i, f in enumerate(flows):
            a[i, np.searchsorted(links, f.links)] = f.load
        cap = self.capacity[links]
        residual = cap.copy()
        bps = np.zeros(n_f)
        active = np.ones(n_f, dtype=bool)
        while active.any():
            demand = a[active].sum(axis=0)
            use = demand > EPS
            inc = np.min(residual[use] / demand[use])
            bps[active] += inc
            residual -= inc * demand
            full = use & (residual <= 1e-9 * cap)
            newly = active & (a[:, full] > EPS).any(axis=1)
            if not newly.any():  # numerical guard: freeze the tightest link's flows
                j = np.argmin(np.where(use, residual / np.maximum(demand, EPS), np.inf))
                newly = active & (a[:, j] > EPS)
            active &= ~newly
        for f, b in zip(flows, bps):
            f.rate = b / f.size
        self._union, self._used = links, bps @ a

    def _record(self) -> None:
        if not self._record_series:
            return
        util = np.zeros(self.n_tiers)
        for f in self.flows:
            util += f.tier_weight * f.rate
        st = self.stats
        st.series_t.append(self.env.now)
        st.series_util.append(util / np.maximum(self.tier_links, 1))

    def _on_timer(self, version: int) -> None:
        if version == self._timer_version:  # else a newer solve superseded this timer
            self._advance()
