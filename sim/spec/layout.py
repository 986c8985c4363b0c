"""Parallel layout: EP x TP GPUs per pipeline stage, PP stages per replica, DP replicas.

This module is the one place that decides how layers split into stages and how many bytes a
GPU holds (domain.md section 4); the feasibility checks, the roofline and the engine call it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import PositiveInt, Spec
from .model import Model


class Layout(Spec):
    expert_parallel: PositiveInt = Field(1, description="EP: GPUs sharing one MoE layer's experts")
    tensor_parallel: PositiveInt = Field(1, description="TP: GPUs splitting each matmul")
    pipeline_parallel: PositiveInt = Field(
        1, description="PP: stages, placed on consecutive scale-up domains")
    data_parallel: PositiveInt = Field(1, description="independent replicas")
    dense: Literal["sharded", "replicated"] = Field(
        "sharded", description="non-expert part (attention, dense and shared MLPs, embeddings) "
                               "over a stage's EP ranks: sharded = spread evenly (the "
                               "roofline's convention, domain.md s4); replicated = every EP "
                               "rank holds it whole and runs its own sequences (DP attention, "
                               "as DeepSeek and SGLang serve); TP still splits it")
    microbatches: PositiveInt | None = Field(
        None, description="microbatches in flight per replica; default: pipeline_parallel "
                          "(the minimum that keeps every decode stage busy)")

    @property
    def stage_gpus(self) -> int:
        """GPUs that work in parallel on one stage of one step: EP x TP."""
        return self.expert_parallel * self.tensor_parallel

    @property
    def replica_gpus(self) -> int:
        return self.stage_gpus * self.pipeline_parallel

    @property
    def total_gpus(self) -> int:
        return self.replica_gpus * self.data_parallel

    @property
    def n_microbatches(self) -> int:
        return self.microbatches or self.pipeline_parallel

    def describe(self) -> str:
        return (f"EP {self.expert_parallel} x TP {self.tensor_parallel} x "
                f"PP {self.pipeline_parallel} x DP {self.data_parallel}, "
                f"{self.n_microbatches} microbatch(es)")


def stage_layers(layers: int, stages: int) -> list[int]:
    """Layers per stage. Uneven splits put the extra layers on the first stages
    (61 layers on 2 stages: [31, 30]); documented in docs/architecture.md."""
    base, extra = divmod(layers, stages)
    return [base + (1 if s < extra else 0) for s in range(stages)]


def max_stage_fraction(layers: int, stages: int) -> float:
    """Share of the model's layers on the largest stage (1/PP when they divide evenly)."""
    return max(stage_layers(layers, stages)) / layers


def dense_share(layout: Layout) -> int:
    """GPUs of a stage that split the non-expert part: EP x TP sharded, TP replicated."""
    return layout.stage_gpus if layout.dense == "sharded" else layout.tensor_parallel


def weight_bytes_per_gpu(model: Model, layout: Layout) -> float:
    """Weights of the largest stage on one GPU: spread evenly over its EP x TP GPUs
    (domain.md s4), except a replicated dense part, which only TP splits."""
    f = max_stage_fraction(model.layers, layout.pipeline_parallel)
    routed = model.routed_weight_bytes
    dense = model.weight_bytes - routed
    return f * (routed / layout.stage_gpus + dense / dense_share(layout))


def kv_bytes_per_gpu(model: Model, layout: Layout, batch: float, context: float) -> float:
    """KV cache per GPU: every microbatch in flight keeps `batch` sequences of `context`
    tokens; a stage holds its layers' share, spread over its EP x TP GPUs. With
    microbatches = PP this is domain.md's (PP*b)*L*kv/(EP*PP)."""
    f = max_stage_fraction(model.layers, layout.pipeline_parallel)
    sequences = layout.n_microbatches * batch
    return sequences * context * model.kv_bytes_per_token * f / layout.stage_gpus


def memory_per_gpu(model: Model, layout: Layout, batch: float, context: float) -> float:
    return weight_bytes_per_gpu(model, layout) + kv_bytes_per_gpu(model, layout, batch, context)


def kv_capacity_tokens(model: Model, layout: Layout, hbm_bytes: float,
                       memory_fraction: float = 1.0) -> float:
    """Context tokens one replica can hold in KV: `memory_fraction` of the HBM left after the
    largest stage's weights, per GPU, over the KV bytes a token puts on each of that stage's
    GPUs."""
    free = (hbm_bytes - weight_bytes_per_gpu(model, layout)) * memory_fraction
    per_token = model.kv_bytes_per_token * max_stage_fraction(model.layers,
                                                              layout.pipeline_parallel) \
        / layout.stage_gpus
    return float("inf") if per_token == 0 else float(free // per_token)
