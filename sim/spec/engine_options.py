"""Scenario sections that only the discrete-event engine reads: MoE routing and
communication precisions (`moe:`), and engine options (`engine:`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import NonNegativeInt, PositiveNumber, Spec
from .precision import Precision


class UniformRouting(Spec):
    dist: Literal["uniform"]


class ZipfRouting(Spec):
    """Expert popularity falls as 1 / rank^exponent; ranks are shuffled over expert ids
    (seeded) so that hot experts land on random GPUs."""

    dist: Literal["zipf"]
    exponent: PositiveNumber


class HotRouting(Spec):
    """`share` of all routing choices go to the listed experts, the rest spread evenly."""

    dist: Literal["hot"]
    experts: list[NonNegativeInt] = Field(min_length=1)
    share: float = Field(gt=0, lt=1)


Routing = Annotated[UniformRouting | ZipfRouting | HotRouting, Field(discriminator="dist")]


class MoEOptions(Spec):
    routing: Routing = UniformRouting(dist="uniform")
    dispatch_precision: Precision = Field(
        "fp8", description="bytes per element of tokens sent to experts (DeepEP: FP8)")
    combine_precision: Precision = Field(
        "bf16", description="bytes per element of expert outputs sent back (DeepEP: BF16)")


class EngineOptions(Spec):
    activation_precision: Precision = Field(
        "bf16", description="activations sent between pipeline stages and in TP all-reduce")
    all_reduce: Literal["ring", "tree"] = Field("ring", description="TP all-reduce algorithm")
    attention_flops: bool = Field(
        True, description="count attention's per-context-token FLOPs (the closed form omits "
                          "them; they matter only when compute bound)")
    trace_detail_steps: NonNegativeInt = Field(
        20, description="steps after warm-up whose layers and collectives appear in trace.json")
