"""`racksim report DIR`: one self-contained HTML page (plots embedded) from a run folder or a
sweep folder, built from the files on disk only (nothing is simulated again).

A sweep gets one figure per swept parameter: a grid of panels (three across, two for four),
one per metric with data (the others are listed), the parameter along x (ticks at the swept
values; long text values numbered, with a key under the figure), one line per combination of
the other swept parameters (or, past `MAX_LINES` combinations, their mean in a min-max band),
coinciding lines kept apart as in `plotting.series_styles`, one legend for the whole figure.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import numbers
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..spec.errors import SpecError  # noqa: E402
from .plotting import coinciding, same_as, series_styles  # noqa: E402
from .write import atomic_write  # noqa: E402

CATEGORIES = ("compute", "memory", "network", "bubble", "idle")
SWEEP_METRICS = {"tokens_per_s_per_gpu": "tokens/s per GPU",
                 "output_tokens_per_s": "output tokens/s", "ttft_s.p99": "TTFT p99 (s)",
                 "tpot_s.p99": "TPOT p99 (s)", "queue_wait_s.p99": "queue wait p99 (s)",
                 "bubble_fraction": "bubble fraction",
                 "cost_per_million_tokens": "$ per million tokens",
                 "tokens_per_s": "tokens/s", "step_time_s": "step time (s)"}
PANEL_COLUMNS = 3
MAX_LINES = 6    # more combinations of the other parameters: their mean and min-max band
LONG_LABEL = 14  # categorical values longer than this become numbered ticks with a key
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}img{max-width:100%;margin:.5em 0}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{border:1px solid #ddd;border-radius:6px;
padding:.6em 1em;min-width:10em}.card b{display:block;font-size:1.3em}"""


def _img_tag(data: bytes, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(data).decode()}">')


def _fig_tag(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return _img_tag(buf.getvalue(), alt)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.4g}"
    return html.escape(str(v))


def _gpu_breakdown(gpus: pd.DataFrame):
    used = gpus[gpus["role"] == "serving"]
    fig, ax = plt.subplots(figsize=(10, 3.5), constrained_layout=True)
    if len(used) == 0:
        ax.text(0.5, 0.5, "no GPUs in use", ha="center", transform=ax.transAxes)
        return fig
    by = used.groupby(["replica", "stage"])[[f"{c}_s" for c in CATEGORIES]].mean()
    total = by.sum(axis=1)
    frac = by.div(total, axis=0)
    left = pd.Series(0.0, index=frac.index)
    labels = [f"replica {r} stage {s}" for r, s in frac.index]
    for i, c in enumerate(CATEGORIES):
        bars = ax.barh(labels, frac[f"{c}_s"], left=left, color=f"C{i}", label=c)
        ax.bar_label(bars, [f"{v:.0%}" if v >= 0.05 else "" for v in frac[f"{c}_s"]],
                     label_type="center", fontsize=8, color="white")
        left += frac[f"{c}_s"]
    ax.set(xlim=(0, 1), xlabel="share of the window", title="GPU time by stage (mean over GPUs)")
    ax.legend(ncol=5, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.08))
    ax.invert_yaxis()
    return fig


def _load_section(sm: dict) -> str:
    """Whether the deployment kept up (results/load.py), what the percentiles cover, and the
    run's warnings; summaries from before the verdict have none of it."""
    load = sm.get("load")
    if load is None:
        return ""
    colour = "#b00020" if sm.get("overloaded") else "#1b5e20"
    out = [f'<h2>Load</h2><p style="color:{colour}"><b>{html.escape(load["text"])}</b></p>']
    if load.get("reasons"):
        out.append("<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in load["reasons"])
                   + "</ul>")
    cov = sm.get("latency_coverage") or {}
    if cov.get("text"):
        out.append(f"<p>Latency percentiles: {html.escape(cov['text'])}.</p>")
    for w in sm.get("warnings") or []:
        out.append(f"<p><b>Warning:</b> {html.escape(w)}</p>")
    return "".join(out)


