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


# How the all-to-all moves a token to its experts (DeepEP's two kernel families,
# https://github.com/deepseek-ai/DeepEP): `per_expert` sends one copy per chosen expert
# (low-latency kernels); `per_gpu` sends a token once to each GPU holding any of its experts;
# `hierarchical` does that inside a scale-up domain and, across domains, sends a token once
# per destination domain over scale-out to the GPU with the sender's position there, which
# forwards it over scale-up (normal, "high-throughput" kernels).
DispatchMode = Literal["per_expert", "per_gpu", "hierarchical"]

# DeepSeek-V3 quantises activations for dispatch in 1 x 128 tiles with one FP32 scale each
# (DeepSeek-V3 Technical Report, arXiv:2412.19437, sec. 3.3.2); DeepEP's FP8 token is
# hidden + hidden / 128 x 4 bytes.
DEFAULT_SCALE_BLOCK = 128


class MoEOptions(Spec):
    routing: Routing = UniformRouting(dist="uniform")
    dispatch: DispatchMode = Field(
        "per_expert", description="per_expert (DeepEP low-latency), per_gpu, or hierarchical "
                                  "(DeepEP normal: once per domain over scale-out, then "
                                  "forwarded over scale-up)")
    dispatch_precision: Precision = Field(
        "fp8", description="bytes per element of tokens sent to experts (DeepEP: FP8)")
    combine_precision: Precision = Field(
        "bf16", description="bytes per element of expert outputs sent back (DeepEP: BF16)")
    redundant_experts: NonNegativeInt = Field(
        0, description="extra copies of the most popular experts (DeepSeek's EPLB); physical "
                       "experts = experts + redundant_experts, each copy taking an equal share "
                       "of its expert's tokens")
    scale_block: NonNegativeInt = Field(
        DEFAULT_SCALE_BLOCK, description="elements per FP32 scale when dispatch or combine is "
                                         "narrower than BF16 (0: no scales)")


class EngineOptions(Spec):
    activation_precision: Precision = Field(
        "bf16", description="activations sent between pipeline stages and in TP all-reduce")
    all_reduce: Literal["ring", "tree"] = Field("ring", description="TP all-reduce algorithm")
    op_timing: Literal["analytical", "measured", "pooled"] = Field(
        "analytical", description="analytical (default): each kernel of a layer "
                                  "(projections, attention, MLPs, expert GEMMs, norms) its "
                                  "own roofline at the hardware's kernel efficiencies "
                                  "(efficiency.kernels, fitted on measured kernels), summed "
                                  "(sim/engine/kernels.py); measured: each kernel from "
                                  "NVIDIA's measured kernel latencies for the GPU where they "
                                  "cover it (aiconfigurator-core; sim/engine/measured.py), "
                                  "analytical where not, and the run says which; pooled: the "
                                  "layer's dense part as one max(compute, memory), its "
                                  "experts as another (the closed form's convention, for "
                                  "comparison)")
    attention_flops: bool = Field(
        True, description="count attention's per-context-token FLOPs (the closed form omits "
                          "them; they matter only when compute bound)")
    layer_trains: bool = Field(
        True, description="run a stage-step whose links no other flow uses as one event "
                          "(exact: its collectives run at their solo rates); it falls back to "
                          "layer-by-layer events the moment another flow claims one of its "
                          "links. Off: always layer by layer (same results, slower)")
    trace_detail_steps: NonNegativeInt = Field(
        20, description="steps after warm-up whose layers and collectives appear in trace.json")
