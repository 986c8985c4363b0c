"""The discrete-event simulation: SimPy runs the clock; numpy does the arithmetic.

Processes:
- one *feeder* per replica puts arriving requests in that replica's queue;
- one *microbatch* process per (replica, microbatch slot) loops forever: admit, take the
  stages in order (each stage a SimPy resource: one microbatch at a time), run the stage's
  layers (GPU phases as timeouts of the slowest GPU, collectives as network flows), send the
  activations to the next stage, wrap around, apply the step's results.
The network (network.py) is the shared resource that makes collectives of different
microbatches, stages and replicas slow each other down.

What is recorded (arrays, turned into tables by sim.results): requests, steps, stage busy
time, per-GPU time split (compute / memory / network / bubble / idle), link statistics and,
for the first `engine.trace_detail_steps` steps, every phase for the timeline.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numba
import numpy as np
import simpy

from ..cluster.placement import Placement, place
from ..cluster.topology import Cluster, build_cluster
from ..spec.layout import stage_layers
from ..spec.scenario import Scenario
from ..spec.trace import iter_trace
from ..spec.workload import (DEFAULT_CHUNK_TOKENS, QUEUE_BATCHES, Closed, Fixed,
                             FixedInterval, LogNormal, Trace, Uniform)
from . import collectives as coll
from .costs import (PER_KERNEL, draw_routing, dispatch_matrix, expert_popularity, layer_costs,
                    moe_layer_flags, physical_popularity, routing_hits, routing_table,
                    split_per_rank, split_tokens)
from .faults import FaultInjector, FaultLog, Unroutable
from .kernels import StepWork
from .network import Network, TrainShape
from .serving import DONE, DROPPED, FAILED, RUNNING, RequestTable, Slot


ARRIVAL_CHUNK = 4096  # open arrivals are generated this many at a time
# offer open arrivals in batches (Simulation._feeder); False: each at its own event, as a
# reference the tests compare against
BATCH_ARRIVALS = True
# a stage whose group is laid out like an earlier stage's of the same step takes that
# stage's dispatch and combine with link ids mapped (identical figures); False: computes
# its own, as a reference the tests compare against
SHARE_STAGE_TRANSFERS = True
# prepared stage-boundary sends kept per boundary, by token count (a few MB at most)
BOUNDARY_CACHE = 4096
# the link-utilisation series: this many bins over the run (`requests:` runs, whose length is
# not known ahead, use bins of SERIES_DEFAULT_SPAN / SERIES_BINS)
SERIES_BINS = 20000
SERIES_DEFAULT_SPAN = 20.0


class _ArrivalTimeout(simpy.events.Event):
    """A timeout processed before the NORMAL events of its instant (SimPy's URGENT
    priority): an arrival comes before whatever else happens at the same time. Built as
    simpy.Timeout is, with the other priority."""

    def __init__(self, env: simpy.Environment, delay: float):
        super().__init__(env)
        self._ok, self._value = True, None
        env.schedule(self, simpy.events.URGENT, delay)


class StageLock:
    """A pipeline stage: one microbatch at a time, the others queued first come first
    served: simpy.Resource(capacity=1) with less bookkeeping. A free stage is granted by an
    event already triggered, so the caller goes on after the other events of the instant
    (a fault starting then applies to its step), as with a Resource."""

    __slots__ = ("env", "held", "queue")

    def __init__(self, env: simpy.Environment):
        self.env, self.held, self.queue = env, False, deque()

    def acquire(self) -> simpy.Event:
        """An event that fires when the stage is the caller's."""
        ev = self.env.event()
        if self.held:
            self.queue.append(ev)
        else:
            self.held = True
            ev.succeed()
        return ev

    def release(self, wait: simpy.Event) -> None:
        """Give the stage up (to the next in line), or leave the queue if `wait` (what
        acquire returned) was never granted: the caller was interrupted while waiting."""
        if not wait.triggered:
            self.queue.remove(wait)
        elif self.queue:
            self.queue.popleft().succeed()     # handed over: it stays held
        else:
            self.held = False


class CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts the events it processes."""

    def __init__(self):
        super().__init__()
        self.events_processed = 0

    def step(self):
        self.events_processed += 1
        super().step()


@dataclass
class Interval:
    """Time integral of a 0/1 condition (e.g. 'a step is in flight'), clipped to a window."""

    start: float
    count: int = 0
    since: float = 0.0
    total: float = 0.0

    def change(self, now: float, delta: int) -> None:
        before = self.count
        self.count += delta
        if before == 0 and self.count > 0:
            self.since = now
        elif before > 0 and self.count == 0:
            self.total += max(0.0, now - max(self.since, self.start))

    def value(self, now: float) -> float:
        extra = max(0.0, now - max(self.since, self.start)) if self.count > 0 else 0.0
        return self.total + extra


@dataclass
class EngineResult:
    scenario: Scenario
    cluster: Cluster
    placement: Placement
    requests: RequestTable
    steps: dict                 # column -> array, one row per microbatch step
    stage_steps: dict           # one row per (stage, step) hold
    phases: list                # (replica, stage, name, start, end) for the timeline
    gpu_time: dict              # category -> array over cluster GPUs (seconds in window)
    stage_busy: np.ndarray      # [replica, stage] seconds busy in window
    stage_bubble: np.ndarray    # [replica, stage]
    network: Network
    window: tuple[float, float]
    output_tokens: int          # produced in the window
    input_tokens: int           # prefilled in the window
    kv_capacity_tokens: float
    sim_events: int
    wall_time_s: float
    transfers: dict = field(default_factory=dict)  # kind -> [count, bytes]
    arrived_in_window: int = 0      # every arrival after warm-up, dropped ones included
    dropped_in_window: int = 0      # turned away at a full queue (not in `requests`)
    max_queue: int = 0
    longest_queue: int = 0          # waiting requests in the fullest replica queue at the end
    faults: FaultLog | None = None  # what the scenario's faults did (None without faults)
    lost_gpus: tuple = ()           # GPUs lost to gpu_lost faults
    warnings: tuple = ()            # what the engine could not do as the scenario asked


# a stage-step's collectives, by Timeline slot
TRANSFER_KINDS = ("all_reduce", "dispatch", "combine")


@dataclass(frozen=True)
class Timeline:
    """The order of one stage's work, the same every step. Per layer: attention (+ dense
    MLP), then for MoE layers dispatch, experts, combine; tensor parallelism all-reduces after
    attention and after the MLP/experts (Megatron-style: two per layer). Segment i is compute
    (dense[i] attention/dense phases and expert[i] expert phases) then collective slot[i]
    (TRANSFER_KINDS; -1: none, the trailing compute); busy[i] names the compute and
    labels[i] the collective."""

    dense: np.ndarray
    expert: np.ndarray
    slot: np.ndarray
    busy: tuple
    labels: list
    shape: TrainShape     # the same order as a train's segments (network.start_train)
    uses: tuple           # per TRANSFER_KINDS slot: how many segments end with it

    def count(self, u: int, k: int) -> int:
        """Segments before k that end with transfer slot u."""
        return self.uses[u] if k == len(self.slot) else int(np.count_nonzero(self.slot[:k] == u))


def stage_timeline(moe: np.ndarray, tp: int, ep: int) -> Timeline:
    dense, expert, slot, busy = [], [], [], []
    a = b = 0

    def cut(k: int, name: str):
        nonlocal a, b
        dense.append(a)
        expert.append(b)
        slot.append(k)
        busy.append(name)
        a = b = 0

    for is_moe in moe:
        a += 1
        if tp > 1:
            cut(0, "attention")
        if is_moe:
            if ep > 1:
                cut(1, "attention")
            b += 1
            if ep > 1:
                cut(2, "experts")
        if tp > 1:
            cut(0, "experts" if is_moe else "mlp")
    cut(-1, "compute")
    slot = np.array(slot, dtype=np.int64)
    return Timeline(np.array(dense, dtype=float), np.array(expert, dtype=float), slot,
                    tuple(busy), [TRANSFER_KINDS[k] if k >= 0 else None for k in slot],
                    TrainShape(slot),
                    tuple(int(c) for c in np.bincount(slot[slot >= 0],
                                                      minlength=len(TRANSFER_KINDS))))


class _Xfer:
    """A transfer a stage-step reuses for all its layers: what it sends (so it can be routed
    again when links go down), its link loads and its prepared flow."""

    __slots__ = ("src", "matrix", "dst", "hops", "t", "prep", "epoch")


class Simulation:
    def __init__(self, scenario: Scenario):
        s = self.scenario = scenario
        self.env = CountingEnvironment()
        seed = scenario.seed
        self.rng_arrivals = np.random.default_rng([seed, 1])
        self.rng_tokens = np.random.default_rng([seed, 2])
        self.rng_routing = np.random.default_rng([seed, 3])
        self.cluster = build_cluster(s.hardware, s.racks)
        self.placement = place(self.cluster, s.layout, s.file)
        lay, m = s.layout, s.model
        self.net = Network(self.env, self.cluster.capacity, self.cluster.tier,
                           nonbinding=self.cluster.nonbinding,
                           series_bin=(s.workload.duration_s or SERIES_DEFAULT_SPAN)
                           / SERIES_BINS,
                           stats_from=s.workload.warmup_s)
        self.costs = layer_costs(m, s.hardware, lay, s.spec.moe,
                                 s.spec.engine.activation_precision,
                                 s.spec.engine.attention_flops, s.spec.engine.op_timing)
        flags = moe_layer_flags(m)
        bounds = np.cumsum([0, *stage_layers(m.layers, lay.pipeline_parallel)])
        self.stage_moe = [flags[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        self.n_moe_layers = int(flags.sum())
        self.stage_layers = [(int(f.sum()), len(f)) for f in self.stage_moe]  # (MoE, all)
        G = lay.stage_gpus
        self.no_slowdown = np.ones(G)                       # no straggler: op times as is
        self.no_time, self.no_bound = np.zeros(G), np.zeros(G)   # no MoE part
        self.timelines = [stage_timeline(f, lay.tensor_parallel, lay.expert_parallel)
                          for f in self.stage_moe]
        self.send_shape = TrainShape(np.array([0]))   # a stage boundary: a wait, the send
        self.popularity = (physical_popularity(
            expert_popularity(s.spec.moe, m.moe.experts, np.random.default_rng([seed, 4])),
            s.spec.moe.redundant_experts) if m.moe else None)
        self.routing_table = routing_table(self.costs, self.popularity) if m.moe else None
        self.dispatch_mode = s.spec.moe.dispatch
        self.hits: dict = {}              # (replica, stage) -> hit probabilities
        self.hits_by_pattern: dict = {}   # rank -> domain pattern -> the same, shared
        self.link_maps: dict = {}         # ((r, s), (r, s)) -> collectives.link_map
        # (replica, stage) -> its send to the next stage: the link map, and the prepared
        # transfer per token count (at most BOUNDARY_CACHE of them)
        self.boundary_sends: dict = {}
        self.R, self.P, self.M = lay.data_parallel, lay.pipeline_parallel, lay.n_microbatches
        self.warmup = s.workload.warmup_s
        self.req = RequestTable()
        self.queues: list[deque] = [deque() for _ in range(self.R)]
        self.slots = [[Slot() for _ in range(self.M)] for _ in range(self.R)]
        self.waiters: list[list[simpy.Event]] = [[] for _ in range(self.R)]
        self.stages = [[StageLock(self.env) for _ in range(self.P)]
                       for _ in range(self.R)]
        self.inflight = [Interval(self.warmup) for _ in range(self.R)]
        self.kv_capacity = s.kv_capacity_tokens()
        self.kv_reserved = np.zeros(self.R)
        n = self.cluster.n_gpus
        self.gpu_compute = np.zeros(n)
        self.gpu_memory = np.zeros(n)
        self.gpu_network = np.zeros(n)
        self.stage_busy = np.zeros((self.R, self.P))
        self.step_rows: dict[str, list] = {k: [] for k in (
            "replica", "microbatch", "start", "end", "sequences", "tokens", "prefill_tokens",
            "output_tokens")}
        self.stage_rows: dict[str, list] = {k: [] for k in (
            "replica", "stage", "microbatch", "start", "end")}
        self.phases: list[tuple] = []
        self.holding: dict = {}   # (replica, stage) -> (start, gpus, comp, mem) while held
        self.detail_steps = s.spec.engine.trace_detail_steps
        self.steps_detailed = 0   # steps after warm-up whose phases go in the trace
        self.output_tokens = 0
        self.input_tokens = 0
        self.transfers: dict[str, list] = {}
        self.finished = 0
        self.target_requests = s.workload.requests
        batching = s.batching
        self.max_queue = batching.max_queue or QUEUE_BATCHES * batching.max_batch * \
            lay.n_microbatches
        self.arrived_in_window = 0
        self.dropped_in_window = 0
        # open arrivals not offered yet (_catch_up): the current chunk and the next one's place
        self._chunks = iter(())
        self._pending: tuple = (np.zeros(0), None, None)
        self._pending_t: list = []          # its arrival times as floats
        self._pending_at = 0
        self._offered = 0                 # open arrivals offered so far
        self._feeder_parked: simpy.Event | None = None
        self.batch_arrivals = BATCH_ARRIVALS
        self.all_done = self.env.event()
        self.batching = s.batching
        self.prefill = getattr(self.batching, "prefill", "chunked")
        self.chunk = getattr(self.batching, "chunk_tokens", DEFAULT_CHUNK_TOKENS)
        self.step_tokens = getattr(self.batching, "max_num_tokens", None)
        # attention data parallelism (dense part replicated per EP rank): sequences whole on
        # one rank each, under the per-kernel op timing (the pooled rule keeps the even
        # spread of the closed form)
        self.dp_ranks = lay.expert_parallel if (
            lay.dense == "replicated" and s.spec.engine.op_timing in PER_KERNEL) else 1
        # under attention DP the step's token budgets hold per rank (TensorRT-LLM's
        # max_num_tokens, SGLang's chunked-prefill size); spread evenly (pooled), a replica's
        # budget is the ranks' together
        if lay.dense == "replicated" and self.dp_ranks == 1:
            f = lay.expert_parallel
            self.chunk *= f
            self.step_tokens = None if self.step_tokens is None else self.step_tokens * f
        # faults (docs/faults.md): live replicas, per-GPU op slowdown (None: none active)
        self.alive = [True] * self.R
        self.n_alive = self.R
        self.slow: np.ndarray | None = None
        self.procs: list[list] = [[] for _ in range(self.R)]
        self.parked_clients = 0     # closed-loop clients waiting for a replica to restart
        self.restarts_pending = 0
        self.injector = FaultInjector(self, s.spec.faults) if s.spec.faults else None
        self.router = self.injector.router if self.injector else None
        # a fault splits the trains running when it strikes (network.set_capacity, cancel);
        # later steps start trains again on the routes and capacities of the moment
        self.use_trains = s.spec.engine.layer_trains

    # ------------------------------------------------------------------ setup

    def _sample_tokens(self, dist, n: int) -> np.ndarray:
        rng = self.rng_tokens
        if isinstance(dist, Fixed):
            return np.full(n, dist.value, dtype=np.int64)
        if isinstance(dist, Uniform):
            return rng.integers(dist.low, dist.high + 1, size=n)
        if isinstance(dist, LogNormal):
            sigma = dist.sigma
            mu = math.log(dist.mean_tokens) - sigma**2 / 2
            x = np.rint(rng.lognormal(mu, sigma, size=n)).astype(np.int64)
            return np.clip(x, 1, dist.max_tokens or np.iinfo(np.int64).max)
        raise AssertionError(dist)

    def _arrival_chunks(self):
        """Arrival times and token counts of an open workload, chunk by chunk in arrival
        order, so memory stays bounded however many requests arrive."""
        w = self.scenario.workload
        if isinstance(w.arrival, Trace):
            end = w.duration_s if w.duration_s is not None else np.inf
            left = w.requests
            for t in iter_trace(self.scenario.base_dir / w.arrival.path):
                keep = t.arrival_s < end       # the run covers [0, duration_s)
                a, p, o = t.arrival_s[keep], t.prompt_tokens[keep], t.output_tokens[keep]
                if left is not None:
                    a, p, o = a[:left], p[:left], o[:left]
                    left -= len(a)
                n = len(a)
                if n:
                    yield (a, p if _from_trace(w.prompt_tokens) else
                           self._sample_tokens(w.prompt_tokens, n),
                           o if _from_trace(w.output_tokens) else
                           self._sample_tokens(w.output_tokens, n))
                if n < len(t.arrival_s) or left == 0:
                    return
            return
        rate, t, left = w.arrival.rate_per_s, 0.0, w.requests
        while left is None or left > 0:
            n = ARRIVAL_CHUNK if left is None else min(ARRIVAL_CHUNK, left)
            times = t + np.cumsum(self.rng_arrivals.exponential(1 / rate, size=n))
            if w.duration_s is not None:
                times = times[times < w.duration_s]
            if len(times):
                yield (times, self._sample_tokens(w.prompt_tokens, len(times)),
                       self._sample_tokens(w.output_tokens, len(times)))
            if len(times) < n:
                return
            t = float(times[-1])
            if left is not None:
                left -= n

    # ------------------------------------------------------------------ arrivals

    def _enqueue(self, r: int, ids) -> None:
        q = self.queues[r]
        for i in np.atleast_1d(ids):
            q.append(int(i))
        self._wake(r)

    def _wake(self, r: int) -> None:
        """Resume the microbatches of replica r that wait for work."""
        waiters, self.waiters[r] = self.waiters[r], []
        for ev in waiters:
            if not ev.triggered:
                ev.succeed()

    def _offer(self, r: int, at: float, prompt: int, output: int,
               droppable: bool = True) -> None:
        """A request arrives at replica r: queued, or dropped when the queue is full (dropped
        requests are counted, not stored, so overload cannot exhaust memory). Closed-loop
        clients are never dropped: their concurrency already bounds the queue."""
        if at >= self.warmup:
            self.arrived_in_window += 1
        if not self.alive[r]:
            r = self._live_replica(r)
            if r < 0:
                self._unplaced(at, droppable)
                return
        if droppable and len(self.queues[r]) >= self.max_queue:
            if at >= self.warmup:
                self.dropped_in_window += 1
            self._count_finished()
            return
        self._enqueue(r, self.req.add(at, prompt, output, r))

    def _feeder(self):
        """One process for all open arrivals, dealt to replicas round robin. At an instant
        an arrival shares with other events, the arrival comes first.

        Arrivals are offered in batches by `_catch_up`, which whatever decides by the queues
        calls first (admission, replica stops and restarts, the end of the run): between two
        admissions a queue only grows, so an arrival offered late finds the queue it would
        have found on time, and costs no event. (`_finish_step` looks at a queue only to wake
        idle microbatches, and while one idles the feeder offers on time.) The feeder itself
        wakes at an arrival's time only when that time matters: while some microbatch waits
        for work, and in runs that end after a number of requests (a dropped or failed
        arrival may be the last to finish). With BATCH_ARRIVALS off it offers every arrival
        at its own event and nothing else does (the reference the tests compare with)."""
        env = self.env
        timed = self.scenario.workload.duration_s is not None and self.batch_arrivals
        while self._next_arrival() is not None:
            if timed and not any(self.waiters):
                self._feeder_parked = env.event()
                yield self._feeder_parked     # until a microbatch waits for work
                self._feeder_parked = None
            else:
                t = self._next_arrival()
                if t > env.now:
                    yield _ArrivalTimeout(env, t - env.now)
            self._catch_up(feeder=True)
        if self.target_requests is not None:  # a trace may hold fewer than asked
            self.target_requests = self._offered
            if self.finished >= self._offered and not self.all_done.triggered:
                self.all_done.succeed()

    def _next_arrival(self) -> float | None:
        """The time of the next open arrival not offered yet (None: there is none)."""
        while self._pending_at >= len(self._pending_t):
            chunk = next(self._chunks, None)
            if chunk is None:
                return None
            self._pending, self._pending_at = chunk, 0
            self._pending_t = chunk[0].tolist()    # for bisect, without numpy per call
        return self._pending_t[self._pending_at]

    def _catch_up(self, feeder: bool = False) -> None:
        """Offer every open arrival due by now, in order: at once when no queue can fill up
        and every replica is live (the common case), else one by one (`_offer`). Only the
        feeder offers when arrivals are not batched."""
        if not (feeder or self.batch_arrivals):
            return
        now, R = self.env.now, self.R
        while (t := self._next_arrival()) is not None and t <= now:
            times, prompts, outputs = self._pending
            i = self._pending_at
            j = bisect.bisect_right(self._pending_t, now, i)
            k0 = self._offered
            n = j - i
            room = self.max_queue - -(-n // R)   # each replica gets at most ceil(n / R)
            if self.n_alive == R and max(map(len, self.queues)) <= room:
                ids = self.req.add(times[i:j], prompts[i:j], outputs[i:j],
                                   np.arange(k0, k0 + n) % R).tolist()
                self.arrived_in_window += n if t >= self.warmup else \
                    int(np.count_nonzero(times[i:j] >= self.warmup))
                for m in range(min(R, n)):     # arrivals k0 + m, k0 + m + R, ... go to
                    r = (k0 + m) % R           # replica (k0 + m) % R
                    self.queues[r].extend(ids[m::R])
                    self._wake(r)
            else:
                for k, (a, p, o) in enumerate(zip(times[i:j].tolist(), prompts[i:j].tolist(),
                                                  outputs[i:j].tolist()), start=k0):
                    self._offer(k % R if self.n_alive == R else self._pick(k), a, p, o)
            self._offered += n
            self._pending_at = j

    def _pick(self, k: int) -> int:
        """Round robin over the live replicas (-1 when none is)."""
        live = [i for i in range(self.R) if self.alive[i]]
        return live[k % len(live)] if live else -1

    def _live_replica(self, r: int) -> int:
        """The next live replica after r (cyclically), -1 when none is."""
        for k in range(1, self.R + 1):
            if self.alive[(r + k) % self.R]:
                return (r + k) % self.R
        return -1

    def _unplaced(self, at: float, droppable: bool) -> None:
        """An arrival with no live replica: an open arrival fails (counted, not stored); a
        closed-loop client waits for a restart, or gives up when none is coming."""
        if not droppable and self.restarts_pending:
            self.parked_clients += 1
            if at >= self.warmup:
                self.arrived_in_window -= 1  # it arrives again when a replica restarts
            return
        log = self.injector.log
        log.failed_unplaced += 1
        log.failed_unplaced_window += at >= self.warmup
        self._count_finished()

    def _new_closed_request(self, r: int, at: float) -> None:
        w = self.scenario.workload
        if self.target_requests is not None and self.req.n >= self.target_requests:
            return
        p = self._sample_tokens(w.prompt_tokens, 1)
        o = self._sample_tokens(w.output_tokens, 1)
        if at <= self.env.now:
            self._offer(r, at, int(p[0]), int(o[0]), droppable=False)
        else:
            ev = self.env.timeout(at - self.env.now)
            ev.callbacks.append(lambda _e: self._offer(r, at, int(p[0]), int(o[0]),
                                                       droppable=False))

    def _start_arrivals(self) -> None:
        w = self.scenario.workload
        if isinstance(w.arrival, Closed):
            for c in range(w.arrival.concurrency):
                self._new_closed_request(c % self.R, 0.0)
            return
        self._chunks = self._arrival_chunks()
        self.env.process(self._feeder())

    # ------------------------------------------------------------------ batching

    def _admit(self, r: int, j: int) -> None:
        self._catch_up()
        q, slot, req = self.queues[r], self.slots[r][j], self.req
        cap = self.batching.max_batch
        new = []
        while q and len(slot) + len(new) < cap:
            i = q[0]
            need = req.prompt[i] + req.output[i]
            if need > self.kv_capacity:  # can never fit: dropped, and a closed-loop client
                q.popleft()               # sends its next request
                req.status[i] = DROPPED
                self._count_finished()
                if isinstance(self.scenario.workload.arrival, Closed):
                    self._new_closed_request(
                        r, self.env.now + self.scenario.workload.arrival.think_time_s)
                continue
            if self.kv_reserved[r] + need > self.kv_capacity:
                break
            q.popleft()
            self.kv_reserved[r] += need
            new.append(i)
        if new:
            ids = np.array(new, dtype=np.int64)
            req.admitted[ids] = self.env.now
            req.status[ids] = RUNNING
            prefilled = self.prefill == "disaggregated"
            prompt = req.prompt[ids]
            # prefix-cache hits: whole tokens, and at least one prompt token left to compute
            cached = np.minimum(np.floor(prompt * self.scenario.workload.prefix_cache_hit),
                                prompt - 1).astype(np.int64)
            slot.admit(ids, prompt, req.output[ids], prefilled, cached)
            if prefilled:  # the first token came from the prefill deployment
                req.first_token[ids] = self.env.now

    def _count_finished(self) -> None:
        """One more request completed or dropped; ends a `requests:` run at its target."""
        self.finished += 1
        if self.target_requests is not None and self.finished >= self.target_requests \
                and not self.all_done.triggered:
            self.all_done.succeed()

    def _wait_for_work(self, r: int) -> simpy.Event:
        ev = self.env.event()
        self.waiters[r].append(ev)
        if self._feeder_parked is not None and not self._feeder_parked.triggered:
            self._feeder_parked.succeed()   # arrivals matter on time from now
        return ev

    def _next_departure(self, j: int) -> float:
        T = self.batching.interval
        offset = j * T / self.M
        k = math.ceil((self.env.now - offset) / T - 1e-9)
        return max(self.env.now, offset + k * T)

    def _microbatch(self, r: int, j: int):
        env, slot = self.env, self.slots[r][j]
        fixed = isinstance(self.batching, FixedInterval)
        try:
            while True:
                if fixed:
                    t = self._next_departure(j)
                    if t > env.now:
                        yield env.timeout(t - env.now)
                self._admit(r, j)
                if not len(slot):
                    yield self._wait_for_work(r)
                    continue
                plan = slot.plan(self.prefill, self.chunk, self.step_tokens, self.dp_ranks)
                start = env.now
                detail = start >= self.warmup and self.steps_detailed < self.detail_steps
                self.steps_detailed += detail
                self.inflight[r].change(start, +1)
                shared: dict = {}   # work every stage of this step shares (_step_work)
                for s in range(self.P):
                    lock = self.stages[r][s]
                    wait = lock.acquire()
                    try:
                        yield wait
                        if s == 0:  # a step's time runs from getting the first stage
                            start = env.now
                        yield from self._run_stage(r, s, j, plan, detail, shared)
                    finally:
                        lock.release(wait)
                    if s < self.P - 1:
                        yield from self._stage_boundary(r, s, plan, detail)
                if self.P > 1:  # the sampled token returns to the first stage
                    a, b = self.placement.group(r, self.P - 1)[0], self.placement.group(r, 0)[0]
                    yield env.timeout(self.cluster.path_latency(int(a), int(b)))
                self.inflight[r].change(env.now, -1)
                self._finish_step(r, j, plan, start)
        except simpy.Interrupt:    # its replica stopped (a fault); _stop_replica cleaned up
            return
        except Unroutable as e:    # its traffic has no path while links are down
            self._stop_replica(r, f"unreachable: {e}", self.injector.blame(e.gpu))

    def _finish_step(self, r: int, j: int, plan, start: float) -> None:
        now, req = self.env.now, self.req
        first, done, produced = self.slots[r][j].advance(plan)
        if now >= self.warmup:
            self.output_tokens += produced
            self.input_tokens += plan.prefill_tokens
        if len(first):
            req.first_token[first] = now
        if len(done):
            req.finish[done] = now
            req.status[done] = DONE
            self.kv_reserved[r] -= float((req.prompt[done] + req.output[done]).sum())
            if self.queues[r]:  # freed KV may admit waiting requests in idle microbatches
                self._wake(r)
            closed = isinstance(self.scenario.workload.arrival, Closed)
            for _ in done:
                self._count_finished()
                if closed:
                    self._new_closed_request(r, now + self.scenario.workload.arrival.think_time_s)
        rows = self.step_rows
        for k, v in (("replica", r), ("microbatch", j), ("start", start), ("end", now),
                     ("sequences", plan.sequences),
                     ("tokens", plan.tokens), ("prefill_tokens", plan.prefill_tokens),
                     ("output_tokens", produced)):
            rows[k].append(v)

    # ------------------------------------------------------------------ a stage

    def _prepare(self, src: np.ndarray, matrix: np.ndarray, dst: np.ndarray | None = None,
                 hops: int | None = None) -> _Xfer:
        """A transfer reused by every layer of a stage-step: routed and normalised once
        (again only if links go down or come back meanwhile). `hops` multiplies the
        latency (an all-reduce pays one per ring step)."""
        x = _Xfer()
        x.src, x.matrix, x.dst, x.hops = src, matrix, dst, hops
        self._route(x)
        return x

    def _route(self, x: _Xfer) -> None:
        if self.router is None:
            t = coll.pair_loads(self.cluster, x.src, x.matrix, x.dst)
            x.epoch = 0
        else:
            t = self.router.route(x.src, x.matrix, x.dst)  # raises Unroutable
            x.epoch = self.router.epoch
        x.t = t = coll.launched(self.cluster, t, x.hops or 1)
        x.prep = self.net.prepare(t.links, t.load)

    def _prepared(self, t) -> _Xfer:
        """A transfer whose link loads are known (no faults: never routed again)."""
        x = _Xfer()
        x.src = x.matrix = x.dst = x.hops = None
        x.epoch = 0
        x.t = t = coll.launched(self.cluster, t)
        x.prep = self.net.prepare(t.links, t.load)
        return x

    def _mapped(self, x: _Xfer, m: np.ndarray) -> _Xfer:
        """Transfer x on the links m maps its links to (collectives.link_map). Without
        faults only: it keeps no matrix to route again (_dispatch_pair returns earlier when
        links can go down)."""
        y = _Xfer()
        y.src = y.matrix = y.dst = y.hops = None
        y.epoch = 0
        t = x.t
        y.t = coll.Transfer(m[t.links], t.load, t.latency, t.bytes_sent)
        y.prep = self.net.mapped(x.prep, m) if x.prep is not None else None
        return y

    def _fresh(self, x: _Xfer) -> _Xfer:
        """The transfer routed for the links up now and normalised for their capacities."""
        if self.router is not None and x.epoch != self.router.epoch:
            self._route(x)
        elif x.prep is not None:
            x.prep = self.net.current(x.prep)
        return x

    def _transfer(self, kind: str, x: _Xfer, r: int):
        if self.router is not None:
            self._fresh(x)
        self._count_transfer(kind, x)
        return self.net.start(x.prep, kind, r, x)

    def _count_transfer(self, kind: str, x: _Xfer, times: int = 1) -> None:
        if times:
            rec = self.transfers.setdefault(kind, [0, 0.0])
            rec[0] += times
            rec[1] += times * x.t.bytes_sent

    def _step_work(self, plan, shared: dict):
        """What every stage of one microbatch step shares: its tokens' spread over a stage
        group, the dense part's cost, and one routing draw with the experts' cost. Every
        stage group has the same shape, so a step draws its routing once and applies it to
        every MoE layer of every stage, as it does without pipelining (the expected cost of
        each layer is exact; stages of one step do not draw fresh noise)."""
        w = shared.get("work")
        if w is None:
            c = self.costs
            if plan.rank_work is not None:   # attention DP: whole sequences on each rank
                work = StepWork(*(np.repeat(x, c.tp) for x in plan.rank_work))
                group_tokens = work.tokens
                gpu_tokens = split_per_rank(plan.rank_work[0], c.tp)
            else:
                group_tokens = np.repeat(split_tokens(plan.tokens, c.ep), c.tp).astype(float)
                share = group_tokens / max(plan.tokens, 1)
                # each EP rank's attention group (its TP GPUs) holds an even share of sequences
                work = StepWork(group_tokens, *(share * x for x in plan.work()[1:]))
                gpu_tokens = split_tokens(plan.tokens, c.G)
            dense = c.dense_phase(work)
            routing = expert = None
            if self.n_moe_layers:
                routing = draw_routing(c, gpu_tokens, self.routing_table, self.rng_routing)
                expert = c.expert_phase(routing.expert_tokens())
            w = shared["work"] = (group_tokens, dense, routing, expert)
        return w

    def _dispatch_pair(self, r: int, s: int, gpus: np.ndarray, routing, hits, shared: dict):
        """A stage's dispatch and combine transfers. Their matrices (token copies between
        GPU positions) are shared by the stages of a step whose EP ranks sit in the same
        pattern of scale-up domains (same `hits`); the combine is the dispatch transposed,
        at the combine's bytes per token."""
        key = ("dispatch", id(hits))
        copies = shared.get(key)
        if copies is None:
            copies = shared[key] = dispatch_matrix(self.costs, routing, 1.0,
                                                   self.dispatch_mode, hits)
        c = self.costs
        if self.router is not None:   # faults: routed around down links, matrix by matrix
            return (self._prepare(gpus, copies * c.dispatch_bytes),
                    self._prepare(gpus, copies.T * c.combine_bytes))
        first = shared.get(("pair", id(hits)))   # an earlier stage's, from the same matrix
        if first is not None and SHARE_STAGE_TRANSFERS:
            rs0, gpus0, pair = first
            key = (rs0, (r, s))
            m = self.link_maps.get(key, False)
            if m is False:
                m = self.link_maps[key] = coll.link_map(self.cluster, gpus0, gpus)
            if m is not None:                     # laid out alike: the same, links mapped
                return tuple(self._mapped(x, m) for x in pair)
        fwd, rev = coll.exchange_pair(self.cluster, gpus, copies)
        pair = (self._prepared(coll.scaled(fwd, c.dispatch_bytes)),
                self._prepared(coll.scaled(rev, c.combine_bytes)))
        shared[("pair", id(hits))] = ((r, s), gpus, pair)
        return pair

    def _run_stage(self, r: int, s: int, j: int, plan, detail: bool, shared: dict):
        env, c, router = self.env, self.costs, self.router
        gpus = self.placement.group(r, s)
        ep, tp = c.ep, c.tp
        group_tokens, (dense_t, dense_cb), routing, expert = self._step_work(plan, shared)
        slow = self.slow[gpus] if self.slow is not None else self.no_slowdown  # stragglers
        n_moe, n_layers = self.stage_layers[s]
        exp_t, exp_cb = expert if n_moe else (self.no_time, self.no_bound)
        comp, mem, t_dense, t_exp = _stage_ops(dense_t, dense_cb, n_layers, exp_t, exp_cb,
                                               n_moe, slow)
        if n_moe and ep > 1:
            disp, comb = self._dispatch_pair(r, s, gpus, routing, self._hits(r, s, gpus),
                                             shared)
        if tp > 1:
            ar = self._tp_all_reduce(gpus, group_tokens)
        start = env.now
        self.holding[(r, s)] = (start, gpus, comp, mem)
        mark = start

        def phase(name):
            nonlocal mark
            if detail:
                self.phases.append((r, s, name, mark, env.now))
            mark = env.now

        tl = self.timelines[s]
        xfers = (ar if tp > 1 else None, disp if n_moe and ep > 1 else None,
                 comb if n_moe and ep > 1 else None)                  # by Timeline slot

        n_seg = len(tl.slot)

        def train():
            """The whole stage-step as one train, if no other flow or train holds its links
            (a train re-formed after a split was measured to thrash under contention: the
            replicas split each other's again and again)."""
            if router is not None:
                for x in xfers:
                    if x is not None:
                        self._fresh(x)          # raises Unroutable
            latency = np.array([x.t.latency if x is not None else 0.0 for x in xfers] + [0.0])
            return self.net.start_train(_waits(tl.dense, t_dense, tl.expert, t_exp, tl.slot,
                                               latency), tl.shape,
                                        [x.prep if x is not None else None for x in xfers],
                                        tl.labels, owner=r, tags=list(xfers))

        # the segments run as a train while their links are the stage's own; from a split
        # on, one by one as events
        i, wait0, flow0 = 0, None, None
        try_train = self.use_trains and not detail
        while i < n_seg:
            if try_train:
                try_train = False
                t = train()
                if t is not None:
                    res = yield t
                    k = n_seg if res is None else res[0]
                    for u, x in enumerate(xfers):
                        if x is not None:
                            self._count_transfer(TRANSFER_KINDS[u], x, tl.count(u, k))
                    if res is None:
                        break
                    _, wait_left, flow = res   # split by a flow claiming one of its links
                    i = k
                    if flow is not None:       # in transfer k: it goes on as that flow
                        self._count_transfer(TRANSFER_KINDS[tl.slot[k]], xfers[tl.slot[k]])
                        flow0 = flow
                    else:                      # in the compute before transfer k
                        wait0 = wait_left
            x = xfers[tl.slot[i]] if tl.slot[i] >= 0 else None
            if flow0 is not None:
                yield flow0
                phase(TRANSFER_KINDS[tl.slot[i]])
            else:
                if x is not None and router is not None:
                    self._fresh(x)
                w = wait0 if wait0 is not None else \
                    tl.dense[i] * t_dense + tl.expert[i] * t_exp + \
                    (x.t.latency if x is not None else 0.0)
                if w > 0 or x is not None:
                    yield env.timeout(w)
                    phase(tl.busy[i])
                if x is not None:
                    yield self._transfer(TRANSFER_KINDS[tl.slot[i]], x, r)
                    phase(TRANSFER_KINDS[tl.slot[i]])
            i, wait0, flow0 = i + 1, None, None
        end = env.now
        self._account(r, s, j, gpus, start, end, comp, mem)

    def _tp_all_reduce(self, gpus: np.ndarray, group_tokens: np.ndarray) -> _Xfer:
        """All-reduce of the tokens' activations inside every TP group of the stage at once."""
        c = self.costs
        n = c.tp
        m = coll.group_all_reduce_matrix(len(gpus), n, group_tokens * c.activation_bytes)
        algo = self.scenario.spec.engine.all_reduce
        return self._prepare(gpus, m, hops=coll.all_reduce_hops(n, algo))

    def _hits(self, r: int, s: int, gpus: np.ndarray):
        """Hit probabilities of the EP ranks and domains of one stage group, cached by the
        pattern of its ranks' scale-up domains (stage groups with the same pattern share
        one object, and so their dispatch matrices within a step)."""
        h = self.hits.get((r, s))
        if h is None:
            c = self.costs
            pattern = tuple(np.unique(self.cluster.gpu_domain[gpus][::c.tp],
                                      return_inverse=True)[1].tolist())
            h = self.hits_by_pattern.get(pattern)
            if h is None:
                moe = self.scenario.model.moe
                h = self.hits_by_pattern[pattern] = routing_hits(
                    self.popularity, c.top_k, moe.groups, moe.topk_groups, c.ep,
                    np.array(pattern))
            self.hits[(r, s)] = h
        return h

    def _stage_boundary(self, r: int, s: int, plan, detail: bool):
        """Stage s hands its activations to stage s + 1, GPU by GPU (a send/recv): as a
        one-transfer train when its links are free (exact, one event), else as a flow."""
        a, b = self.placement.group(r, s), self.placement.group(r, s + 1)
        if self.router is not None:   # faults: routed around down links
            size = split_tokens(plan.tokens, len(a)) * self.costs.activation_bytes
            x = self._prepare(a, np.diag(size.astype(float)), b)  # as collectives.send_recv
        else:   # depends on the step's token count only: prepared once per count
            sends = self.boundary_sends.get((r, s))
            if sends is None:
                sends = self.boundary_sends[(r, s)] = (
                    coll.message_map(self.cluster, a, b), {})
            m, by_tokens = sends
            x = by_tokens.get(plan.tokens)
            if x is None:
                if len(by_tokens) >= BOUNDARY_CACHE:
                    by_tokens.clear()
                size = split_tokens(plan.tokens, len(a)) * self.costs.activation_bytes
                x = by_tokens[plan.tokens] = self._prepared(m.loads(size))
        wait = x.t.latency
        if self.use_trains and not detail:
            train = self.net.start_train(np.array([wait]), self.send_shape, [x.prep],
                                         ["send_recv"], owner=r, tags=[x])
            if train is not None:
                self._count_transfer("send_recv", x)
                res = yield train
                if res is None:
                    return
                _, wait, flow = res           # split by a flow claiming its links
                if flow is not None:
                    yield flow
                    return
                yield self.env.timeout(wait)
                yield self.net.start(x.prep, "send_recv", r, x)
                return
        if wait:
            yield self.env.timeout(wait)
        yield self._transfer("send_recv", x, r)

    def _account(self, r, s, j, gpus, start, end, comp, mem) -> None:
        self.holding.pop((r, s), None)
        self._stage_row(r, s, j, start, end)
        dur = end - start
        inside = max(0.0, end - max(start, self.warmup))
        if inside <= 0 or dur <= 0:
            return
        self.stage_busy[r, s] += inside
        _add_hold(self.gpu_compute, self.gpu_memory, self.gpu_network, gpus, inside / dur,
                  dur, comp, mem)

    def _stage_row(self, r, s, j, start, end) -> None:
        rows = self.stage_rows
        for k, v in (("replica", r), ("stage", s), ("microbatch", j), ("start", start),
                     ("end", end)):
            rows[k].append(v)

    # ------------------------------------------------------------------ replicas stop

    def _stop_replica(self, r: int, reason: str, fault: int,
                      restart_at: float | None = None) -> int:
        """Replica r stops taking work now (a fault): its microbatch processes end, its
        flows leave the network, its stage holds count as busy up to now, and every request
        it holds (running or queued) fails, counted. Returns how many failed."""
        from .faults import StopEvent  # noqa: PLC0415

        self._catch_up()   # arrivals before the stop find it live
        if not self.alive[r]:
            return 0
        env, now, req = self.env, self.env.now, self.req
        self.alive[r] = False
        self.n_alive -= 1
        me = env.active_process
        for p in self.procs[r]:
            if p is not me and p.is_alive:
                p.interrupt(reason)
        self.procs[r] = []
        self.net.cancel(r)
        for key in [k for k in self.holding if k[0] == r]:
            start, gpus, comp, mem = self.holding.pop(key)
            self._stage_row(r, key[1], -1, start, now)
            self._close_hold(key, start, gpus, comp, mem, now)
        iv = self.inflight[r]
        if iv.count:
            iv.change(now, -iv.count)
        ids = [int(i) for sl in self.slots[r] for i in sl.ids] + list(self.queues[r])
        stop = len(self.injector.log.stops)
        if ids:
            ids_a = np.array(ids, dtype=np.int64)
            req.status[ids_a] = FAILED
            req.cause[ids_a] = stop + 1
            req.failed_at[ids_a] = now
        self.slots[r] = [Slot() for _ in range(self.M)]
        self.queues[r].clear()
        self.waiters[r] = []
        self.kv_reserved[r] = 0.0
        self.injector.log.stops.append(StopEvent(now, r, reason, fault, len(ids), restart_at))
        if restart_at is not None:
            self.restarts_pending += 1
        closed = isinstance(self.scenario.workload.arrival, Closed)
        for _ in ids:
            self._count_finished()
            if closed:  # the client's request failed; it sends its next one elsewhere
                self._new_closed_request(r, now + self.scenario.workload.arrival.think_time_s)
        if self.n_alive == 0 and not self.restarts_pending and \
                self.target_requests is not None and not self.all_done.triggered:
            self.all_done.succeed()  # nothing can ever finish the remaining requests
        return len(ids)

    def _restart_replica(self, r: int) -> None:
        """A stopped replica comes back empty (restart_replica policy)."""
        self._catch_up()   # arrivals before the restart find it stopped
        self.restarts_pending -= 1
        if self.alive[r]:
            return
        self.alive[r] = True
        self.n_alive += 1
        self.injector.log.restarts.append((self.env.now, r))
        self._spawn(r)
        parked, self.parked_clients = self.parked_clients, 0
        for _ in range(parked):
            self._new_closed_request(r, self.env.now)

    def _spawn(self, r: int) -> None:
        self.procs[r] = [self.env.process(self._microbatch(r, j)) for j in range(self.M)]

    # ------------------------------------------------------------------ run

    def run(self, progress: Callable[[float, float], None] | None = None) -> EngineResult:
        wall0 = time.perf_counter()
        env = self.env
        self._start_arrivals()
        for r in range(self.R):
            self._spawn(r)
        if self.injector is not None:
            self.injector.start()
        w = self.scenario.workload
        if w.duration_s is not None:
            end = w.duration_s
            chunks = 100
            for k in range(1, chunks + 1):
                env.run(until=end * k / chunks)
                if progress:
                    progress(env.now, end)
        else:
            if self.target_requests:
                env.run(until=self.all_done)
            end = env.now
        return self._result(end, time.perf_counter() - wall0)

    def _account_unfinished(self, end: float) -> None:
        """Stage holds still running when the run stops count as busy up to the end: their
        time goes to compute and memory in the ratio of the step's op times, the rest (if
        the hold has run longer than its ops) to network."""
        for key, (start, gpus, comp, mem) in self.holding.items():
            self._close_hold(key, start, gpus, comp, mem, end)
        self.holding.clear()

    def _close_hold(self, key, start, gpus, comp, mem, end) -> None:
        r, s = key
        inside = max(0.0, end - max(start, self.warmup))
        if inside <= 0:
            return
        ops = comp + mem
        share = np.minimum(1.0, (end - start) / np.maximum(ops, 1e-300)) * \
            inside / max(end - start, 1e-300)
        self.stage_busy[r, s] += inside
        self.gpu_compute[gpus] += comp * share
        self.gpu_memory[gpus] += mem * share
        self.gpu_network[gpus] += np.maximum(inside - (comp + mem) * share, 0.0)

    def _result(self, end: float, wall: float) -> EngineResult:
        self._catch_up()         # every arrival of the run is offered (all come before `end`)
        self.net.finish_stats()  # bring link statistics up to the end
        self._account_unfinished(end)
        window = end - self.warmup
        n = self.cluster.n_gpus
        busy = self.stage_busy
        inflight = np.array([iv.value(end) for iv in self.inflight])
        bubble = np.maximum(inflight[:, None] - busy, 0.0)
        gpu_bubble = np.zeros(n)
        gpu_idle = np.full(n, window)
        used = np.zeros(n, dtype=bool)
        for r in range(self.R):
            for s in range(self.P):
                g = self.placement.group(r, s)
                used[g] = True
                gpu_bubble[g] = bubble[r, s]
        gpu_idle = np.maximum(window - self.gpu_compute - self.gpu_memory - self.gpu_network
                              - gpu_bubble, 0.0)
        return EngineResult(
            scenario=self.scenario, cluster=self.cluster, placement=self.placement,
            requests=self.req,
            steps={k: np.asarray(v) for k, v in self.step_rows.items()},
            stage_steps={k: np.asarray(v) for k, v in self.stage_rows.items()},
            phases=self.phases,
            gpu_time={"compute": self.gpu_compute, "memory": self.gpu_memory,
                      "network": self.gpu_network, "bubble": gpu_bubble, "idle": gpu_idle,
                      "used": used},
            stage_busy=busy, stage_bubble=bubble, network=self.net,
            window=(self.warmup, end), output_tokens=self.output_tokens,
            input_tokens=self.input_tokens, kv_capacity_tokens=self.kv_capacity,
            sim_events=self.env.events_processed, wall_time_s=wall, transfers=self.transfers,
            warnings=self.costs.timing_warnings,
            arrived_in_window=self.arrived_in_window, dropped_in_window=self.dropped_in_window,
            max_queue=self.max_queue, longest_queue=max(len(q) for q in self.queues),
            faults=self.injector.finish() if self.injector else None,
            lost_gpus=tuple(sorted({f.gpu for f in self.scenario.spec.faults
                                    if f.kind == "gpu_lost" and f.start <= end})))