def _run_page(folder: Path) -> str:
    sm = json.loads((folder / "summary.json").read_text())
    parts = [f"<h1>{html.escape(sm.get('name') or sm.get('scenario', 'run'))}</h1>",
             f"<p>{html.escape(str(sm.get('model')))} on {sm.get('racks')} x "
             f"{html.escape(str(sm.get('hardware')))}, layout "
             f"{html.escape(json.dumps(sm.get('layout')))}; window {sm.get('window_s')} s</p>"]
    cards = [("output tokens/s", sm["output_tokens_per_s"]),
             ("tokens/s per GPU", sm["tokens_per_s_per_gpu"]),
             ("TTFT p99 (s)", sm["ttft_s"]["p99"]), ("TPOT p99 (s)", sm["tpot_s"]["p99"]),
             ("requests completed", sm["requests_completed"]),
             ("requests dropped", sm["requests_dropped"]),
             ("bubble fraction", sm["bubble_fraction"]),
             ("$ per million tokens", sm["cost_per_million_tokens"])]
    money = sm.get("cost") or {}
    if money:
        cards += [("$ per hour", money.get("usd_per_hour")),
                  ("IT power (kW)", money.get("power_kw")),
                  ("output tokens/s per MW", money.get("output_tokens_per_s_per_mw"))]
    parts.append('<div class="cards">' + "".join(
        f'<div class="card">{html.escape(k)}<b>{_fmt(v)}</b></div>' for k, v in cards) + "</div>")
    parts.append(_load_section(sm))
    rows = []
    for key in ("queue_wait_s", "ttft_s", "tpot_s", "e2e_s", "step_time_s"):
        d = sm[key]
        rows.append(f"<tr><th>{key}</th>" + "".join(f"<td>{_fmt(d.get(q))}</td>" for q in
                                                    ("p50", "p90", "p99", "mean")) + "</tr>")
    parts.append("<h2>Latency</h2><table><tr><th></th><th>p50</th><th>p90</th><th>p99</th>"
                 "<th>mean</th></tr>" + "".join(rows) + "</table>")
    for name, title in (("latency_cdf.png", "Latency distributions"),
                        ("pipeline_timeline.png", "Pipeline timeline and bubbles"),
                        ("link_utilisation.png", "Link utilisation")):
        if (folder / name).exists():
            parts.append(f"<h2>{title}</h2>" + _img_tag((folder / name).read_bytes(), title))
    if (folder / "gpus.csv").exists():
        parts.append("<h2>GPU time breakdown</h2>"
                     + _fig_tag(_gpu_breakdown(pd.read_csv(folder / "gpus.csv")), "GPU time"))
    lu = sm["link_utilisation"]
    parts.append("<h2>Links by tier</h2><table><tr><th>tier</th><th>mean</th><th>peak</th>"
                 "<th>saturated fraction</th></tr>" + "".join(
                     f"<tr><th>{t}</th><td>{_fmt(v['mean'])}</td><td>{_fmt(v['peak'])}</td>"
                     f"<td>{_fmt(v['saturated_fraction'])}</td></tr>" for t, v in lu.items())
                 + "</table>")
    return "".join(parts)


def _label(v) -> str:
    """A swept value as given: 1,024, 0.25, or the text."""
    if isinstance(v, numbers.Number) and not isinstance(v, bool):
        return f"{v:,.0f}" if float(v).is_integer() else f"{v:g}"
    return str(v)


