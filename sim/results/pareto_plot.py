"""The compare command's picture: throughput per GPU against time per output token, one
style per design, the roofline frontier as a step line through the layouts on it (hollow
markers) and simulated layouts as filled markers.

Designs often coincide (same HBM bandwidth, same model that fits on one GPU), and their
curves then lie exactly on top of each other: each design gets its own style
(`plotting.series_styles`: a coinciding later design shows inside the earlier ones) and the
legend says which designs coincide ("frontier = hgx-b200").
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .plotting import coinciding, plain_log_ticks, same_as, series_styles  # noqa: E402


def pareto_figure(points: pd.DataFrame, slo: dict[str, float]):
    """The figure (not saved): one frontier and one set of simulated points per design."""
    points = points.reindex(columns=["hardware", "tpot_floor_s", "tokens_per_s_per_gpu",
                                     "confirmed"])
    points["confirmed"] = points["confirmed"].eq(True)   # missing: a roofline estimate
    designs = list(dict.fromkeys(points["hardware"]))
    frontiers, simulated = {}, {}
    for hw, g in points.groupby("hardware", sort=False):
        est = g[~g.confirmed].sort_values(["tpot_floor_s", "tokens_per_s_per_gpu"],
                                          ascending=[True, False])
        best = est.tokens_per_s_per_gpu.cummax()
        on = est[~best.duplicated()]   # the layouts that raise the best throughput
        if len(on):   # best throughput reachable at each latency: a step up at each layout
            frontiers[hw] = on[["tpot_floor_s", "tokens_per_s_per_gpu"]].to_numpy()
        conf = g[g.confirmed].sort_values("tpot_floor_s")
        if len(conf):
            simulated[hw] = conf[["tpot_floor_s", "tokens_per_s_per_gpu"]].to_numpy()
    frontier_groups, sim_groups = coinciding(frontiers), coinciding(simulated)
    same_frontier, same_sim = same_as(frontier_groups), same_as(sim_groups)
    styles = series_styles(designs, frontier_groups)
    sim_styles = series_styles(designs, sim_groups)

    fig, ax = plt.subplots(figsize=(9, 6), constrained_layout=True)
    if not designs:
        ax.text(0.5, 0.5, "no layout fits in memory", ha="center", transform=ax.transAxes)
    handles = []
    for hw in designs:
        st = styles[hw]
        if hw in frontiers:
            x, y = frontiers[hw].T
            ax.plot(x * 1e3, y, drawstyle="steps-post", mfc="none", markeredgewidth=1.5,
                    alpha=0.9, **st)
        if hw in simulated:
            x, y = simulated[hw].T
            ax.plot(x * 1e3, y, ls="none", color=st["color"], marker=st["marker"],
                    ms=sim_styles[hw]["markersize"] + 3, mec="black", mew=0.8, alpha=0.9)
        notes = [f"{what} = {same[hw]}" for what, same in (("frontier", same_frontier),
                                                          ("simulated", same_sim)) if hw in same]
        handles.append(Line2D([], [], mfc="none", label=hw + (f" ({'; '.join(notes)})"
                                                              if notes else ""), **st))
    handles += [Line2D([], [], color="grey", marker="o", mfc="none", label="roofline frontier "
                       "(layouts on it: hollow)"),
                Line2D([], [], color="grey", marker="o", ls="none", mec="black",
                       label="simulated (x: TPOT p99)")]
    if "tpot_p99" in slo:
        ax.axvline(slo["tpot_p99"] * 1e3, color="grey", ls=":")
        handles.append(Line2D([], [], color="grey", ls=":", label="TPOT p99 target"))
    ax.set(xscale="log", yscale="log", xlabel="time per output token (ms)",
           ylabel="output tokens/s per GPU", title="Throughput per GPU vs per-token latency")
    plain_log_ticks(ax.xaxis)
    plain_log_ticks(ax.yaxis)
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=handles, fontsize=8, loc="best")
    return fig


def plot_pareto(points: pd.DataFrame, path: Path, slo: dict[str, float]) -> Path:
    fig = pareto_figure(points, slo)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