@numba.njit(cache=True, nogil=True)
def _waits(dense, t_dense, expert, t_exp, slot, latency):   # pragma: no cover
    """Before each segment of a stage's timeline: its dense and expert phases' compute, and
    the latency of the transfer it ends with (slot -1: latency[-1], none)."""
    out = np.empty(len(slot))
    for k in range(len(slot)):
        out[k] = dense[k] * t_dense + expert[k] * t_exp + latency[slot[k]]
    return out


@numba.njit(cache=True, nogil=True)
def _stage_ops(dense_t, dense_cb, n_layers, exp_t, exp_cb, n_moe, slow):   # pragma: no cover
    """A stage-step's op time on each GPU (compiled): `n_layers` dense phases and `n_moe`
    expert phases, each scaled by the GPU's slowdown; split into compute-bound (comp) and
    memory-bound (mem) seconds by each phase's compute-bound share (0 or 1 for one
    roofline, the compute-bound kernels' share of a kernel sum); and the slowest GPU's dense
    and expert phase."""
    n = len(dense_t)
    comp, mem = np.empty(n), np.empty(n)
    t_dense = t_exp = 0.0
    for i in range(n):
        d, e = dense_t[i] * slow[i], exp_t[i] * slow[i]
        t_dense, t_exp = max(t_dense, d), max(t_exp, e)
        dc, ec = float(dense_cb[i]), float(exp_cb[i])
        comp[i] = d * dc * n_layers + e * ec * n_moe
        mem[i] = d * (1.0 - dc) * n_layers + e * (1.0 - ec) * n_moe
    return comp, mem, t_dense, t_exp


@numba.njit(cache=True, nogil=True)
def _add_hold(compute, memory, network, gpus, f, dur, comp, mem):   # pragma: no cover
    """Add the share `f` (inside the statistics window) of a stage hold of `dur` seconds
    to its GPUs' time (compiled): op time as compute or memory, the rest network."""
    for k in range(len(gpus)):
        g = gpus[k]
        compute[g] += f * comp[k]
        memory[g] += f * mem[k]
        network[g] += f * max(dur - comp[k] - mem[k], 0.0)


def _from_trace(dist) -> bool:
    return getattr(dist, "dist", None) == "trace"


def simulate(scenario: Scenario, progress=None) -> EngineResult:
    return Simulation(scenario).run(progress)
