"""The `faults:` section of a scenario: links degraded or down, straggler GPUs, lost GPUs.

Each item names a kind, a target and a time window (`start`, optional `end`); semantics are
documented in docs/faults.md. Indices (GPU, rack) are checked against the cluster when the
scenario loads (`check_faults`), so a typo never reaches the engine.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .base import NonNegativeInt, Seconds, SecondsOrZero, Spec
from .errors import SpecError
from .units import format_quantity

Tier = Literal["scale_up", "scale_out"]


class _Window(Spec):
    start: SecondsOrZero = Field(description="simulated time the fault begins")
    end: Seconds | None = Field(None, description="when it clears; omit for a permanent fault")

    @model_validator(mode="after")
    def _ordered(self):
        if self.end is not None and self.end <= self.start:
            raise ValueError(
                f"end ({format_quantity(self.end, 's')}) must be after start "
                f"({format_quantity(self.start, 's')}); write it like {{start: 2 s, end: 4 s}}, "
                "or omit end for a fault that never clears")
        return self


class _LinkTarget(_Window):
    tier: Tier = Field(description="scale_up (NVLink ports) or scale_out (NICs and leaves)")
    gpu: NonNegativeInt | None = Field(None, description="one GPU's links of that tier")
    rack: NonNegativeInt | None = Field(None, description="every link of that tier in one rack")

    @model_validator(mode="after")
    def _one_scope(self):
        if self.gpu is not None and self.rack is not None:
            raise ValueError("give gpu or rack, not both; write it like {gpu: 5} for one "
                             "GPU's links, {rack: 1} for a rack's, or neither for the whole tier")
        return self

    def describe(self) -> str:
        where = (f"GPU {self.gpu}" if self.gpu is not None else
                 f"rack {self.rack}" if self.rack is not None else "the whole tier")
        return f"{self.tier} links of {where}"


class LinkDegraded(_LinkTarget):
    """The target links keep `factor` of their capacity while the fault is active."""

    kind: Literal["link_degraded"]
    factor: float = Field(description="fraction of capacity left, 0 < factor <= 1")

    @field_validator("factor", mode="before")
    @classmethod
    def _fraction(cls, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return v  # pydantic reports the type
        if not 0 < v <= 1:
            raise ValueError(
                f"factor {v} is the fraction of capacity left and must be in (0, 1]; write "
                "it like factor: 0.5 (half the bandwidth), or use kind: link_down for a link "
                "that carries nothing")
        return v


class LinkDown(_LinkTarget):
    """The target links carry nothing; traffic is re-routed where another path exists."""

    kind: Literal["link_down"]


class Straggler(_Window):
    """One GPU's operations take `slowdown` times as long while the fault is active."""

    kind: Literal["straggler"]
    gpu: NonNegativeInt = Field(description="the slow GPU")
    slowdown: float = Field(description="op time multiplier, at least 1")

    @field_validator("slowdown", mode="before")
    @classmethod
    def _at_least_one(cls, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return v
        if not 1 <= v < float("inf"):
            raise ValueError(f"slowdown {v} must be a finite number of at least 1; write it "
                             "like slowdown: 1.5 (every op takes 1.5x as long)")
        return v


class GpuLost(Spec):
    """The GPU fails at `start`; its replica stops (its requests fail) and, under
    `restart_replica`, comes back empty `restart_after` later on a replacement GPU."""

    kind: Literal["gpu_lost"]
    gpu: NonNegativeInt = Field(description="the GPU that fails")
    start: SecondsOrZero = Field(description="simulated time of the failure")
    policy: Literal["stop_replica", "restart_replica"] = Field(
        "stop_replica", description="stop_replica: the replica stops for good; "
                                    "restart_replica: it restarts after restart_after")
    restart_after: Seconds | None = Field(
        None, description="restart_replica only: time from the failure until the replica "
                          "takes work again (replacement and model load)")

    @model_validator(mode="after")
    def _restart(self):
        if self.policy == "restart_replica" and self.restart_after is None:
            raise ValueError("policy restart_replica needs restart_after; write it like "
                             "{policy: restart_replica, restart_after: 30 s}")
        if self.policy == "stop_replica" and self.restart_after is not None:
            raise ValueError("restart_after applies to policy restart_replica only; write it "
                             "like {policy: restart_replica, restart_after: 30 s}")
        return self

    @property
    def end(self) -> float | None:
        return None if self.restart_after is None else self.start + self.restart_after


Fault = Annotated[LinkDegraded | LinkDown | Straggler | GpuLost, Field(discriminator="kind")]
KINDS = ("link_degraded", "link_down", "straggler", "gpu_lost")


def describe_target(f) -> str:
    if isinstance(f, (LinkDegraded, LinkDown)):
        return f.describe()
    return f"GPU {f.gpu}"


def check_faults(faults, *, gpus: int, racks: int, duration_s: float | None,
                 file: str | None) -> None:
    """GPU and rack indices inside the cluster, and faults that begin before the run ends."""
    for i, f in enumerate(faults):
        key = f"faults[{i}]"
        gpu = getattr(f, "gpu", None)
        if gpu is not None and gpu >= gpus:
            raise SpecError(f"GPU {gpu} does not exist: the cluster has GPUs 0..{gpus - 1}",
                            file=file, key=f"{key}.gpu",
                            fix=f"use a GPU index below {gpus}, or add racks")
        rack = getattr(f, "rack", None)
        if rack is not None and rack >= racks:
            raise SpecError(f"rack {rack} does not exist: the cluster has racks 0..{racks - 1}",
                            file=file, key=f"{key}.rack",
                            fix=f"use a rack index below {racks}, or raise racks")
        if duration_s is not None and f.start >= duration_s:
            raise SpecError(
                f"the fault starts at {format_quantity(f.start, 's')}, when the run "
                f"({format_quantity(duration_s, 's')}) is over, so it would have no effect",
                file=file, key=f"{key}.start",
                fix="start it before workload.duration_s, or remove it")
