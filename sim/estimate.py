"""Closed-form serving estimate: one step's op time by the engine's own op-timing rule (the
same LayerCosts, so `engine.op_timing` applies: per-kernel rooflines or the pooled
roofline), plus the step's uncontended communication on the layout's real placement, plus
the prefill work each output token brings in steady state. It is what `racksim roofline`
reports beside the pure roofline, where `racksim compare` ranks layouts, and where `racksim
capacity` starts its search.

Per step of a microbatch of `b` sequences through all stages:

    prefill    = each output token carries p = prompt / output prompt tokens (the mean
                 lengths, less the prefix-cache share; none under disaggregated prefill)
    ops        = L x (dense part of a layer on the busiest GPU) + MoE layers x (experts on
                 the busiest EP rank), for b (1 + p) tokens spread evenly over the EP ranks,
                 b sequences reading `context` tokens of KV each, prompt tokens attending to
                 half their prompt on average, routing spread evenly over the experts
    comm       = fixed + b (1 + p) per_token   (dispatch and combine per MoE layer, two TP
                 all-reduces per layer, stage-boundary sends; each alone on its links:
                 latency + max over links of bytes / capacity)
    step       = ops + comm

It is still a bound: no queueing, no contention between replicas or microbatches, no router
skew, no slowest-GPU effect. Simulation finds what those cost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import roofline as rf
from .spec.layout import memory_per_gpu
from .spec.scenario import Scenario
from .spec.workload import Continuous


@dataclass(frozen=True)
class Communication:
    """Uncontended communication of one step through all stages."""

    fixed_s: float       # latencies and per-collective overheads
    per_token_s: float   # link time per token of the step (bytes grow linearly with tokens)

    def time(self, tokens) -> float:
        return self.fixed_s + np.asarray(tokens, dtype=float) * self.per_token_s


def communication(s: Scenario) -> Communication:
    """The engine's collectives of one step on the layout's real placement, each alone on its
    links: latency + max(bytes / capacity) over the links it uses."""
    from .cluster.placement import place  # noqa: PLC0415
    from .cluster.topology import build_cluster  # noqa: PLC0415
    from .engine import collectives as coll  # noqa: PLC0415
    from .engine.costs import layer_costs  # noqa: PLC0415

    lay, m = s.layout, s.model
    cluster = build_cluster(s.hardware, s.racks)
    groups = place(cluster, lay, s.file).gpus[0]
    c = layer_costs(m, s.hardware, lay, s.spec.moe, s.spec.engine.activation_precision, False)
    G, ep, tp = c.G, c.ep, c.tp

    def drain(t: coll.Transfer) -> float:
        return float((t.load / cluster.capacity[t.links]).max()) if len(t.links) else 0.0

    fixed = per_token = 0.0
    if m.moe is not None and ep > 1:  # one token spread evenly, its k copies over EP ranks
        share = np.full((G, G), c.top_k / (G * ep * tp))
        for nbytes in (c.dispatch_bytes, c.combine_bytes):
            t = coll.pair_loads(cluster, groups[0], share * nbytes)
            fixed += m.moe.moe_layers * t.latency
            per_token += m.moe.moe_layers * drain(t)
    if tp > 1:
        t = coll.all_reduce(cluster, groups[0][:tp], c.activation_bytes / ep,
                            s.spec.engine.all_reduce)
        fixed += 2 * m.layers * t.latency
        per_token += 2 * m.layers * drain(t)
    for a, b in zip(groups[:-1], groups[1:]):
        t = coll.send_recv(cluster, a, b, c.activation_bytes / G)
        fixed += t.latency
        per_token += drain(t)
    if lay.pipeline_parallel > 1:
        fixed += cluster.path_latency(int(groups[-1][0]), int(groups[0][0]))
    return Communication(fixed, per_token)


def prefill_per_output_token(s: Scenario) -> float:
    """Prompt tokens computed per output token in steady state."""
    b = s.batching
    if isinstance(b, Continuous) and b.prefill == "disaggregated":
        return 0.0
    w = s.workload
    return w.prompt_tokens.mean * (1.0 - w.prefix_cache_hit) / w.output_tokens.mean


@dataclass(frozen=True)
class Estimate:
    batch: float                  # sequences per microbatch
    context_tokens: float
    roofline_step_s: float        # max(compute, weights + kv), decode only
    prefill_compute_s: float      # op time the step's prefill tokens add
    communication_s: float        # uncontended collectives of the step
    step_time_s: float            # the estimate of one step through all stages
    token_cycle_s: float          # time between two tokens of one sequence
    output_tokens_per_s: float    # the deployment's
    requests_per_s: float         # output tokens/s over the mean output length
    fits: bool                    # weights + KV of the batch fit in HBM

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def op_time(s: Scenario, costs, batch: float, context: float, p: float) -> float:
    """One step's op time through all stages by the engine's rule (`costs`: LayerCosts)."""
    from .engine.kernels import StepWork  # noqa: PLC0415

    tokens = batch * (1.0 + p)
    prompt = s.workload.prompt_tokens.mean * (1.0 - s.workload.prefix_cache_hit)
    pre = batch * p   # prompt tokens per step, each attending to half its prompt on average
    work = StepWork(tokens, batch, batch * context, pre, pre * prompt / 2.0,
                    pre * prompt / 2.0).scaled(np.full(costs.G, 1.0 / costs.ep))
    dense, _ = costs.dense_phase(work)
    t = float(dense.max()) * s.model.layers
    if s.model.moe is not None:
        experts = costs.experts
        expert, _ = costs.expert_phase(np.full(experts, tokens * costs.top_k / experts))
        t += float(expert.max()) * s.model.moe.moe_layers
    return t


def estimate(s: Scenario, batch: float, context: float | None = None,
             comm: Communication | None = None, prefill: bool = True, costs=None
             ) -> Estimate:
    """The step with communication (and, with `prefill`, steady-state prefill) at `batch`."""
    from .engine.costs import layer_costs  # noqa: PLC0415

    context = s.mean_context() if context is None else context
    comm = communication(s) if comm is None else comm
    if costs is None:
        costs = layer_costs(s.model, s.hardware, s.layout, s.spec.moe,
                            s.spec.engine.activation_precision, s.spec.engine.attention_flops,
                            s.spec.engine.op_timing)
    p = prefill_per_output_token(s) if prefill else 0.0
    rates = rf.Rates.of(s.model, s.hardware, s.layout)
    roof = float(rf.step_terms(s.model, rates, batch, context)[3])
    ops = op_time(s, costs, batch, context, p)
    decode_ops = op_time(s, costs, batch, context, 0.0) if p else ops
    tokens = batch * (1.0 + p)
    step = ops + float(comm.time(tokens))
    interval = rf.interval_of(s.batching)
    cycle = float(rf.token_cycle(s.model, s.layout, step, interval))
    tps = float(rf.tokens_per_s(s.model, s.layout, batch, step, interval))
    fits = memory_per_gpu(s.model, s.layout, batch, context) <= s.hardware.gpu.hbm_bytes
    return Estimate(batch=float(batch), context_tokens=float(context), roofline_step_s=roof,
                    prefill_compute_s=ops - decode_ops,
                    communication_s=float(comm.time(tokens)), step_time_s=step,
                    token_cycle_s=cycle, output_tokens_per_s=tps,
                    requests_per_s=tps / s.workload.output_tokens.mean, fits=bool(fits))


def largest_batch(s: Scenario, context: float | None = None) -> float:
    """The largest batch up to `batching.max_batch` whose weights and KV fit in HBM (0 when
    not even the weights fit)."""
    context = s.mean_context() if context is None else context
    cap = float(s.batching.max_batch)
    hbm = s.hardware.gpu.hbm_bytes
    if memory_per_gpu(s.model, s.layout, cap, context) <= hbm:
        return cap
    lo, hi = 0.0, cap   # memory grows linearly with the batch: bisect on whole sequences
    while hi - lo > 1:
        mid = float(np.floor((lo + hi) / 2))
        lo, hi = (mid, hi) if memory_per_gpu(s.model, s.layout, mid, context) <= hbm \
            else (lo, mid)
    return lo


def capacity(s: Scenario, comm: Communication | None = None) -> Estimate:
    """The estimate at the largest batch that fits: the closed form's capacity."""
    context = s.mean_context()
    return estimate(s, max(largest_batch(s, context), 1.0), context, comm)


def engine_view(s: Scenario, r: rf.Roofline, comm: Communication | None = None
                ) -> rf.Roofline:
    """The roofline `r` of scenario `s` beside the engine's view of the same decode step (no
    prefill: the roofline's step is a decode step): its ops by the engine's op timing and
    its uncontended communication."""
    e = estimate(s, r.batch, r.context_tokens, comm, prefill=False)
    return replace(r, communication_time_s=e.communication_s,
                   op_time_s=e.step_time_s - e.communication_s,
                   step_time_estimate_s=e.step_time_s,
                   tokens_per_s_estimate=e.output_tokens_per_s,
                   tokens_per_s_per_gpu_estimate=e.output_tokens_per_s / r.gpus)
