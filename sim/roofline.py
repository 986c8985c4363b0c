"""Closed-form roofline of domain.md sections 1 and 4 for a scenario's layout.

One decode step of a microbatch of `b` sequences through all `PP` stages:

    compute = 2 b N_active / (G F e_c)            G = EP x TP GPUs of a stage
    weights = N_total bytes_per_param / (G W e_m)
    kv      = b L kv / (G W e_m)
    step    = max(compute, weights + kv)

Stages run one after another, so a step through all of them sees the FLOP/s and bandwidth
of one stage's GPUs. With `m` microbatches in flight per replica the stages overlap:
throughput = b / step * min(m, 1 / f_max), where f_max is the largest stage's share of the
layers (1/PP for an even split, which gives domain.md's min(m, PP)); under fixed-interval
batching a token cycle never beats the interval (throughput B / T, domain.md section 2). The functions accept
numpy arrays for `batch` and `context` so plots and sweeps are vectorised.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .spec.cost import SECONDS_PER_HOUR
from .spec.errors import SpecError
from .spec.hardware import Hardware
from .spec.layout import Layout, max_stage_fraction, memory_per_gpu
from .spec.model import Model
from .spec.scenario import Scenario
from .spec.workload import Closed, FixedInterval, Poisson



@dataclass(frozen=True)
class Rates:
    """Achievable per-stage rates: FLOP/s and HBM bytes/s of the G GPUs of one stage."""

    flops: float
    bandwidth: float
    precision: str | None

    @classmethod
    def of(cls, model: Model, hardware: Hardware, layout: Layout) -> Rates:
        used, peak = hardware.gpu.flops_at(model.compute_precision)
        g = layout.stage_gpus
        eff = hardware.efficiency
        return cls(flops=g * peak * eff.compute,
                   bandwidth=g * hardware.gpu.hbm_bandwidth * eff.memory, precision=used)


def step_terms(model: Model, rates: Rates, batch, context):
    """(compute, weight, kv, step) times in seconds; arrays broadcast."""
    b = np.asarray(batch, dtype=float)
    ctx = np.asarray(context, dtype=float)
    compute = 2.0 * b * model.active_params / rates.flops
    weight = np.broadcast_to(model.weight_bytes / rates.bandwidth, np.broadcast(b, ctx).shape)
    kv = b * ctx * model.kv_bytes_per_token / rates.bandwidth
    step = np.maximum(compute, weight + kv)
    return compute, weight, kv, step


def balance_batch(model: Model, rates: Rates) -> float:
    """Batch at which compute time equals weight-fetch time:
    2 B N_active / F = N_total bytes / W  =>  B* = F N_total bytes / (2 N_active W).
    (domain.md's rule of thumb `B* ~ (F / W) x sparsity` omits the factor 1/2 of the
    2-flops-per-multiply-add convention; this is the exact crossing of its two formulas.)"""
    return rates.flops * model.weight_bytes / (2.0 * model.active_params * rates.bandwidth)


def token_cycle(model: Model, layout: Layout, step, interval: float | None = None):
    """Time between two tokens of one sequence: a full step, longer when more microbatches
    queue for a stage than there are stages (m f_max > 1), and never shorter than the
    batching interval when steps depart on a fixed schedule (domain.md section 2)."""
    f = max_stage_fraction(model.layers, layout.pipeline_parallel)
    cycle = np.asarray(step) * max(1.0, layout.n_microbatches * f)
    return cycle if interval is None else np.maximum(cycle, interval)


def tokens_per_s(model: Model, layout: Layout, batch, step, interval: float | None = None):
    """Output tokens/s of the deployment: DP x m microbatches of `batch` per token cycle.
    Back to back (no interval) this is DP x b / step x min(m, 1/f_max)."""
    cycle = token_cycle(model, layout, step, interval)
    return layout.data_parallel * layout.n_microbatches * np.asarray(batch) / cycle


def interval_of(batching) -> float | None:
    return batching.interval if isinstance(batching, FixedInterval) else None


def cost_per_million(price_per_gpu_hour: float | None, gpus: int, tps):
    if price_per_gpu_hour is None:
        return None
    return price_per_gpu_hour * gpus / SECONDS_PER_HOUR / np.asarray(tps) * 1e6


@dataclass(frozen=True)
class Roofline:
    """The closed-form estimate; the first keys are results-format.md's contract."""

    batch: float
    context_tokens: float
    compute_time_s: float
    weight_time_s: float
    kv_time_s: float
    step_time_s: float
    bound: str
    balance_batch: float
    tokens_per_s: float
    tokens_per_s_per_gpu: float
    memory_per_gpu_bytes: float
    fits: bool
    cost_per_million_tokens: float | None
    # context for a reader
    gpus: int
    stage_gpus: int
    stages: int
    microbatches: int
    compute_precision: str | None
    hbm_bytes_per_gpu: float
    # the engine's view, when asked for (sim/estimate.py, `engine_view`): the decode step's
    # ops by the engine's op timing (engine.op_timing: per-kernel or pooled) plus its
    # collectives, each alone on its links; None: not counted, the bound above is compute
    # and memory only
    communication_time_s: float | None = None
    op_time_s: float | None = None
    step_time_estimate_s: float | None = None
    tokens_per_s_estimate: float | None = None
    tokens_per_s_per_gpu_estimate: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