def _sweep_figure(ok: pd.DataFrame, p: str, others: list[str], metrics: list[str]):
    """Metrics against parameter `p` (see the module docstring); returns the figure and the
    key of numbered x ticks (empty when the values are short enough to print)."""
    values = list(dict.fromkeys(ok[p]))
    numeric = pd.api.types.is_numeric_dtype(ok[p])
    if numeric:
        values.sort()
    key = {} if max(len(_label(v)) for v in values) <= LONG_LABEL else \
        {v: str(i + 1) for i, v in enumerate(values)}
    x = [v if numeric else i for i, v in enumerate(values)]
    groups = list(ok.groupby(others, sort=True, dropna=False)) if others else [((), ok)]
    if len(groups) > MAX_LINES:   # one line: the mean, in a band from min to max
        by = ok.groupby(p)[metrics]
        series = {"mean over " + ", ".join(others): by.mean().reindex(values)}
        band = (by.min().reindex(values), by.max().reindex(values))
    else:                         # one line per combination of the other parameters
        series = {", ".join(f"{o} = {_label(c)}" for o, c in zip(others, combo)) or p:
                  g.groupby(p)[metrics].mean().reindex(values)
                  for combo, g in ((c if isinstance(c, tuple) else (c,), g) for c, g in groups)}
        band = None
    together = coinciding({k: v.to_numpy(float) for k, v in series.items()})
    styles, same = series_styles(list(series), together), same_as(together)
    n_cols = 2 if len(metrics) == 4 else min(len(metrics), PANEL_COLUMNS)
    n_rows = math.ceil(len(metrics) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.8 * n_cols, 2.9 * n_rows + 0.8),
                             constrained_layout=True, squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.remove()
    for ax, m in zip(axes.flat, metrics):
        if band is not None:
            ax.fill_between(x, band[0][m], band[1][m], color="C0", alpha=0.25,
                            label="min to max")
        for name, table in series.items():
            ax.plot(x, table[m], label=name + (f" (= {same[name]})" if name in same else ""),
                    **styles[name])
        ax.set_title(SWEEP_METRICS[m], fontsize=10)
        if numeric and min(values) > 0 and max(values) >= 8 * min(values):
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xticks(x, [key.get(v) or _label(v) for v in values])
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.supxlabel(p + (" (numbered: see the key below)" if key else ""), fontsize=10)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if len(labels) > 1:
        fig.legend(handles, labels, loc="outside upper center", fontsize=8,
                   ncols=1 if max(map(len, labels)) > 40 else min(len(labels), 3))
    return fig, key


def _sweep_page(folder: Path) -> str:
    df = pd.read_parquet(folder / "results.parquet")
    params = list(df.columns[:list(df.columns).index("point")])
    ok = df[df["status"] == "ok"]
    metrics = [m for m in SWEEP_METRICS if m in df.columns and ok[m].notna().any()]
    empty = [m for m in SWEEP_METRICS if m in df.columns and m not in metrics]
    swept = [p for p in params if ok[p].nunique() > 1]
    parts = [f"<h1>Sweep: {len(df)} points</h1>",
             "<p>" + ", ".join(f"{k}: {v}" for k, v in df["status"].value_counts().items())
             + "</p>"]
    if empty and swept:
        parts.append(f"<p>no values (e.g. no request completed after warm-up), not drawn: "
                     f"{html.escape(', '.join(empty))}</p>")
    for p in swept if metrics else []:
        fig, key = _sweep_figure(ok, p, [q for q in swept if q != p], metrics)
        parts.append(f"<h2>{html.escape(p)}</h2>" + _fig_tag(fig, f"metrics vs {p}"))
        if key:
            parts.append("<p>" + "<br>".join(f"{i} = {html.escape(str(v))}"
                                             for v, i in key.items()) + "</p>")
    show = df[params + ["status"] + [m for m in SWEEP_METRICS if m in df] + ["reason"]]
    show = show.assign(reason=df["reason"].fillna(""))
    parts.append("<h2>All points</h2>" + show.to_html(index=False, na_rep="", float_format=
                                                      lambda v: f"{v:,.4g}"))
    return "".join(parts)


def build_report(folder: str | Path, out: str | Path | None = None) -> Path:
    folder = Path(folder)
    if (folder / "summary.json").exists():
        body = _run_page(folder)
    elif (folder / "results.parquet").exists():
        body = _sweep_page(folder)
    else:
        raise SpecError("neither a run folder (summary.json) nor a sweep folder "
                        "(results.parquet)", file=str(folder),
                        fix="pass the --out folder of `racksim run` or `racksim sweep`")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>racksim report</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")
    path = Path(out) if out else folder / "report.html"
    return atomic_write(path, lambda p: p.write_text(page, encoding="utf-8"))
