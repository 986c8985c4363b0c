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

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import simpy

from ..cluster.placement import Placement, place
from ..cluster.topology import Cluster, build_cluster
from ..spec.layout import kv_capacity_tokens, stage_layers
from ..spec.scenario import Scenario
from ..spec.trace import iter_trace
from ..spec.workload import (DEFAULT_CHUNK_TOKENS, QUEUE_BATCHES, Closed, Fixed,
                             FixedInterval, LogNormal, Trace, Uniform)
from . import collectives as coll
from .costs import (draw_routing, dispatch_matrix, expert_popularity, layer_costs,
                    moe_layer_flags, physical_popularity, routing_hits, split_tokens)
from .network import Network
from .serving import DONE, DROPPED, RUNNING, RequestTable, Slot


ARRIVAL_CHUNK = 4096  # open arrivals are generated this many at a time


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
                           stats_from=s.workload.warmup_s)
        self.costs = layer_costs(m, s.hardware, lay, s.spec.moe,
                                 s.spec.engine.activation_precision,
                                 s.spec.engine.attention_flops)
        flags = moe_layer_flags(m)
        bounds = np.cumsum([0, *stage_layers(m.layers, lay.pipeline_parallel)])
        self.stage_moe = [flags[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        self.popularity = (physical_popularity(
            expert_popularity(s.spec.moe, m.moe.experts, np.random.default_rng([seed, 4])),
            s.spec.moe.redundant_experts) if m.moe else None)
        self.dispatch_mode = s.spec.moe.dispatch
        self.hits: dict = {}
        self.R, self.P, self.M = lay.data_parallel, lay.pipeline_parallel, lay.n_microbatches
        self.warmup = s.workload.warmup_s
        self.req = RequestTable()
        self.queues: list[deque] = [deque() for _ in range(self.R)]
        self.slots = [[Slot() for _ in range(self.M)] for _ in range(self.R)]
        self.waiters: list[list[simpy.Event]] = [[] for _ in range(self.R)]
        self.stages = [[simpy.Resource(self.env, 1) for _ in range(self.P)]
                       for _ in range(self.R)]
        self.inflight = [Interval(self.warmup) for _ in range(self.R)]
        self.kv_capacity = kv_capacity_tokens(s.model, s.layout, s.hardware.gpu.hbm_bytes)
        self.kv_reserved = np.zeros(self.R)
        n = self.cluster.n_gpus
        self.gpu_compute = np.zeros(n)
        self.gpu_memory = np.zeros(n)
        self.gpu_network = np.zeros(n)
        self.stage_busy = np.zeros((self.R, self.P))
        self.step_rows: dict[str, list] = {k: [] for k in (
            "replica", "microbatch", "start", "end", "sequences", "tokens", "prefill_tokens")}
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
        self.all_done = self.env.event()
        self.batching = s.batching
        self.prefill = getattr(self.batching, "prefill", "chunked")
        self.chunk = getattr(self.batching, "chunk_tokens", DEFAULT_CHUNK_TOKENS)

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
                keep = t.arrival_s <= end
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
        if droppable and len(self.queues[r]) >= self.max_queue:
            if at >= self.warmup:
                self.dropped_in_window += 1
            self._count_finished()
            return
        self._enqueue(r, self.req.add(at, prompt, output, r))

    def _feeder(self):
        """One process for all open arrivals, dealt to replicas round robin."""
        env, k = self.env, 0
        for times, prompts, outputs in self._arrival_chunks():
            for t, p, o in zip(times.tolist(), prompts.tolist(), outputs.tolist()):
                if t > env.now:
                    yield env.timeout(t - env.now)
                self._offer(k % self.R, t, p, o)
                k += 1
        if self.target_requests is not None:  # a trace may hold fewer than asked
            self.target_requests = k
            if self.finished >= k and not self.all_done.triggered:
                self.all_done.succeed()

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
        self.env.process(self._feeder())

    # ------------------------------------------------------------------ batching

    def _admit(self, r: int, j: int) -> None:
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
        return ev

    def _next_departure(self, j: int) -> float:
        T = self.batching.interval
        offset = j * T / self.M
        k = math.ceil((self.env.now - offset) / T - 1e-9)
        return max(self.env.now, offset + k * T)

    def _microbatch(self, r: int, j: int):
        env, slot = self.env, self.slots[r][j]
        fixed = isinstance(self.batching, FixedInterval)
        while True:
            if fixed:
                t = self._next_departure(j)
                if t > env.now:
                    yield env.timeout(t - env.now)
            self._admit(r, j)
            if not len(slot):
                yield self._wait_for_work(r)
                continue
            plan = slot.plan(self.prefill, self.chunk)
            start = env.now
            detail = start >= self.warmup and self.steps_detailed < self.detail_steps
            self.steps_detailed += detail
            self.inflight[r].change(start, +1)
            for s in range(self.P):
                with self.stages[r][s].request() as hold:
                    yield hold
                    if s == 0:  # a step's time runs from getting the first stage
                        start = env.now
                    yield from self._run_stage(r, s, j, plan, detail)
                if s < self.P - 1:
                    yield from self._stage_boundary(r, s, plan)
            if self.P > 1:  # the sampled token returns to the first stage
                a, b = self.placement.group(r, self.P - 1)[0], self.placement.group(r, 0)[0]
                yield env.timeout(self.cluster.path_latency(int(a), int(b)))
            self.inflight[r].change(env.now, -1)
            self._finish_step(r, j, plan, start)

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
                     ("sequences", int(plan.decode.sum() + (plan.take > 0).sum())),
                     ("tokens", plan.tokens), ("prefill_tokens", plan.prefill_tokens)):
            rows[k].append(v)

    # ------------------------------------------------------------------ a stage

    def _prepare(self, t: coll.Transfer):
        """A transfer reused by every layer of a stage-step: normalised once."""
        return t, self.net.prepare(t.links, t.load)

    def _transfer(self, kind: str, prepared):
        t, prep = prepared
        rec = self.transfers.setdefault(kind, [0, 0.0])
        rec[0] += 1
        rec[1] += t.bytes_sent
        return self.net.start(prep, kind)

    def _run_stage(self, r: int, s: int, j: int, plan, detail: bool):
        env, c, cl = self.env, self.costs, self.cluster
        gpus = self.placement.group(r, s)
        G, ep, tp = c.G, c.ep, c.tp
        group_tokens = np.repeat(split_tokens(plan.tokens, ep), tp).astype(float)
        share = group_tokens / max(plan.tokens, 1)
        # each EP rank's attention group (its TP GPUs) holds an even share of the sequences
        dense_t, dense_cb = c.dense_phase(group_tokens, share * plan.kv_tokens,
                                          share * plan.attn_pairs)
        moe = self.stage_moe[s]
        n_moe = int(moe.sum())
        n_layers = len(moe)
        comp = dense_t * dense_cb * n_layers
        mem = dense_t * ~dense_cb * n_layers
        exp_t = None
        if n_moe:
            routing = draw_routing(c, split_tokens(plan.tokens, G), self.popularity,
                                   self.rng_routing)
            exp_t, exp_cb = c.expert_phase(routing.expert_tokens())
            comp = comp + exp_t * exp_cb * n_moe
            mem = mem + exp_t * ~exp_cb * n_moe
            if ep > 1:
                mode, hits = self.dispatch_mode, self._hits(r, s, gpus)
                disp = self._prepare(coll.exchange(
                    cl, gpus, dispatch_matrix(c, routing, c.dispatch_bytes, mode, hits)))
                comb = self._prepare(coll.exchange(
                    cl, gpus, dispatch_matrix(c, routing, c.combine_bytes, mode, hits).T))
        if tp > 1:
            ar = self._prepare(self._tp_all_reduce(gpus, group_tokens))
        t_dense = float(dense_t.max())
        t_exp = float(exp_t.max()) if exp_t is not None else 0.0
        start = env.now
        self.holding[(r, s)] = (start, gpus, comp, mem)
        delay = 0.0
        mark = start

        def phase(name):
            nonlocal mark
            if detail:
                self.phases.append((r, s, name, mark, env.now))
            mark = env.now

        def collective(busy: str, prepared, kind: str):
            """Finish the pending compute (`busy`) and latency, then run the collective."""
            nonlocal delay
            yield env.timeout(delay + prepared[0].latency)
            delay = 0.0
            phase(busy)
            yield self._transfer(kind, prepared)
            phase(kind)

        # Per layer: attention (+ dense MLP), then for MoE layers dispatch, experts, combine.
        # Tensor parallelism all-reduces after attention and after the MLP/experts
        # (Megatron-style: two per layer). Timeouts between collectives are merged.
        for is_moe in moe:
            delay += t_dense
            if tp > 1:
                yield from collective("attention", ar, "all_reduce")
            if is_moe:
                if ep > 1:
                    yield from collective("attention", disp, "dispatch")
                delay += t_exp
                if ep > 1:
                    yield from collective("experts", comb, "combine")
            if tp > 1:
                yield from collective("experts" if is_moe else "mlp", ar, "all_reduce")
        if delay > 0:
            yield env.timeout(delay)
            phase("compute")
        end = env.now
        self._account(r, s, j, gpus, start, end, comp, mem)

    def _tp_all_reduce(self, gpus: np.ndarray, group_tokens: np.ndarray) -> coll.Transfer:
        """All-reduce of the tokens' activations inside every TP group of the stage at once."""
        c = self.costs
        return coll.group_all_reduce(self.cluster, gpus, c.tp, group_tokens * c.activation_bytes,
                                     self.scenario.spec.engine.all_reduce)

    def _hits(self, r: int, s: int, gpus: np.ndarray):
        """Hit probabilities of the EP ranks and domains of one stage group (cached)."""
        key = (r, s)
        h = self.hits.get(key)
        if h is None:
            moe, c = self.scenario.model.moe, self.costs
            h = self.hits[key] = routing_hits(
                self.popularity, c.top_k, moe.groups, moe.topk_groups, c.ep,
                self.cluster.gpu_domain[gpus][::c.tp])
        return h

    def _stage_boundary(self, r: int, s: int, plan):
        a, b = self.placement.group(r, s), self.placement.group(r, s + 1)
        size = split_tokens(plan.tokens, len(a)) * self.costs.activation_bytes
        t = coll.send_recv(self.cluster, a, b, size)
        if t.latency:
            yield self.env.timeout(t.latency)
        yield self._transfer("send_recv", self._prepare(t))

    def _account(self, r, s, j, gpus, start, end, comp, mem) -> None:
        self.holding.pop((r, s), None)
        rows = self.stage_rows
        for k, v in (("replica", r), ("stage", s), ("microbatch", j), ("start", start),
                     ("end", end)):
            rows[k].append(v)
        dur = end - start
        inside = max(0.0, end - max(start, self.warmup))
        if inside <= 0 or dur <= 0:
            return
        f = inside / dur
        self.stage_busy[r, s] += inside
        self.gpu_compute[gpus] += f * comp
        self.gpu_memory[gpus] += f * mem
        self.gpu_network[gpus] += f * np.maximum(dur - comp - mem, 0.0)

    # ------------------------------------------------------------------ run

    def run(self, progress: Callable[[float, float], None] | None = None) -> EngineResult:
        wall0 = time.perf_counter()
        env = self.env
        self._start_arrivals()
        for r in range(self.R):
            for j in range(self.M):
                env.process(self._microbatch(r, j))
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
        for (r, s), (start, gpus, comp, mem) in self.holding.items():
            inside = max(0.0, end - max(start, self.warmup))
            if inside <= 0:
                continue
            ops = comp + mem
            share = np.minimum(1.0, (end - start) / np.maximum(ops, 1e-300)) * \
                inside / max(end - start, 1e-300)
            self.stage_busy[r, s] += inside
            self.gpu_compute[gpus] += comp * share
            self.gpu_memory[gpus] += mem * share
            self.gpu_network[gpus] += np.maximum(inside - (comp + mem) * share, 0.0)
        self.holding.clear()

    def _result(self, end: float, wall: float) -> EngineResult:
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
            arrived_in_window=self.arrived_in_window, dropped_in_window=self.dropped_in_window,
            max_queue=self.max_queue, longest_queue=max(len(q) for q in self.queues))


def _from_trace(dist) -> bool:
    return getattr(dist, "dist", None) == "trace"


def simulate(scenario: Scenario, progress=None) -> EngineResult:
    return Simulation(scenario).run(progress)
