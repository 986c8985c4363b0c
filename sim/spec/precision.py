"""Numeric precisions: bytes per element and their order (narrowest first)."""

from __future__ import annotations

from typing import Literal

Precision = Literal["fp4", "mxfp4", "fp6", "fp8", "bf16", "fp16", "tf32", "fp32"]

# mxfp4: 4-bit elements plus one 8-bit shared scale per 32 elements = 4.25 bits
# (OCP Microscaling Formats (MX) v1.0 specification, 2023).
BYTES_PER_ELEMENT: dict[str, float] = {
    "fp4": 0.5, "mxfp4": 4.25 / 8, "fp6": 0.75, "fp8": 1.0,
    "bf16": 2.0, "fp16": 2.0, "tf32": 4.0, "fp32": 4.0,
}

# Matmul precision order; mxfp4 computes on FP4 tensor cores.
PRECISION_ORDER: dict[str, int] = {
    "fp4": 0, "mxfp4": 0, "fp6": 1, "fp8": 2, "bf16": 3, "fp16": 3, "tf32": 4, "fp32": 5,
}

_BY_BYTES = {0.5: "fp4", 0.75: "fp6", 1.0: "fp8", 2.0: "bf16", 4.0: "fp32"}


def precision_for_bytes(bytes_per_param: float) -> str | None:
    """The matmul precision implied by a bytes-per-parameter figure, if it is a standard one."""
    return _BY_BYTES.get(float(bytes_per_param))
