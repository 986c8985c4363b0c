"""`racksim report DIR`: one self-contained HTML page (plots embedded) from a run folder or a
sweep folder, built from the files on disk only (nothing is simulated again)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..spec.errors import SpecError  # noqa: E402
from .write import atomic_write  # noqa: E402

CATEGORIES = ("compute", "memory", "network", "bubble", "idle")
SWEEP_METRICS = ("tokens_per_s_per_gpu", "output_tokens_per_s", "ttft_s.p99", "tpot_s.p99",
                 "queue_wait_s.p99", "bubble_fraction", "cost_per_million_tokens",
                 "tokens_per_s", "step_time_s")
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
        ax.barh(labels, frac[f"{c}_s"], left=left, color=f"C{i}", label=c)
        left += frac[f"{c}_s"]
    ax.set(xlim=(0, 1), xlabel="share of the window", title="GPU time by stage (mean over GPUs)")
    ax.legend(ncol=5, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.08))
    ax.invert_yaxis()
    return fig


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
    parts.append('<div class="cards">' + "".join(
        f'<div class="card">{html.escape(k)}<b>{_fmt(v)}</b></div>' for k, v in cards) + "</div>")
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


def _sweep_page(folder: Path) -> str:
    df = pd.read_parquet(folder / "results.parquet")
    params = list(df.columns[:list(df.columns).index("point")])
    metrics = [m for m in SWEEP_METRICS if m in df.columns]
    ok = df[df["status"] == "ok"]
    parts = [f"<h1>Sweep: {len(df)} points</h1>",
             "<p>" + ", ".join(f"{k}: {v}" for k, v in df["status"].value_counts().items())
             + "</p>"]
    for p in params:
        if ok[p].nunique() < 2 or not metrics:
            continue
        n = len(metrics)
        fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), constrained_layout=True,
                                 squeeze=False)
        numeric = pd.api.types.is_numeric_dtype(ok[p])
        x = ok[p] if numeric else ok[p].astype(str)
        for ax, m in zip(axes[0], metrics):
            means = ok.groupby(x)[m].mean().sort_index()
            ax.plot(means.index if numeric else [str(v) for v in means.index], means.values,
                    "o-")
            ax.set_title(m, fontsize=9)
            ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        fig.suptitle(f"metrics vs {p} (mean over the other parameters)")
        parts.append(f"<h2>{html.escape(p)}</h2>" + _fig_tag(fig, f"metrics vs {p}"))
    show = df[params + ["status"] + metrics + ["reason"]].assign(
        reason=df["reason"].fillna(""))
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
