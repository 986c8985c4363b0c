"""Hardware design: one GPU, how many per rack, the scale-up domain and the scale-out fabric.

The format is documented in docs/presets.md; figures live in topologies/*.yaml with sources.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import Bandwidth, Bytes, Flops, Fraction, PositiveInt, SecondsOrZero, Spec
from .cost import HardwareCost
from .precision import PRECISION_ORDER, Precision


class GPU(Spec):
    name: str = ""
    flops: Flops | dict[Precision, Flops] = Field(
        description="dense FLOP/s: one number (at the model's precision) or one per precision")
    hbm_bytes: Bytes = Field(description="usable HBM per GPU")
    hbm_bandwidth: Bandwidth = Field(description="HBM bandwidth per GPU")

    @field_validator("flops")
    @classmethod
    def _some_precision(cls, v):
        if isinstance(v, dict) and not v:
            raise ValueError("give at least one precision, e.g. {bf16: 2.5e15}")
        return v

    def flops_at(self, precision: Precision) -> tuple[Precision | None, float]:
        """Peak FLOP/s for matmuls at `precision`: the lowest precision the GPU offers that is
        at least as wide as the one asked (FP4 weights run as FP8 on a GPU without FP4).
        Returns the precision used (None when `flops` is a single number) and its FLOP/s."""
        if not isinstance(self.flops, dict):
            return None, float(self.flops)
        wanted = PRECISION_ORDER[precision]
        offered = sorted((PRECISION_ORDER[p], p) for p in self.flops if PRECISION_ORDER[p] >= wanted)
        if not offered:
            widest = max(self.flops, key=lambda p: PRECISION_ORDER[p])
            return widest, float(self.flops[widest])
        used = offered[0][1]
        return used, float(self.flops[used])


class ScaleUp(Spec):
    domain_gpus: PositiveInt | None = Field(
        None, description="GPUs per switched scale-up domain; default: gpus_per_rack")
    bandwidth_per_gpu: Bandwidth = Field(description="bytes/s per direction per GPU")
    latency: SecondsOrZero = Field(description="one-way GPU-to-GPU latency through the switch")


class ScaleOut(Spec):
    bandwidth_per_gpu: Bandwidth = Field(description="NIC bytes/s per direction per GPU")
    latency: SecondsOrZero = Field(description="one-way GPU-to-GPU latency across the fabric")
    topology: Literal["rail_optimized", "fat_tree"] = "fat_tree"
    oversubscription: float = Field(
        1.0, ge=1.0, description="leaf downlink capacity / uplink capacity (1 = non-blocking)")


class KernelClass(Spec):
    """How one class of kernels runs (sim/engine/kernels.py): each kernel takes its own
    roofline at these achieved fractions of peak, its M (tokens) padded up to a multiple of
    `tile_m`, plus a fixed cost (launch, ramp-up, tail)."""

    compute: Fraction | dict[Precision, Fraction] = Field(
        1.0, description="achieved / peak FLOP/s on large shapes: one figure, or one per "
                         "matmul precision")
    memory: Fraction = Field(1.0, description="achieved / peak HBM bandwidth on large reads")
    fixed: SecondsOrZero | dict[Precision, SecondsOrZero] = Field(
        0.0, description="fixed cost per kernel: one figure, or one per matmul precision")
    per_row: SecondsOrZero = Field(
        0.0, description="cost per row on top (attention: per sequence of a decode step, "
                         "whatever its context)")
    tile_m: PositiveInt = Field(1, description="M is computed in tiles of this many rows")

    def compute_at(self, precision: str | None) -> float:
        return at_precision(self.compute, precision)

    def fixed_at(self, precision: str | None) -> float:
        return at_precision(self.fixed, precision)


def at_precision(value, precision: str | None) -> float:
    """A figure given once or per precision, at `precision`: its own, else the nearest given
    by width (fp4 weights on an fp8-only GPU take fp8's)."""
    if not isinstance(value, Mapping):
        return float(value)
    if precision in value:
        return float(value[precision])
    order = PRECISION_ORDER.get(precision or "", PRECISION_ORDER["bf16"])
    return float(min(value.items(), key=lambda kv: abs(PRECISION_ORDER[kv[0]] - order))[1])


class KernelTiming(Spec):
    """Per-kernel timing parameters of one GPU generation, fitted on measured kernel
    latencies (`racksim calibrate`; docs/kernel-model.md)."""

    source: str = Field("", description="the measured data and the fit that produced these")
    gemm: KernelClass = KernelClass()
    grouped_gemm: KernelClass = KernelClass()
    attention: KernelClass = Field(
        KernelClass(), description="decode (generation) attention, GQA/MHA: rows = sequences")
    attention_prefill: KernelClass | None = Field(
        None, description="context (prefill) attention: rows = prompt tokens; default: "
                          "`attention`")
    elementwise: KernelClass = KernelClass()
    mla_attention: KernelClass | None = Field(
        None, description="decode multi-head latent attention; default: `attention`")
    mla_prefill: KernelClass | None = Field(
        None, description="context multi-head latent attention; default: `mla_attention`")


class Efficiency(Spec):
    """Achievable fractions of peak and fixed overheads, calibrated per GPU generation against
    published measurements (docs/validation.md says from which cases)."""

    compute: Fraction = Field(1.0, description="achieved / peak matmul FLOP/s (GEMMs)")
    attention_compute: Fraction = Field(
        1.0, description="achieved / peak FLOP/s of attention kernels, whose softmax work "
                         "keeps them below GEMM efficiency")
    memory: Fraction = Field(1.0, description="achieved / peak HBM bandwidth")
    scale_up: Fraction = Field(1.0, description="achieved / peak scale-up bandwidth per GPU")
    scale_out: Fraction = Field(1.0, description="achieved / peak NIC bandwidth per GPU")
    collective_overhead: SecondsOrZero = Field(
        0.0, description="fixed cost of one collective (kernel launch, synchronisation), "
                         "paid once per collective on top of link latency")
    kernels: KernelTiming | None = Field(
        None, description="per-kernel timing (shape-dependent efficiency and fixed costs); "
                          "absent: every kernel at `compute`/`attention_compute`/`memory` "
                          "with no fixed cost")


class Hardware(Spec):
    name: str
    description: str = ""
    sources: list[str] = Field(default_factory=list)
    gpu: GPU
    gpus_per_rack: PositiveInt
    scale_up: ScaleUp
    scale_out: ScaleOut
    efficiency: Efficiency = Efficiency()
    cost: HardwareCost | None = Field(
        None, description="what a rack costs to buy and to power (capex_per_rack, "
                          "power_per_rack, idle_power_fraction, amortisation_years); "
                          "prices the design's runs (docs/cost.md)")

    @model_validator(mode="after")
    def _domain_divides_rack(self) -> Hardware:
        d = self.scale_up.domain_gpus
        if d is not None and self.gpus_per_rack % d:
            raise ValueError(
                f"scale_up.domain_gpus ({d}) must divide gpus_per_rack ({self.gpus_per_rack})")
        return self

    @property
    def domain_gpus(self) -> int:
        return self.scale_up.domain_gpus or self.gpus_per_rack