def evaluate(model: Model, hardware: Hardware, layout: Layout, batch: float, context: float,
             price_per_gpu_hour: float | None = None, interval: float | None = None
             ) -> Roofline:
    """The roofline at one point; `interval` is the fixed batching interval, if any."""
    rates = Rates.of(model, hardware, layout)
    compute, weight, kv, step = (float(x) for x in step_terms(model, rates, batch, context))
    tps = float(tokens_per_s(model, layout, batch, step, interval))
    mem = memory_per_gpu(model, layout, batch, context)
    cost = cost_per_million(price_per_gpu_hour, layout.total_gpus, tps)
    return Roofline(
        batch=float(batch), context_tokens=float(context), compute_time_s=compute,
        weight_time_s=weight, kv_time_s=kv, step_time_s=step,
        bound="compute" if compute > weight + kv else "memory",
        balance_batch=balance_batch(model, rates), tokens_per_s=tps,
        tokens_per_s_per_gpu=tps / layout.total_gpus, memory_per_gpu_bytes=mem,
        fits=bool(mem <= hardware.gpu.hbm_bytes),
        cost_per_million_tokens=None if cost is None else float(cost),
        gpus=layout.total_gpus, stage_gpus=layout.stage_gpus, stages=layout.pipeline_parallel,
        microbatches=layout.n_microbatches, compute_precision=rates.precision,
        hbm_bytes_per_gpu=hardware.gpu.hbm_bytes)


# --------------------------------------------------------------------------- the batch a scenario implies


def implied_batch(scenario: Scenario, context: float) -> float:
    """Sequences per microbatch the scenario's traffic implies.

    closed loop: concurrency spread over the microbatches of all replicas; Poisson: Little's
    law, sequences decoding = arrival rate x output tokens x time per token, solved for the
    batch (time per token depends on it); capped at batching.max_batch (overload)."""
    w, lay, m = scenario.workload, scenario.layout, scenario.model
    slots = lay.data_parallel * lay.n_microbatches
    cap = float(scenario.batching.max_batch)
    if isinstance(w.arrival, Closed):
        return min(cap, float(np.ceil(w.arrival.concurrency / slots)))
    if not isinstance(w.arrival, Poisson):
        raise SpecError("the closed form cannot infer a batch from a trace", file=scenario.file,
                        key="workload.arrival", fix="pass --batch B")
    rates = Rates.of(m, scenario.hardware, lay)
    demand = w.arrival.rate_per_s * w.output_tokens.mean / slots  # sequences per second

    def excess(b: float) -> float:
        step = step_terms(m, rates, b, context)[3]
        return float(demand * token_cycle(m, lay, step, interval_of(scenario.batching))) - b

    if excess(cap) > 0:
        return cap
    lo, hi = 0.0, cap
    for _ in range(200):  # bisection: excess is positive at 0 and falls with b
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
        if hi - lo < 1e-9 * cap:
            break
    return float(np.ceil(hi))


def for_scenario(scenario: Scenario, batch: float | None = None,
                 context: float | None = None) -> Roofline:
    context = scenario.mean_context() if context is None else context
    batch = implied_batch(scenario, context) if batch is None else batch
    price = scenario.spec.price_per_gpu_hour
    if price is None and scenario.hardware.cost is not None:   # the design's own, full load
        price = scenario.hardware.cost.gpu_hour_price(scenario.spec.site,
                                                      scenario.hardware.gpus_per_rack)
    return evaluate(scenario.model, scenario.hardware, scenario.layout, batch, context,
                    price, interval_of(scenario.batching))
