"""The lecture's roofline pictures: step time vs batch, cost per token vs batch, and cost per
token vs context length, with the compute / weight / KV components and the balance batch.

Where the KV cache no longer fits in HBM beside the weights (past the largest batch at the
scenario's context, or the largest context at its batch) each panel is shaded grey and
hatched, labelled "does not fit in HBM": the closed form still draws a curve there, but no
deployment runs it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..roofline import Rates, Roofline, cost_per_million, step_terms, tokens_per_s  # noqa: E402
from ..spec.scenario import Scenario  # noqa: E402
from .plotting import plain_log_ticks  # noqa: E402

NO_FIT = "does not fit in HBM"


def fitting_tokens(scenario: Scenario) -> float:
    """Sequences x context tokens one microbatch may hold with weights and KV in HBM on every
    GPU: the largest batch at context L is this / L, the largest context at batch B this / B
    (0 when the weights alone do not fit, inf when the model keeps no KV)."""
    lay = scenario.layout
    free = scenario.kv_capacity_tokens()
    return max(free, 0.0) / lay.n_microbatches


def shade_no_fit(ax, limit: float, right: float):
    """Grey hatched span from `limit` to `right` (nothing when all fits); returns the span."""
    if limit >= right:
        return None
    return ax.axvspan(limit, right, facecolor="0.88", edgecolor="0.55", hatch="//", lw=0,
                      zorder=0, label=NO_FIT)


def roofline_figure(scenario: Scenario, point: Roofline):
    """The three panels (not saved)."""
    m, hw, lay = scenario.model, scenario.hardware, scenario.layout
    rates = Rates.of(m, hw, lay)
    price = scenario.spec.price_per_gpu_hour
    tokens = fitting_tokens(scenario)
    max_batch = tokens / point.context_tokens if point.context_tokens > 0 else np.inf
    top = max(4 * point.balance_batch, 2 * point.batch, 16.0,
              3 * max_batch if np.isfinite(max_batch) else 0)
    batches = np.logspace(0, np.log10(top), 200)
    compute, weight, kv, step = step_terms(m, rates, batches, point.context_tokens)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    ax = axes[0]
    ax.loglog(batches, step * 1e3, "k-", lw=2.5, label="step = max(compute, weights + KV)")
    ax.loglog(batches, compute * 1e3, "--", label="compute")
    ax.loglog(batches, weight * 1e3, "--", label="weight fetch")
    ax.loglog(batches, np.maximum(kv, 1e-12) * 1e3, "--",
              label=f"KV fetch (L={point.context_tokens:.0f})")
    ax.axvline(point.balance_batch, color="grey", ls=":",
               label=f"balance batch {point.balance_batch:.0f}")
    ax.plot([point.batch], [point.step_time_s * 1e3], "ro",
            label=f"scenario batch {point.batch:.0f}")
    shade_no_fit(ax, max_batch, top)
    ax.set(xlabel="batch (sequences per microbatch)", ylabel="step time through all stages (ms)",
           title="Step time vs batch")
    ax.legend(fontsize=8)

    def cost_axis(tps):
        cost = cost_per_million(price, lay.total_gpus, tps)
        if cost is not None:
            return cost, "$ per million output tokens"
        return lay.total_gpus / np.asarray(tps) * 1e6, "GPU-seconds per million output tokens"

    ax = axes[1]
    c_step, label = cost_axis(tokens_per_s(m, lay, batches, step))
    ax.loglog(batches, c_step, "k-", lw=2.5, label="total")
    for part, name in ((compute, "compute floor"), (weight, "weight fetch"),
                       (np.maximum(kv, 1e-12), "KV fetch")):
        c, _ = cost_axis(tokens_per_s(m, lay, batches, part))
        ax.loglog(batches, c, "--", label=name)
    ax.axvline(point.balance_batch, color="grey", ls=":")
    shade_no_fit(ax, max_batch, top)
    ax.set(xlabel="batch (sequences per microbatch)", ylabel=label, title="Cost per token vs batch")
    ax.legend(fontsize=8)

    ax = axes[2]
    max_context = tokens / point.batch
    right = max(1e6, min(3 * max_context, 1e8))   # past the largest context that fits
    contexts = np.logspace(2, np.log10(right), 200)
    _, _, _, step_l = step_terms(m, rates, point.batch, contexts)
    c_ctx, label = cost_axis(tokens_per_s(m, lay, point.batch, step_l))
    ax.loglog(contexts, c_ctx, "k-", lw=2.5)
    ax.axvline(point.context_tokens, color="r", ls=":",
               label=f"scenario context {point.context_tokens:.0f}")
    shade_no_fit(ax, max_context, right)
    ax.set(xlabel="context tokens per sequence", ylabel=label,
           title=f"Cost per token vs context (batch {point.batch:.0f})")
    ax.legend(fontsize=8)
    for ax in axes:
        for axis in (ax.xaxis, ax.yaxis):
            plain_log_ticks(axis)
    fig.suptitle(f"{m.name} on {scenario.racks} x {hw.name}: {lay.describe()}")
    return fig


def plot_roofline(scenario: Scenario, point: Roofline, path: str | Path) -> Path:
    fig = roofline_figure(scenario, point)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
