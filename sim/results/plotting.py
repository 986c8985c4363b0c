"""What racksim's pictures share: readable log axes, and styles that keep coinciding
curves apart (each series its own colour, marker and line style; within a group of
coinciding series the earlier ones drawn wider and larger, so the later ones show inside)."""

from __future__ import annotations

import math

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import ticker  # noqa: E402


def short_number(v: float) -> str:
    """0.005, 20, 1k, 50k, 2M: a tick label that stays short."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:.3g}"


def plain_log_ticks(axis) -> None:
    """Log-axis tick labels as plain short numbers (0.5, 20, 1k) rather than 10^k: at each
    power of ten, and at 2 and 5 times it too when the axis spans at most three decades
    (more would run into each other). Call after the scale is set to log."""
    def between(v: float, _pos) -> str:
        lo, hi = axis.get_view_interval()
        return short_number(v) if math.log10(hi / lo) <= 3 else ""

    axis.set_major_locator(ticker.LogLocator())
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: short_number(v)))
    axis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
    axis.set_minor_formatter(ticker.FuncFormatter(between))


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
SAME = 0.01   # series within 1% everywhere are drawn on top of each other


def coinciding(curves: dict[str, np.ndarray], rtol: float = SAME) -> list[list[str]]:
    """Groups of two or more series whose points (equal-shaped arrays) agree within
    `rtol`, in the order given; such series hide each other when drawn."""
    groups: list[list[str]] = []
    for name, xy in curves.items():
        for g in groups:
            ref = curves[g[0]]
            if ref.shape == xy.shape and np.allclose(ref, xy, rtol=rtol, atol=0,
                                                     equal_nan=True):
                g.append(name)
                break
        else:
            groups.append([name])
    return [g for g in groups if len(g) > 1]


def same_as(groups: list[list[str]]) -> dict[str, str]:
    """Each coinciding series but the first of its group -> the first (for legend notes)."""
    return {d: g[0] for g in groups for d in g[1:]}


def series_styles(names: list[str], groups: list[list[str]] = ()) -> dict[str, dict]:
    """Line2D keywords per series: colour, marker and line style all differ between any two
    of the first 32 series; within each group of `coinciding` series the earlier ones are
    wider with larger markers."""
    below = {d: len(g) - 1 - k for g in groups for k, d in enumerate(g)}
    return {d: {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)],
                "linestyle": LINESTYLES[(i + i // len(MARKERS)) % len(LINESTYLES)],
                "linewidth": 1.5 + 1.5 * below.get(d, 0),
                "markersize": 6 + 3.5 * below.get(d, 0)}
            for i, d in enumerate(names)}
