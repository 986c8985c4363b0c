"""Faults at run time (docs/faults.md): what each fault touches, routes around down links,
and the process that applies the scenario's `faults:` at their instants.

- Link faults scale the capacity of their links (`link_degraded`: x factor; `link_down`: 0)
  through `Network.set_capacity`, which re-solves the flows in flight at that instant.
- `link_down` also changes routes. A GPU whose NIC is down sends and receives its traffic
  to other scale-up domains through a scale-up peer's NIC (NCCL's PXN idea): source ->
  peer over scale-up, then the peer's NIC. A GPU whose scale-up port is down reaches its
  domain peers over scale-out (NIC, leaf, spine when the leaves differ). Traffic with no
  path (a GPU with both down, or no peer with a working NIC) is `Unroutable`: the engine
  stops the replica that sent it (a collective cannot complete without that GPU).
  Transfers re-route when they start; flows in flight re-route at the instant for their
  remaining bytes.
- `straggler` multiplies a GPU's op times (the engine reads `slowdown`).
- `gpu_lost` stops the owning replica (and restarts it under `restart_replica`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..cluster.topology import SCALE_OUT, SCALE_UP, TIER_NAMES, Cluster
from ..spec.faults import GpuLost, LinkDegraded, LinkDown, Straggler, describe_target
from . import collectives as coll


class Unroutable(Exception):
    """Traffic that has no path while some links are down."""

    def __init__(self, gpu: int, why: str):
        super().__init__(f"GPU {gpu} {why}")
        self.gpu = gpu
        self.why = why


# --------------------------------------------------------------------------- targets


def target_gpus(cluster: Cluster, gpu: int | None, rack: int | None) -> np.ndarray:
    if gpu is not None:
        return np.array([gpu], dtype=np.int64)
    if rack is not None:
        return np.flatnonzero(cluster.gpu_rack == rack)
    return np.arange(cluster.n_gpus)


def target_links(cluster: Cluster, tier: str, gpu: int | None, rack: int | None
                 ) -> np.ndarray:
    """Link ids a link fault acts on: a GPU's port of the tier (both directions); a rack's
    ports of the tier, plus in a fat tree the rack's leaf uplinks (the leaf is the rack's);
    or every link of the tier."""
    t = TIER_NAMES.index(tier)
    if gpu is None and rack is None:
        return np.flatnonzero(cluster.tier == t)
    g = target_gpus(cluster, gpu, rack)
    if t == SCALE_UP:
        links = [cluster.su_up[g], cluster.su_down[g]]
    else:
        links = [cluster.nic_up[g], cluster.nic_down[g]]
        if rack is not None and cluster.hardware.scale_out.topology == "fat_tree":
            leaf = np.unique(cluster.gpu_leaf[g])
            links += [cluster.leaf_up[leaf], cluster.leaf_down[leaf]]
    out = np.unique(np.concatenate(links))
    return out[out >= 0]  # a single-leaf fabric has no spine links


# --------------------------------------------------------------------------- routing


class Router:
    """Link loads of a transfer given which GPU ports are down (`nic_down`, `su_down`)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        n = cluster.n_gpus
        self.nic_down = np.zeros(n, dtype=bool)
        self.su_down = np.zeros(n, dtype=bool)
        self.epoch = 0              # bumped when the routes change
        self.active = False         # any port down
        self.rerouted_transfers = 0
        self.rerouted_bytes = 0.0
        self._update()

    def set_down(self, nic_down: np.ndarray, su_down: np.ndarray) -> bool:
        """New down ports; True if the routes changed."""
        if np.array_equal(nic_down, self.nic_down) and np.array_equal(su_down, self.su_down):
            return False
        self.nic_down, self.su_down = nic_down.copy(), su_down.copy()
        self.epoch += 1
        self._update()
        return True

    def _update(self) -> None:
        cl = self.cluster
        self.active = bool(self.nic_down.any() or self.su_down.any())
        self.isolated = self.nic_down & self.su_down
        # a GPU without scale-up is a domain of its own: its traffic leaves over scale-out
        domain = cl.gpu_domain.copy()
        n_dom = int(cl.gpu_domain.max()) + 1
        lone = np.flatnonzero(self.su_down)
        domain[lone] = n_dom + lone
        self.view = replace(cl, gpu_domain=domain) if len(lone) else cl
        # peer for a GPU whose NIC is down: the next GPU of its domain (cyclically) whose
        # NIC and scale-up port both work; -1 when there is none
        self.peer = np.full(cl.n_gpus, -1, dtype=np.int64)
        ok = ~self.nic_down & ~self.su_down
        per = cl.hardware.domain_gpus
        for g in np.flatnonzero(self.nic_down & ~self.su_down):
            base = (g // per) * per
            for k in range(1, per):
                h = base + (g - base + k) % per
                if ok[h]:
                    self.peer[g] = h
                    break

    def route(self, src: np.ndarray, matrix: np.ndarray, dst: np.ndarray | None = None
              ) -> coll.Transfer:
        """As collectives.pair_loads, around the down ports. Raises Unroutable."""
        if not self.active:
            return coll.pair_loads(self.cluster, src, matrix, dst)
        src = np.asarray(src)
        dst = src if dst is None else np.asarray(dst)
        m = np.array(matrix, dtype=float)
        m[src[:, None] == dst[None, :]] = 0.0
        sent = float(m.sum())
        peers = self.peer[np.concatenate([src, dst])]
        gpus = np.unique(np.concatenate([src, dst, peers[peers >= 0]]))
        a = np.zeros((len(gpus), len(gpus)))
        a[np.ix_(np.searchsorted(gpus, src), np.searchsorted(gpus, dst))] = m
        busy = (a.sum(axis=1) + a.sum(axis=0)) > 0
        lone = busy & self.isolated[gpus]
        if lone.any():
            raise Unroutable(int(gpus[np.argmax(lone)]), "has neither scale-up nor scale-out")
        dom = self.view.gpu_domain[gpus]
        cross = dom[:, None] != dom[None, :]
        real = self.cluster.gpu_domain[gpus]
        # bytes between domain peers that leave over scale-out because a port is down
        moved = float(a[(real[:, None] == real[None, :]) & cross].sum())
        detour_src = detour_dst = False
        for i in np.flatnonzero(self.nic_down[gpus]):       # senders without a NIC
            row = np.where(cross[i], a[i], 0.0)
            total = float(row.sum())
            if total > 0:
                p = self._peer_index(gpus, i)
                a[i] -= row
                a[i, p] += total       # over scale-up to the peer
                a[p] += row            # then out of the peer's NIC
                moved += total
                detour_src = True
        for j in np.flatnonzero(self.nic_down[gpus]):       # receivers without a NIC
            col = np.where(cross[:, j], a[:, j], 0.0)
            total = float(col.sum())
            if total > 0:
                p = self._peer_index(gpus, j)
                a[:, j] -= col
                a[:, p] += col         # into the peer's NIC
                a[p, j] += total       # then over scale-up
                moved += total
                detour_dst = True
        t = coll.pair_loads(self.view, gpus, a)
        if moved:
            self.rerouted_transfers += 1
            self.rerouted_bytes += moved
        hop = self.cluster.hardware.scale_up.latency
        return coll.Transfer(t.links, t.load, t.latency + hop * (detour_src + detour_dst), sent)

    def _peer_index(self, gpus: np.ndarray, i: int) -> int:
        p = self.peer[gpus[i]]
        if p < 0:
            raise Unroutable(int(gpus[i]), "has no NIC and no scale-up peer with a working one")
        return int(np.searchsorted(gpus, p))


# --------------------------------------------------------------------------- the log


@dataclass
class FaultRecord:
    """One fault of the scenario and what it did (faults.csv)."""

    index: int
    kind: str
    target: str
    start: float
    end: float | None
    links: int = 0                 # links whose capacity it changed
    gpus: int = 0                  # GPUs whose ports or ops it changed
    replica: int = -1              # the replica it stopped (gpu_lost)
    requests_failed: int = 0
    effect: list[str] = field(default_factory=list)


@dataclass
class StopEvent:
    time: float
    replica: int
    reason: str
    fault: int                     # index of the fault that caused it
    requests_failed: int = 0
    restart_at: float | None = None


@dataclass
class FaultLog:
    records: list[FaultRecord]
    stops: list[StopEvent] = field(default_factory=list)
    restarts: list[tuple[float, int]] = field(default_factory=list)
    failed_unplaced: int = 0       # arrivals with no live replica (counted, not stored)
    failed_unplaced_window: int = 0   # of which after warm-up
    rerouted_transfers: int = 0
    rerouted_bytes: float = 0.0
    flows_rerouted_in_flight: int = 0


# --------------------------------------------------------------------------- applying


class FaultInjector:
    """Applies the scenario's faults at their instants. `sim` is the engine's Simulation;
    the injector calls its `_stop_replica` and `_restart_replica` and sets its `slow`."""

    def __init__(self, sim, faults):
        self.sim = sim
        self.env = sim.env
        self.cluster = cl = sim.cluster
        self.faults = list(faults)
        self.router = Router(cl)
        self.nominal = cl.capacity.copy()
        self.owner = np.full(cl.n_gpus, -1, dtype=np.int64)   # GPU -> replica
        self.stage_of = np.full(cl.n_gpus, -1, dtype=np.int64)
        pl = sim.placement.gpus
        for r in range(pl.shape[0]):
            for s in range(pl.shape[1]):
                self.owner[pl[r, s]] = r
                self.stage_of[pl[r, s]] = s
        self.links: dict[int, np.ndarray] = {}
        self.ports: dict[int, np.ndarray] = {}
        records = []
        for i, f in enumerate(self.faults):
            rec = FaultRecord(i, f.kind, describe_target(f), f.start, f.end)
            if isinstance(f, (LinkDegraded, LinkDown)):
                self.links[i] = target_links(cl, f.tier, f.gpu, f.rack)
                self.ports[i] = target_gpus(cl, f.gpu, f.rack)
                rec.links = len(self.links[i])
                rec.gpus = len(self.ports[i])
            else:
                rec.gpus = 1
            records.append(rec)
        self.log = FaultLog(records)
        self.active: set[int] = set()

    def start(self) -> None:
        self.env.process(self._run())

    def _run(self):
        times = sorted({f.start for f in self.faults} |
                       {f.end for f in self.faults
                        if f.end is not None and not isinstance(f, GpuLost)})
        for t in times:
            if t > self.env.now:
                yield self.env.timeout(t - self.env.now)
            ending = [i for i in self.active if self.faults[i].end == t]
            starting = [i for i, f in enumerate(self.faults) if f.start == t]
            self.active.difference_update(ending)
            self.active.update(i for i in starting if not isinstance(self.faults[i], GpuLost))
            self._apply_links()
            self._apply_stragglers(starting)
            for i in starting:
                if isinstance(self.faults[i], GpuLost):
                    self._lose_gpu(i)

    # ---------------------------------------------------------------- links

    def _apply_links(self) -> None:
        cap = self.nominal.copy()
        n = self.cluster.n_gpus
        nic_down, su_down = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        for i in sorted(self.active):
            f = self.faults[i]
            if isinstance(f, LinkDegraded):
                cap[self.links[i]] *= f.factor
            elif isinstance(f, LinkDown):
                cap[self.links[i]] = 0.0
                (nic_down if f.tier == TIER_NAMES[SCALE_OUT] else su_down)[self.ports[i]] = True
        self.router.set_down(nic_down, su_down)
        net = self.sim.net
        if np.array_equal(cap, net.capacity):
            return
        self._unreachable: dict[int, Unroutable] = {}
        withdrawn = net.set_capacity(cap, reroute=self._reroute)
        for f in withdrawn:
            r = f.owner
            if r >= 0 and self.sim.alive[r]:
                why = self._unreachable.get(id(f))
                self.sim._stop_replica(r, f"unreachable: {why}" if why else "unreachable",
                                       self.blame(why.gpu if why else -1))

    def _reroute(self, flow):
        x = flow.tag
        if x is None:
            return None
        try:
            t = self.router.route(x.src, x.matrix, x.dst)
        except Unroutable as e:
            self._unreachable[id(flow)] = e
            return None
        self.log.flows_rerouted_in_flight += 1
        return self.sim.net.prepare(t.links, t.load)

    def blame(self, gpu: int) -> int:
        """The active link_down fault that took a GPU's ports (the first one), else -1."""
        for i in sorted(self.active):
            if isinstance(self.faults[i], LinkDown) and (gpu < 0 or gpu in self.ports[i]):
                return i
        return -1

    # ---------------------------------------------------------------- GPUs

    def _apply_stragglers(self, starting: list[int]) -> None:
        slow = np.ones(self.cluster.n_gpus)
        for i in sorted(self.active):
            f = self.faults[i]
            if isinstance(f, Straggler):
                slow[f.gpu] *= f.slowdown
        self.sim.slow = None if (slow == 1.0).all() else slow
        for i in starting:
            f = self.faults[i]
            if isinstance(f, Straggler):
                r, s = self.owner[f.gpu], self.stage_of[f.gpu]
                self.log.records[i].replica = int(r)
                self.log.records[i].effect.append(
                    f"ops x{f.slowdown:g} on GPU {f.gpu} (replica {r}, stage {s}); its stage "
                    "waits for it" if r >= 0 else f"GPU {f.gpu} serves no replica: no effect")

    def _lose_gpu(self, i: int) -> None:
        f, rec = self.faults[i], self.log.records[i]
        r = int(self.owner[f.gpu])
        rec.replica = r
        if r < 0:
            rec.effect.append(f"GPU {f.gpu} serves no replica: no effect")
            return
        if not self.sim.alive[r]:
            rec.effect.append(f"replica {r} had already stopped")
            return
        restart = f.start + f.restart_after if f.policy == "restart_replica" else None
        failed = self.sim._stop_replica(r, f"gpu_lost: GPU {f.gpu}", i, restart_at=restart)
        rec.requests_failed += failed
        rec.effect.append(f"replica {r} stopped; {failed} request(s) failed" +
                          (f"; restarts at {restart:g} s" if restart is not None else ""))
        if restart is not None:
            ev = self.env.timeout(restart - self.env.now)
            ev.callbacks.append(lambda _e: self.sim._restart_replica(r))

    def finish(self) -> FaultLog:
        """The log with the router's counters and per-fault effects filled in."""
        log = self.log
        log.rerouted_transfers = self.router.rerouted_transfers
        log.rerouted_bytes = self.router.rerouted_bytes
        for i, f in enumerate(self.faults):
            rec = log.records[i]
            if isinstance(f, LinkDegraded):
                rec.effect.insert(0, f"capacity x{f.factor:g} on {rec.links} link(s)")
            elif isinstance(f, LinkDown):
                rec.effect.insert(0, f"{rec.links} link(s) carry nothing; traffic of "
                                     f"{rec.gpus} GPU(s) re-routed where a path exists")
            if i in self.ports and (self.owner[self.ports[i]] < 0).all():
                rec.effect.append("its GPUs serve no replica: no traffic affected")
        for st in log.stops:
            if st.fault >= 0 and not isinstance(self.faults[st.fault], GpuLost):
                rec = log.records[st.fault]
                rec.requests_failed += st.requests_failed
                rec.effect.append(f"replica {st.replica} stopped at {st.time:g} s ({st.reason}); "
                                  f"{st.requests_failed} request(s) failed")
        return log
