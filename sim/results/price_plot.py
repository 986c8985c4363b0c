"""compare's priced frontier (issue 23; docs/cost.md): $ per million output tokens against
tokens/s per user, one curve per design. Serving each user faster means smaller batches, so
each token costs more: the curve is the price of speed. The frontier at a speed is the
cheapest layout that serves at least that speed (closed-form layouts priced at full load);
simulated layouts are filled markers; the SLO's time per output token is a vertical line."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .plotting import plain_log_ticks, series_styles  # noqa: E402


def frontier(speed: np.ndarray, price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest price at which at least each speed is served: (speeds ascending, prices
    non-decreasing), one point per speed where the cheapest changes."""
    ok = np.isfinite(speed) & np.isfinite(price) & (speed > 0) & (price > 0)
    s, p = np.asarray(speed, float)[ok], np.asarray(price, float)[ok]
    if not len(s):
        return s, p
    order = np.argsort(-s, kind="stable")          # fastest first
    cheapest = np.minimum.accumulate(p[order])     # cheapest at this speed or faster
    desc = s[order]
    # each distinct speed: the cheapest over every point at least that fast (the last of its
    # run in the fastest-first order, where all of them have been seen)
    last = np.r_[desc[1:] != desc[:-1], True]
    sp, c = desc[last][::-1], cheapest[last][::-1]   # ascending speed
    keep = np.r_[True, c[1:] != c[:-1]]
    return sp[keep], c[keep]


def price_figure(points: pd.DataFrame, slo: dict[str, float]):
    """points: hardware, tokens_per_s_per_user, usd_per_million_output_tokens, confirmed."""
    points = points.reindex(columns=["hardware", "tokens_per_s_per_user",
                                     "usd_per_million_output_tokens", "confirmed"])
    points["confirmed"] = points["confirmed"].eq(True)
    designs = list(dict.fromkeys(points["hardware"]))
    styles = series_styles(designs, [[d] for d in designs])
    fig, ax = plt.subplots(figsize=(9, 6), constrained_layout=True)
    drawn = False
    for hw in designs:
        g = points[points.hardware == hw]
        st = styles[hw]
        est = g[~g.confirmed]
        x, y = frontier(est.tokens_per_s_per_user.to_numpy(float),
                        est.usd_per_million_output_tokens.to_numpy(float))
        if len(x):
            ax.plot(x, y, drawstyle="steps-pre", label=f"{hw} (closed form, full load)",
                    **{k: v for k, v in st.items() if k != "markersize"})
            drawn = True
        sim = g[g.confirmed].dropna(subset=["usd_per_million_output_tokens"])
        if len(sim):
            ax.plot(sim.tokens_per_s_per_user, sim.usd_per_million_output_tokens, ls="none",
                    marker=st["marker"], color=st["color"], ms=9, mec="black", mew=0.8,
                    label=f"{hw} (simulated at capacity)")
            drawn = True
    tpot = slo.get("tpot_p99") or slo.get("tpot_p50")
    if tpot:
        ax.axvline(1.0 / tpot, color="0.3", ls=":", lw=1.2)
        ax.annotate(f"SLO: at least {1.0 / tpot:.3g} tokens/s per user", (1.0 / tpot, 0.02),
                    xycoords=("data", "axes fraction"), xytext=(4, 0),
                    textcoords="offset points", fontsize=9, color="0.3")
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log_ticks(ax.xaxis)
        plain_log_ticks(ax.yaxis)
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no design is priced (no cost: in the hardware files, no "
                "price_per_gpu_hour)", ha="center", transform=ax.transAxes)
    ax.set(xlabel="output tokens/s per user (1 / time per output token)",
           ylabel="$ per million output tokens",
           title="The price of speed: cheapest layout serving each speed, per design")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_price(points: pd.DataFrame, path: Path, slo: dict[str, float]) -> None:
    fig = price_figure(points, slo)
    fig.savefig(path, dpi=110)
    plt.close(fig)
