"""A run's pictures: latency CDFs, the pipeline timeline with its bubbles, and link
utilisation over time per tier with a per-link heat map."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..engine.simulation import EngineResult  # noqa: E402
from ..spec.units import format_quantity as fq  # noqa: E402
from .plotting import plain_log_ticks  # noqa: E402
from .tables import Tables, binned_mean  # noqa: E402

LATENCIES = (("queue_wait_s", "queue wait"), ("ttft_s", "time to first token"),
             ("tpot_s", "time per output token"), ("e2e_s", "end to end"))
TIMELINE_STEPS = 8   # steps per stage drawn in the timeline
STEPS_PER_BIN = 10   # throughput overlay: bins hold this many steps on average (no aliasing)


def _no_data(ax, text="no data"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def plot_latency_cdf(res: EngineResult, tables: Tables, path: Path) -> Path:
    req = tables.requests
    ok = req[(req["status"] == "completed") & (req["arrival_s"] >= res.window[0])]
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    drawn = False
    for col, label in LATENCIES:
        x = np.sort(ok[col].dropna().to_numpy())
        x = x[x > 0]
        if len(x) == 0:
            continue
        y = np.arange(1, len(x) + 1) / len(x)
        p50, p99 = np.percentile(x, [50, 99])
        ax.step(x * 1e3, y, where="post", label=f"{label}: p50 {fq(p50, 's')}, p99 {fq(p99, 's')}")
        drawn = True
    if drawn:
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
        ax.legend(fontsize=8, loc="lower right")
    else:
        _no_data(ax, "no completed requests after warm-up")
    ax.set(xlabel="latency (ms)", ylabel="fraction of requests",
           title=f"Latency distributions ({len(ok)} requests after warm-up)")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_timeline(res: EngineResult, tables: Tables, path: Path) -> Path:
    st = res.stage_steps
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.45 * res.placement.gpus[:, :, 0].size),
                           constrained_layout=True)
    start = np.asarray(st["start"])
    after = start >= res.window[0]
    if not after.any():
        _no_data(ax)
    else:
        t0 = start[after].min()
        first = np.asarray(st["stage"]) == 0
        starts0 = np.sort(start[after & first & (np.asarray(st["replica"]) == 0)])
        t1 = starts0[min(TIMELINE_STEPS, len(starts0) - 1)] if len(starts0) > 1 else \
            np.asarray(st["end"])[after].max()
        rows = []
        for r in range(res.placement.replicas):
            for s in range(res.placement.stages):
                rows.append((r, s))
        for k, (r, s) in enumerate(rows):
            m = (np.asarray(st["replica"]) == r) & (np.asarray(st["stage"]) == s) & \
                (start >= t0) & (start <= t1)
            for a, b, mb in zip(start[m], np.asarray(st["end"])[m],
                                np.asarray(st["microbatch"])[m]):
                ax.barh(k, (b - a) * 1e3, left=(a - t0) * 1e3, color=f"C{int(mb) % 10}",
                        edgecolor="black", linewidth=0.3)
        ax.set_yticks(range(len(rows)), [f"replica {r} stage {s}" for r, s in rows])
        ax.invert_yaxis()
        n_mb = int(np.asarray(st["microbatch"]).max()) + 1
        handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{j}") for j in range(min(n_mb, 10))]
        ax.legend(handles, [f"microbatch {j}" for j in range(len(handles))], fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.01, 1))   # beside the bars, not on them
    ax.set(xlabel="time after the first step shown (ms)",
           title=f"Pipeline timeline (gaps are bubbles; bubble fraction "
                 f"{tables.summary['bubble_fraction']:.3f})")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_links(res: EngineResult, tables: Tables, path: Path) -> Path:
    ls, links = tables.link_series, tables.links
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 7), constrained_layout=True,
                                 gridspec_kw={"height_ratios": [2, 1]})
    tiers = [c for c in ls.columns if c != "time_s"]
    t0, t1 = res.window
    if len(ls) and t1 > t0:
        edges = np.linspace(t0, t1, 201)
        t = ls["time_s"].to_numpy()
        for tier in tiers:
            a1.plot(edges[:-1], binned_mean(t, ls[tier].to_numpy(), edges),
                    drawstyle="steps-post", label=tier)
        if res.faults is not None:
            _fault_overlay(a1, res, tables, edges)
        a1.legend(fontsize=8, loc="upper left")
    else:
        _no_data(a1)
    a1.set(xlabel="time (s)", ylabel="mean utilisation of the tier's links",
           title=f"Link utilisation over time (averaged over {(t1 - t0) / 200 * 1e3:.3g} ms "
                 "bins)", ylim=(-0.02, 1.05))   # a tier at zero shows above the axis
    grid = []
    names = []
    for tier in ("scale_up", "scale_out"):
        u = links.loc[links["tier"] == tier, "mean_utilisation"].to_numpy()
        if len(u):
            grid.append(u)
            names.append(tier)
    title = "Mean utilisation per link"
    if grid:
        width = max(len(g) for g in grid)
        img = np.full((len(grid), width), np.nan)
        for i, g in enumerate(grid):
            img[i, :len(g)] = g
        top = max(float(np.nanmax(img)), 0.01)   # colours span the busiest link, not 0..1
        cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
        im = a2.imshow(img, aspect="auto", vmin=0, vmax=top, cmap=cmap,
                       interpolation="nearest")
        a2.set_yticks(range(len(names)), names)
        fig.colorbar(im, ax=a2, label="mean utilisation")
        title += f" (colour scale 0 to the busiest link, {top:.2f}" + (
            "; grey: no such link)" if np.isnan(img).any() else ")")
    else:
        _no_data(a2)
    a2.set(xlabel="link (in cluster order)", title=title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fault_overlay(ax, res: EngineResult, tables: Tables, edges: np.ndarray) -> None:
    """Fault windows shaded, replica stops marked, and output tokens/s on a second axis (a
    throughput dip shows under the window)."""
    t0, t1 = edges[0], edges[-1]
    for k, rec in enumerate(res.faults.records):
        end = rec.end if rec.end is not None else t1
        if end > t0 and rec.start < t1:
            ax.axvspan(max(rec.start, t0), min(end, t1), color=f"C{(k + 3) % 10}", alpha=0.15,
                       label=f"fault {rec.index}: {rec.kind}")
    for st in res.faults.stops:
        if t0 <= st.time <= t1:
            ax.axvline(st.time, color="red", linewidth=1)
    steps = tables.steps
    if len(steps) and "output_tokens" in steps:
        inside = int(((steps["end"] >= t0) & (steps["end"] < t1)).sum())
        bins = np.linspace(t0, t1, int(np.clip(inside // STEPS_PER_BIN, 1, len(edges) - 1)) + 1)
        produced, _ = np.histogram(steps["end"], bins=bins, weights=steps["output_tokens"])
        tw = ax.twinx()
        rate = produced / np.diff(bins)
        tw.plot(bins, np.append(rate, rate[-1]), color="black", linewidth=0.8,
                drawstyle="steps-post", label="output tokens/s")
        tw.set_ylabel(f"output tokens/s (black; {(bins[1] - t0) * 1e3:.3g} ms bins)")
        tw.set_ylim(bottom=0)


def plot_run(res: EngineResult, tables: Tables, out_dir: Path, fmt: str = "png"
             ) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_latency_cdf(res, tables, out_dir / f"latency_cdf.{fmt}"),
            plot_timeline(res, tables, out_dir / f"pipeline_timeline.{fmt}"),
            plot_links(res, tables, out_dir / f"link_utilisation.{fmt}")]
