"""Quantities with units: "8 TB/s", "400 Gb/s", "20 ms", "186 GB", "2.5 PFLOP/s".

Every quantity is stored in SI base units (bytes, bytes/s, seconds, FLOP/s). Prefixes are
decimal (k, M, G, T, P, E); binary prefixes (Ki, Mi, Gi, Ti, Pi) are accepted where they are
unambiguous. A lower-case `b` is a bit, an upper-case `B` a byte.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Literal

Kind = Literal["bytes", "bandwidth", "time", "flops", "count", "power"]

_DECIMAL = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_PATTERN = re.compile(rf"^\s*({_NUMBER})\s*([^\s\d].*?)?\s*$")

EXAMPLES: dict[str, str] = {
    "bytes": '"186 GB", "80 GiB" or 186e9',
    "bandwidth": '"8 TB/s", "400 Gb/s" or 8e12',
    "time": '"20 ms", "5 us" or 0.02',
    "flops": '"2.5 PFLOP/s" or 2.5e15',
    "count": "a plain number such as 2048",
    "power": '"132 kW", "700 W" or 132e3',
}


class UnitError(ValueError):
    """A quantity that does not parse; the message says what was expected."""


def _prefix(text: str) -> float | None:
    if text in _BINARY:
        return _BINARY[text]
    if text in _DECIMAL:
        return _DECIMAL[text]
    return None


def _scale(unit: str, kind: Kind) -> float | None:
    """Factor from `unit` to the SI base unit of `kind`, or None when it does not belong."""
    if kind == "time":
        return _TIME.get(unit)
    if kind == "count":
        return _prefix(unit)
    if kind == "power":
        return _prefix(unit[:-1]) if unit.endswith("W") else None
    if kind == "flops":
        for suffix in ("FLOP/s", "FLOPS", "flop/s", "FLOP/S"):
            if unit.endswith(suffix):
                return _prefix(unit[: -len(suffix)])
        return None
    if kind == "bandwidth":
        for suffix, factor in (("B/s", 1.0), ("b/s", 0.125), ("Bps", 1.0), ("bps", 0.125)):
            if unit.endswith(suffix):
                p = _prefix(unit[: -len(suffix)])
                return None if p is None else p * factor
        return None
    if kind == "bytes":
        for suffix, factor in (("B", 1.0), ("b", 0.125)):
            if unit.endswith(suffix):
                p = _prefix(unit[: -len(suffix)])
                return None if p is None else p * factor
        return None
    raise AssertionError(kind)


def parse_quantity(value: object, kind: Kind) -> float:
    """Return `value` in SI base units; raise UnitError with a helpful message otherwise."""
    if isinstance(value, bool):
        raise UnitError(f"expected {EXAMPLES[kind]}, got a boolean")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if not match:
            raise UnitError(f"cannot read {value!r} as a quantity; write it like {EXAMPLES[kind]}")
        number = float(match.group(1))
        unit = (match.group(2) or "").strip()
        if unit:
            factor = _scale(unit, kind)
            if factor is None:
                raise UnitError(
                    f"unit {unit!r} in {value!r} is not a unit of {kind}; "
                    f"write it like {EXAMPLES[kind]}"
                )
            number *= factor
    else:
        raise UnitError(f"expected {EXAMPLES[kind]}, got {type(value).__name__}")
    if not math.isfinite(number):
        raise UnitError(f"{value!r} is not a finite number")
    if number != 0 and abs(number) < sys.float_info.min:
        raise UnitError(f"{value!r} is too small to compute with (below {sys.float_info.min:g})")
    return number


def format_quantity(value: float, unit: str, digits: int = 3) -> str:
    """Human-readable SI form, e.g. format_quantity(8e12, 'B/s') -> '8 TB/s'."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g} {unit}"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    if unit == "s":
        for name, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
            if magnitude >= factor:
                return f"{sign}{magnitude / factor:.{digits}g} {name}"
        return f"{sign}{magnitude / 1e-9:.{digits}g} ns"
    for prefix in ("E", "P", "T", "G", "M", "k"):
        factor = _DECIMAL[prefix]
        if magnitude >= factor:
            return f"{sign}{magnitude / factor:.{digits}g} {prefix}{unit}"
    return f"{sign}{magnitude:.{digits}g} {unit}"
