"""Command line: argument parsing and printing only; modelling lives elsewhere.

A user's mistake (any RacksimError) prints one paragraph on stderr and exits with status 2,
never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import roofline as rf
from .results.console import Table, stdout_console
from .spec import RacksimError, list_presets, load_hardware, load_model, load_scenario
from .spec.cost import HOURS_PER_YEAR
from .spec.scenario import scenario_json_schema
from .spec.units import format_quantity as fq

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="racksim: discrete-event simulator of multi-rack LLM inference clusters")
show_app = typer.Typer(no_args_is_help=True, help="Show presets and what racksim derives from them.")
app.add_typer(show_app, name="show")
out = stdout_console()   # never cuts a cell: wide off a terminal, folds on one
err = Console(stderr=True)

Scenario_ = Annotated[Path, typer.Argument(help="scenario YAML file")]
Json_ = Annotated[bool, typer.Option("--json", help="print one JSON document instead of tables")]


def _echo_json(doc) -> None:
    typer.echo(json.dumps(doc, indent=2))


def _roofline_table(r: rf.Roofline, title: str) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    rows = [
        ("batch (sequences per microbatch)", f"{r.batch:,.0f}"),
        ("context tokens", f"{r.context_tokens:,.0f}"),
        ("GPUs (stage x stages x replicas)", f"{r.gpus} ({r.stage_gpus} x {r.stages} x "
                                             f"{r.gpus // (r.stage_gpus * r.stages)})"),
        ("microbatches in flight", f"{r.microbatches}"),
        ("matmul precision", r.compute_precision or "as given"),
        ("compute time", fq(r.compute_time_s, "s")),
        ("weight-fetch time", fq(r.weight_time_s, "s")),
        ("KV-fetch time", fq(r.kv_time_s, "s")),
        ("step time (bound)", f"{fq(r.step_time_s, 's')} ({r.bound})"),
        ("balance batch", f"{r.balance_batch:,.0f}"),
        ("output tokens/s", f"{r.tokens_per_s:,.0f}"),
        ("tokens/s per GPU", f"{r.tokens_per_s_per_gpu:,.1f}"),
        ("memory per GPU", f"{fq(r.memory_per_gpu_bytes, 'B')} of "
                           f"{fq(r.hbm_bytes_per_gpu, 'B')} ({'fits' if r.fits else 'DOES NOT FIT'})"),
        ("$ per million tokens", "n/a (no price_per_gpu_hour, no cost: in the hardware file)" if r.cost_per_million_tokens is None
         else f"${r.cost_per_million_tokens:,.3f}"),
    ]
    if r.communication_time_s is None:
        rows.append(("communication", "not counted (compute and memory only)"))
    else:
        rows += [
            ("engine's op timing: ops per step", fq(r.op_time_s, "s")),
            ("communication per step (uncontended)", fq(r.communication_time_s, "s")),
            ("step time (ops + communication)", fq(r.step_time_estimate_s, "s")),
            ("output tokens/s (ops + communication)",
             f"{r.tokens_per_s_estimate:,.0f} ({r.tokens_per_s_per_gpu_estimate:,.1f} per GPU)"),
        ]
    for k, v in rows:
        t.add_row(k, v)
    return t


@app.command()
def roofline(
    scenario: Scenario_,
    batch: Annotated[Optional[float], typer.Option(help="sequences per microbatch")] = None,
    context: Annotated[Optional[float], typer.Option(help="context tokens per sequence")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print results-format JSON")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="write the roofline pictures (PNG/SVG)")] = None,
):
    """Closed-form roofline of the scenario's layout (domain.md sections 1 and 4), and the
    same decode step as the engine times it: its ops by the engine's op timing plus its
    collectives, each alone on its links (no contention, no queueing: still a bound;
    `racksim capacity` simulates what the deployment sustains)."""
    if batch is not None and batch <= 0:
        raise typer.BadParameter("must be positive", param_hint="--batch")
    if context is not None and context < 0:
        raise typer.BadParameter("must not be negative", param_hint="--context")
    from .estimate import engine_view  # noqa: PLC0415

    s = load_scenario(scenario)
    r = engine_view(s, rf.for_scenario(s, batch=batch, context=context))
    if plot is not None:
        from .results.roofline_plot import plot_roofline  # noqa: PLC0415 - matplotlib is slow
        plot_roofline(s, r, plot)
    if as_json:
        typer.echo(json.dumps(r.to_json(), indent=2))
        return
    out.print(_roofline_table(r, f"Roofline: {s.spec.name or s.file}"))
    if plot is not None:
        out.print(f"pictures written to {plot}")


class _LazyProgress:
    """A progress bar that appears only when a run lasts more than a couple of seconds. Off a
    terminal (a log file, CI) it prints a plain line instead, at most every `LOG_EVERY_S`."""

    LOG_EVERY_S = 10.0

    def __init__(self, label: str, after_s: float = 2.0):
        import time  # noqa: PLC0415

        self._clock = time.perf_counter
        self._t0 = self._clock()
        self._after = after_s
        self._label = label
        self._bar = None
        self._task = None
        self._logged = None   # wall time of the last plain line

    def __call__(self, done: float, total: float) -> None:
        now = self._clock()
        if now - self._t0 < self._after:
            return
        if not err.is_terminal:
            if self._logged is None or now - self._logged >= self.LOG_EVERY_S:
                self._logged = now
                err.print(f"{self._label}: {done:.2f} of {total:g} s simulated",
                          markup=False, highlight=False, soft_wrap=True)
            return
        if self._bar is None:
            from rich.progress import (BarColumn, Progress, TextColumn,  # noqa: PLC0415
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[sim]}"), TimeRemainingColumn(),
                                 console=err, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self._label, total=total, sim="")
        self._bar.update(self._task, completed=done, sim=f"{done:.2f} / {total:g} s simulated")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _summary_table(sm: dict) -> Table:
    def dist(d, unit="s"):
        if not d or d.get("p50") is None:
            return "n/a"
        return f"{fq(d['p50'], unit)} / {fq(d['p90'], unit)} / {fq(d['p99'], unit)}"

    t = Table(title=sm["name"] or sm["scenario"], show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    lu = sm["link_utilisation"]
    g = sm["gpu_time_fraction"]
    load = sm["load"]
    rows = [
        ("load", ("[bold red]OVERLOADED[/]: " if sm["overloaded"] else "")
         + load["text"].replace(": overloaded", "")),
        *([("why overloaded", "; ".join(load["reasons"]))] if sm["overloaded"] else []),
        ("requests done / dropped / in flight",
         f"{sm['requests_completed']:,} / {sm['requests_dropped']:,} / "
         f"{sm['requests_in_flight']:,}"),
        ("percentiles cover", sm["latency_coverage"]["text"]),
        ("output tokens/s (per GPU)",
         f"{sm['output_tokens_per_s']:,.0f} ({sm['tokens_per_s_per_gpu']:,.1f})"),
        ("input tokens/s", f"{sm['input_tokens_per_s']:,.0f}"),
        ("queue wait p50/p90/p99", dist(sm["queue_wait_s"])),
        ("TTFT p50/p90/p99", dist(sm["ttft_s"])),
        ("TPOT p50/p90/p99", dist(sm["tpot_s"])),
        ("end to end p50/p90/p99", dist(sm["e2e_s"])),
        ("decode step p50/p90/p99", dist(sm["step_time_s"])),
        ("pipeline bubble fraction", f"{sm['bubble_fraction']:.3f}"),
        ("GPU time cmp/mem/net/bub/idle",
         " / ".join(f"{g[k]:.2f}" for k in ("compute", "memory", "network", "bubble", "idle"))),
        ("scale-up mean/peak/saturated",
         f"{lu['scale_up']['mean']:.2f} / {lu['scale_up']['peak']:.2f} / "
         f"{lu['scale_up']['saturated_fraction']:.2f}"),
        ("scale-out mean/peak/saturated",
         f"{lu['scale_out']['mean']:.2f} / {lu['scale_out']['peak']:.2f} / "
         f"{lu['scale_out']['saturated_fraction']:.2f}"),
        ("$ per million output tokens", f"${sm['cost_per_million_tokens']:,.3f}"
         if sm["cost_per_million_tokens"] is not None else "n/a (no price given)"
         if sm["requests_completed"] else "n/a (no request completed)"),
        *_money_rows(sm.get("cost")),
        ("simulation", f"{sm['sim_events']:,} events in {sm['wall_time_s']:.1f} s wall"),
    ]
    if sm.get("slo"):
        rows.insert(3, ("SLO " + ", ".join(f"{k} {fq(v, 's')}" for k, v in sm["slo"].items()),
                        ("met" if sm["slo_met"] else "[red]missed[/]: "
                         + "; ".join(sm["slo_misses"]))
                        + f"; goodput {sm['goodput_requests_per_s']:,.3g} requests/s"))
    for k, v in rows:
        t.add_row(k, v)
    return t


def _print_warnings(sm: dict) -> None:
    for w in sm.get("warnings", []):
        err.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def run(
    scenario: Scenario_,
    out_dir: Annotated[Path, typer.Option("--out", help="results folder")] = Path("out/run"),
    fmt: Annotated[str, typer.Option("--format", help="plot format: png or svg")] = "png",
    no_plots: Annotated[bool, typer.Option("--no-plots", help="skip the plots")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print summary.json")] = False,
    sets: Annotated[Optional[list[str]], typer.Option(
        "--set", help="KEY=VALUE override, e.g. layout.expert_parallel=32 (repeatable)")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="write into a --out folder holding other files, beside them (files of the "
             "same names are replaced, nothing is deleted)")] = False,
):
    """Simulate a scenario and write summary.json, CSV tables, trace.json and plots.

    --out may name a new or empty folder, or a run folder racksim wrote (replaced whole,
    all or nothing); any other folder is refused unless --force."""
    import time  # noqa: PLC0415

    if fmt not in ("png", "svg"):
        raise typer.BadParameter("use png or svg", param_hint="--format")
    sim_start = time.time()
    try:   # Ctrl-C at any point (loading, compiling, running, writing) says what is left
        from .engine.simulation import Simulation  # noqa: PLC0415 - keep `schema` fast
        from .results.tables import build_tables  # noqa: PLC0415
        from .results.write import check_out, summary_json, write_results  # noqa: PLC0415
        from .sweep import load_with_sets  # noqa: PLC0415

        s = load_with_sets(scenario, sets or [])
        merge = check_out(out_dir, "run", force)
        sim = Simulation(s)
        bar = _LazyProgress(f"simulating {s.spec.name or s.file}")
        try:
            res = sim.run(progress=bar)
        finally:
            bar.close()
        tables = build_tables(res)
        write_results(res, tables, out_dir, plots=not no_plots, fmt=fmt, merge=merge)
    except (KeyboardInterrupt, SystemError) as e:
        if not _interrupted(e):
            raise
        summary = out_dir / "summary.json"   # written by this run only if the swap happened
        done = summary.exists() and summary.stat().st_mtime >= sim_start
        err.print("interrupted: " + (f"the results in {out_dir}/ are complete" if done else
                                     f"no results written (anything already in {out_dir}/ "
                                     "is from an earlier run)"))
        raise typer.Exit(130) from None
    if as_json:
        typer.echo(summary_json(tables.summary))
        return
    out.print(_summary_table(tables.summary))
    _print_warnings(tables.summary)
    out.print(f"results in {out_dir}/ (summary.json, requests.csv, gpus.csv, links.csv, "
              f"trace.json{', plots' if not no_plots else ''})")


@app.command()
def collective(
    kind: Annotated[str, typer.Argument(help="all_to_all, all_reduce, send_recv, or a MoE "
                                             "dispatch / combine")],
    hardware: Annotated[str, typer.Option(help="hardware preset or file")],
    gpus: Annotated[int, typer.Option(help="GPUs taking part")],
    size: Annotated[Optional[str], typer.Option(
        "--bytes", help="per-GPU buffer, e.g. 64MB (not for dispatch/combine)")] = None,
    racks: Annotated[int, typer.Option(help="scale-up domains the GPUs spread over")] = 1,
    algorithm: Annotated[str, typer.Option(help="all_reduce: ring or tree")] = "ring",
    tokens: Annotated[int, typer.Option(help="dispatch/combine: tokens per GPU")] = 4096,
    hidden: Annotated[int, typer.Option(help="dispatch/combine: hidden size")] = 7168,
    top_k: Annotated[int, typer.Option(help="dispatch/combine: experts per token")] = 8,
    experts: Annotated[int, typer.Option(help="dispatch/combine: experts")] = 256,
    mode: Annotated[str, typer.Option(help="dispatch/combine: per_expert, per_gpu or "
                                           "hierarchical")] = "hierarchical",
    precision: Annotated[str, typer.Option(help="dispatch/combine: element precision")] = "fp8",
    groups: Annotated[int, typer.Option(help="dispatch/combine: expert groups")] = 1,
    topk_groups: Annotated[Optional[int], typer.Option(
        help="dispatch/combine: groups a token may use (default: all)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
):
    """Simulate one collective alone and report time, algorithm and bus bandwidth (or, for a
    MoE dispatch/combine, bandwidths counted as DeepEP's tests count them)."""
    from .engine.microbench import KINDS, run_collective, run_moe_exchange  # noqa: PLC0415
    from .spec.engine_options import DEFAULT_SCALE_BLOCK  # noqa: PLC0415
    from .spec.errors import SpecError  # noqa: PLC0415
    from .spec.precision import BYTES_PER_ELEMENT  # noqa: PLC0415
    from .spec.units import UnitError, parse_quantity  # noqa: PLC0415

    moe_kinds = ("dispatch", "combine")
    if kind not in KINDS + moe_kinds:
        raise SpecError(f"unknown collective {kind!r}", key="KIND",
                        fix=f"use one of {', '.join(KINDS + moe_kinds)}")
    hw = load_hardware(hardware, file="command line", key="--hardware")
    if kind in moe_kinds:
        if mode not in ("per_expert", "per_gpu", "hierarchical"):
            raise SpecError(f"unknown mode {mode!r}", key="--mode",
                            fix="use per_expert, per_gpu or hierarchical")
        if precision not in BYTES_PER_ELEMENT:
            raise SpecError(f"unknown precision {precision!r}", key="--precision",
                            fix=f"use one of {', '.join(BYTES_PER_ELEMENT)}")
        for name, v in (("--tokens", tokens), ("--hidden", hidden), ("--top-k", top_k),
                        ("--experts", experts), ("--groups", groups)):
            if v < 1:
                raise SpecError("must be at least 1", key=name, fix=f"e.g. {name} 8")
        if top_k > experts or experts % groups or (topk_groups or groups) > groups:
            raise SpecError("top-k must not exceed experts, groups must divide experts and "
                            "topk-groups must not exceed groups", key="--top-k/--groups",
                            fix="e.g. --experts 256 --top-k 8 --groups 8 --topk-groups 4")
        r = run_moe_exchange(hw, kind, gpus, racks, tokens, hidden, top_k, experts, mode,
                             precision, DEFAULT_SCALE_BLOCK, groups, topk_groups)
        rows = (("time", fq(r.time_s, "s")), ("of which fixed (latency + overhead)",
                                               fq(r.latency_s, "s")),
                ("bytes on the wire per GPU", fq(r.bytes_on_wire, "B")),
                ("per-selection bandwidth", fq(r.selection_bandwidth, "B/s")),
                ("per-GPU-token bandwidth", fq(r.gpu_bandwidth, "B/s")),
                ("per-domain-token bandwidth", fq(r.domain_bandwidth, "B/s")),
                ("bottleneck", r.bottleneck))
    else:
        if algorithm not in ("ring", "tree"):
            raise SpecError(f"unknown algorithm {algorithm!r}", key="--algorithm",
                            fix="use ring or tree")
        if size is None:
            raise SpecError("missing", key="--bytes", fix="e.g. --bytes 64MB")
        try:
            nbytes = parse_quantity(size, "bytes")
        except UnitError as exc:
            raise SpecError(str(exc), key="--bytes", fix="e.g. --bytes 64MB") from None
        if nbytes <= 0:
            raise SpecError("must be positive", key="--bytes", fix="e.g. --bytes 64MB")
        r = run_collective(hw, kind, gpus, nbytes, racks, algorithm)
        rows = (("per-GPU buffer", fq(nbytes, "B")), ("time", fq(r.time_s, "s")),
                ("of which fixed (latency + overhead)", fq(r.latency_s, "s")),
                ("algorithm bandwidth", fq(r.algbw_bytes_per_s, "B/s")),
                ("bus bandwidth", fq(r.busbw_bytes_per_s, "B/s")),
                ("bottleneck", r.bottleneck))
    if as_json:
        typer.echo(json.dumps(r.to_json(), indent=2))
        return
    t = Table(title=f"{kind} on {gpus} x {hw.name} over {racks} domain(s)", show_header=False,
              title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)


@app.command()
def sweep(
    scenario: Scenario_,
    sets: Annotated[list[str], typer.Option("--set", help="KEY=V1,V2,... (repeatable)")],
    out_dir: Annotated[Path, typer.Option("--out", help="sweep folder")],
    mode: Annotated[str, typer.Option(help="roofline or simulate")] = "roofline",
    workers: Annotated[Optional[int], typer.Option(help="local processes")] = None,
    dask: Annotated[Optional[str], typer.Option(help="Dask scheduler address")] = None,
    as_json: Json_ = False,
    force: Annotated[bool, typer.Option(
        "--force", help="write into a --out folder holding other files, beside them")] = False,
):
    """Run the cross product of --set values; resumes a killed sweep in the same folder.

    Ctrl-C or kill stops the workers and keeps the finished points; the same command resumes.
    --out may name a new or empty folder or a sweep folder; any other folder needs --force."""
    import shlex  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from rich.progress import Progress  # noqa: PLC0415

    from .sweep import HEADLINES, parse_set, run_sweep  # noqa: PLC0415

    state = {"done": 0, "total": 0, "exit": 130}   # 130: Ctrl-C; 143: SIGTERM

    def on_term(signum, frame):
        state["exit"] = 143
        raise KeyboardInterrupt

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, on_term)
    try:
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("sweep", total=None)

            def tick(done: int, total: int) -> None:
                state.update(done=done, total=total)
                bar.update(task, completed=done, total=total,
                           description=f"sweep {done}/{total} points")

            df = run_sweep(scenario, sets, out_dir, mode=mode, workers=workers,
                           dask_address=dask, progress=tick, force=force)
    except (KeyboardInterrupt, SystemError) as e:
        if not _interrupted(e):
            raise
        for sig in handlers:   # a second Ctrl-C must not cut this message short
            signal.signal(sig, signal.SIG_IGN)
        err.print(f"stopped: {state['done']} of {state['total']} points done, kept in "
                  f"{out_dir}/points; to resume, run the same command again: racksim "
                  f"{shlex.join(sys.argv[1:])}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(state["exit"]) from None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    counts = df["status"].value_counts().to_dict()
    if as_json:   # every point as results.parquet holds it; NaN as null
        typer.echo(df.to_json(orient="records"))
    else:
        keys = [parse_set(s)[0] for s in sets]
        t = Table(title=f"sweep of {scenario} ({mode})", title_justify="left")
        for c in (*keys, "status", *HEADLINES[mode].values()):
            t.add_column(c)
        shown = 50   # the rest are in results.csv
        for _, row in df.head(shown).iterrows():
            cells = []
            for c in (*keys, "status", *HEADLINES[mode]):
                v = row.get(c)
                if v is None or (isinstance(v, float) and v != v):
                    cells.append("-")
                elif type(v).__name__ in ("bool", "bool_"):
                    cells.append("yes" if v else "no")
                elif c in keys or c == "status":
                    cells.append(str(v))
                elif c.endswith("_s") or "_s." in c:
                    cells.append(fq(float(v), "s"))
                else:
                    cells.append(f"{float(v):,.2f}")
            t.add_row(*cells)
        out.print(t)
        more = f" ({len(df) - shown} more rows not shown)" if len(df) > shown else ""
        out.print(f"{len(df)} points: " + ", ".join(f"{v} {k}" for k, v in counts.items())
                  + f"{more}; results and reasons in {out_dir}/results.parquet and "
                    "results.csv")
    failed = df[df["status"] == "failed"]
    for _, row in failed.iterrows():
        err.print(f"point {row['point']} failed (a racksim bug, please report): {row['reason']}")
    if len(failed):
        raise typer.Exit(1)


@app.command()
def compare(
    scenario: Scenario_,
    hardware: Annotated[str, typer.Option(help="comma-separated hardware presets or files")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for CSVs, plot, scenarios")
                       ] = Path("out/compare"),
    slo: Annotated[Optional[str], typer.Option(help="e.g. tpot_p99=50ms,ttft_p99=2s")] = None,
    budget_gpus: Annotated[Optional[int], typer.Option(help="GPUs per design")] = None,
    shortlist: Annotated[int, typer.Option(help="layouts simulated per design")] = 3,
    confirm_s: Annotated[float, typer.Option(help="minimum simulated seconds per check")
                         ] = 2.0,
    as_json: Json_ = False,
    force: Annotated[bool, typer.Option(
        "--force", help="write into a --out folder holding other files, beside them")] = False,
    site: Annotated[Optional[str], typer.Option(
        help="where the racks run, overriding the scenario's site: e.g. "
             "electricity_per_kwh=0.1,pue=1.2,hosting_per_kw_month=150")] = None,
):
    """Compare rack designs: the best layout per design that meets the SLO.

    --out may name a new or empty folder or a compare folder; any other needs --force."""
    from .compare import compare as run_compare  # noqa: PLC0415
    from .spec.slo import parse_slo  # noqa: PLC0415
    from .results.write import check_out  # noqa: PLC0415
    from .spec.scenario import scenario_file  # noqa: PLC0415

    scenario_file(scenario)
    check_out(out_dir, "compare", force)

    from .spec.cost import parse_site  # noqa: PLC0415

    site_override = parse_site(site) if site is not None else None
    designs = [h.strip() for h in hardware.split(",") if h.strip()]
    targets = parse_slo(slo) if slo is not None else \
        (load_scenario(scenario).spec.slo or parse_slo(None))
    with err.status("comparing designs") as status:
        df = run_compare(scenario, designs, out_dir, slo=targets, budget_gpus=budget_gpus,
                         shortlist=shortlist, confirm_s=confirm_s, progress=status.update,
                         site=site_override)
    if as_json:   # the best row per design, as compare.csv holds it; NaN as null
        typer.echo(df.to_json(orient="records"))
        return
    t = Table(title="Best layout per design" + (f" meeting {targets.describe()}"
                                                 if targets.targets() else ""),
              title_justify="left")
    df = df.assign(layout=[
        "-" if r.get("ep") != r.get("ep") or r.get("ep") is None else
        f"EP{r['ep']:.0f} TP{r['tp']:.0f} PP{r['pp']:.0f} DP{r['dp']:.0f}"
        for _, r in df.iterrows()])
    cols = {"design": "design", "gpus": "GPUs", "layout": "layout", "batch": "batch",
            "rate_per_s": "req/s", "tokens_per_s_per_gpu": "tok/s/GPU",
            "cost_per_million_tokens": "$/Mtok", "cost_rank": "cost rank",
            "output_tokens_per_s_per_mw": "tok/s per MW", "tpot_p99_s": "TPOT p99",
            "ttft_p99_s": "TTFT p99", "meets_slo": "SLO met"}
    for c in cols.values():
        t.add_column(c)
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = row.get(c)
            if c in ("design", "layout"):
                cells.append(str(v))
            elif v is None or (isinstance(v, float) and v != v):
                cells.append("-")
            elif c.endswith("_s") and not c.endswith("per_s"):
                cells.append(fq(float(v), "s"))
            elif isinstance(v, float) and c in ("gpus", "batch"):
                cells.append(f"{v:.0f}")
            elif isinstance(v, float):
                cells.append(f"{v:,.2f}")
            else:
                cells.append(str(v))
        t.add_row(*cells)
    out.print(t)
    for _, row in df[df["meets_slo"] != True].iterrows():  # noqa: E712 - NaN-safe
        out.print(f"{row['design']}: no layout meets the SLO: {row.get('reason')}",
                  highlight=False, markup=False)
    out.print("throughput at each layout's capacity: the highest Poisson rate found that "
              "keeps up and meets the SLO (racksim capacity)")
    out.print(f"written: {out_dir}/compare.csv (best per design), confirmed.csv (every "
              f"simulated layout), pareto.png, and one scenario file per simulated layout "
              "(re-run any with `racksim run`)")


@app.command()
def capacity(
    scenario: Scenario_,
    slo: Annotated[Optional[str], typer.Option(
        help="e.g. ttft_p99=2s,tpot_p99=50ms (default: the scenario's slo:, else only "
             "'keeps up')")] = None,
    tolerance: Annotated[float, typer.Option(
        help="stop when the highest meeting and lowest failing rates are this close "
             "(relative)")] = 0.05,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print one object: rate_per_s, summary (the run at that rate), slo, "
                       "and the probes")] = False,
):
    """Find the highest Poisson arrival rate the deployment keeps up with while meeting the
    SLO, by simulated runs (bisection from the closed form's estimate)."""
    from .api import scenario_dict  # noqa: PLC0415
    from .capacity import search  # noqa: PLC0415
    from .spec.scenario import scenario_file  # noqa: PLC0415
    from .spec.slo import parse_slo  # noqa: PLC0415

    path = scenario_file(scenario)
    data = scenario_dict(path)
    if slo is not None:
        targets = parse_slo(slo)
    else:
        from .spec.scenario import load_scenario  # noqa: PLC0415

        targets = load_scenario(path).spec.slo or parse_slo(None)
    with err.status("searching") as status:
        def tick(p):
            status.update(f"{p.rate_per_s:.4g} requests/s: "
                          + ("meets" if p.meets else "misses"))

        res = search(data, targets, file=str(path), base_dir=path.parent,
                     tolerance=tolerance, progress=tick)
    if as_json:
        from .results.write import summary_json  # noqa: PLC0415 - NaN and inf as null

        typer.echo(summary_json(res.to_json()), nl=False)
        return
    t = Table(title=f"Capacity search: {path} (SLO {targets.describe()})",
              title_justify="left")
    for col in ("requests/s", "verdict", "TTFT p99", "TPOT p99", "why not"):
        t.add_column(col)
    for p in sorted(res.probes, key=lambda p: p.rate_per_s):
        sm = p.summary
        t.add_row(f"{p.rate_per_s:,.4g}", "meets" if p.meets else "misses",
                  fq(sm["ttft_s"]["p99"], "s") if sm["ttft_s"]["p99"] is not None else "-",
                  fq(sm["tpot_s"]["p99"], "s") if sm["tpot_s"]["p99"] is not None else "-",
                  "; ".join(p.why_not))
    out.print(t)
    out.print(f"closed-form estimate (roofline + prefill + uncontended communication): "
              f"{res.estimate_rate_per_s:,.4g} requests/s")
    if res.rate_per_s is None:
        out.print(f"[red]no rate meets the SLO[/]: {res.reason}", highlight=False)
        raise typer.Exit(1)
    sm = res.summary
    out.print(f"[bold]capacity: {res.rate_per_s:,.4g} requests/s[/] "
              f"({sm['output_tokens_per_s']:,.0f} output tokens/s, "
              f"{sm['tokens_per_s_per_gpu']:,.1f} per GPU)"
              + (f"; {res.failing_rate_per_s:,.4g}/s does not meet it"
                 if res.failing_rate_per_s else ""))
    if res.reason:
        out.print(res.reason)
    _print_warnings(sm)


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="a run or sweep folder")],
    out_file: Annotated[Optional[Path], typer.Option("--out", help="HTML file")] = None,
):
    """Turn a run or sweep folder into one self-contained HTML page."""
    from .results.report import build_report  # noqa: PLC0415

    path = build_report(folder, out_file)
    out.print(f"report written to {path}")


@app.command()
def validate(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    plot_file: Annotated[Optional[Path], typer.Option("--plot", help="PNG/SVG: predicted "
                                                      "against published, log-log")] = None,
    fast: Annotated[bool, typer.Option(help="only the cases that run in seconds "
                                            "(collectives and kernels; no scenarios)")] = False,
    gate: Annotated[bool, typer.Option(help="exit 1 when a category misses the accuracy "
                                            "target")] = False,
    do_calibrate: Annotated[bool, typer.Option("--calibrate", help="redo the calibration and "
                                               "compare it with topologies/*.yaml")] = False,
    cases: Annotated[Optional[Path], typer.Option(help="validation folder")] = None,
    op_timing: Annotated[Optional[str], typer.Option(
        "--op-timing", help="run the scenario cases with this engine.op_timing: analytical "
                            "(per-kernel sum, the default), measured (measured kernels where "
                            "they cover the GPU) or pooled; default: each scenario file's "
                            "own")] = None,
    kernels: Annotated[Optional[str], typer.Option(
        "--kernels", help="run the scenario cases with this kernel timing "
                          "(topologies/kernels/NAME.yaml) in place of their hardware file's: "
                          "e.g. hopper on Blackwell rows, leave one generation out")] = None,
):
    """Run every published case (validation/*_cases.csv, e2e_published.csv) and report
    predicted vs published."""
    from . import validate as val  # noqa: PLC0415

    if op_timing is not None and op_timing not in ("analytical", "measured", "pooled"):
        raise typer.BadParameter("use analytical, measured or pooled", param_hint="--op-timing")
    folder = cases or val.VALIDATION_DIR
    if do_calibrate:
        fitted = val.calibrate(folder)
        for g, params in fitted.items():
            out.print(f"[bold]{g}[/]: " + ", ".join(f"{k} {v:.4g}" for k, v in params.items()))
        problems = val.check_files(fitted, folder)
        for p in problems:
            out.print(f"[yellow]{p}[/]")
        out.print("hardware files match the calibration" if not problems
                  else "update the hardware files (values above)")
        raise typer.Exit(1 if problems else 0)
    from rich.progress import Progress  # noqa: PLC0415

    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("validating", total=None)
        report = val.validate(folder, only=("exchange", "kernel") if fast else None,
                              progress=lambda cid: bar.update(task, description=cid),
                              op_timing=op_timing, kernels=kernels)
    if plot_file is not None:
        val.plot(report, plot_file)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        t = Table(title="racksim against published measurements", title_justify="left")
        for col in ("case", "unit", "published", "racksim", "error", ""):
            t.add_column(col, justify="left" if col in ("case", "unit", "") else "right")
        for o in report.outcomes:
            t.add_row(o.row.id, o.row.unit, f"{o.row.value:,.4g}", f"{o.predicted:,.4g}",
                      f"{o.error:+.1%}", "calibration" if o.calibration else "")
        out.print(t)
        s = Table(title=f"held-out cases (target: median |error| <= {val.MEDIAN_TARGET:.0%}, "
                        f"worst <= {val.WORST_TARGET:.0%})", title_justify="left")
        for col in ("category", "cases", "held out", "median |error|", "worst |error|", ""):
            s.add_column(col)
        for cat, v in report.summary().items():
            s.add_row(cat, str(v["cases"]), str(v["held_out"]), f"{v['median_abs_error']:.1%}",
                      f"{v['worst_abs_error']:.1%}",
                      "within target" if v["within_target"] else "[red]outside target[/]")
        out.print(s)
        g = Table(title="held-out cases per GPU generation (calibration cases apart: fitted "
                        "to match)", title_justify="left")
        for col in ("category", "generation", "held out", "median |error|", "worst |error|",
                    "calibration", "calibration worst |error|"):
            g.add_column(col)

        def pct(x):
            return "" if x is None else f"{x:.1%}"

        for cat, v in report.summary().items():
            for gen, d in v["by_generation"].items():
                h, c = d["held_out"], d["calibration"]
                g.add_row(cat, gen, str(h["cases"]), pct(h["median_abs_error"]),
                          pct(h["worst_abs_error"]), str(c["cases"]),
                          pct(c["worst_abs_error"]))
        out.print(g)
        if report.not_simulated and not fast:
            n = Table(title="published rows not simulated (validation/cases.yaml)",
                      title_justify="left")
            n.add_column("case")
            n.add_column("why")
            for cid, (_, why) in report.not_simulated.items():
                n.add_row(cid, why)
            out.print(n)
        if op_timing is not None:
            out.print(f"scenario cases run with engine.op_timing: {op_timing}")
        if kernels is not None:
            out.print(f"scenario cases run with kernel timing: {kernels}")
        if plot_file is not None:
            out.print(f"plot written to {plot_file}")
    if gate and not report.within_target:
        raise typer.Exit(1)


@app.command()
def calibrate(
    root: Annotated[Optional[Path], typer.Argument(
        help="aiconfigurator-core's package folder (default: the installed package, "
             "`pip install 'racksim[calibrate]'`), or validation/kernels (the committed "
             "sample: fits and errors only)")] = None,
    write: Annotated[bool, typer.Option(help="rewrite topologies/kernels/*.yaml")] = False,
    sample: Annotated[bool, typer.Option(help="rewrite the committed sample of measured "
                                              "rows (validation/kernels)")] = False,
):
    """Fit the per-kernel timing of each GPU generation on measured kernel latencies and
    print the parameters with their calibration and held-out errors (docs/kernel-model.md)."""
    from .calibration import fit  # noqa: PLC0415
    from .spec.errors import SpecError  # noqa: PLC0415

    try:
        fit.main([*([str(root)] if root else []), *(["--write"] if write else []),
                  *(["--sample"] if sample else [])])
    except FileNotFoundError as exc:
        raise SpecError(str(exc), file="command line", key="ROOT",
                        fix="pip install 'racksim[calibrate]', or give the folder of an "
                            "unpacked aiconfigurator-core wheel, or validation/kernels") from None


@app.command()
def schema():
    """Print the JSON Schema of a scenario file (for editor completion and checking)."""
    typer.echo(json.dumps(scenario_json_schema(), indent=2))


@show_app.command("model")
def show_model(name: Annotated[str, typer.Argument(help="preset name or path")],
               as_json: Json_ = False):
    """Print a model's architecture-derived totals, part by part."""
    import dataclasses  # noqa: PLC0415

    m = load_model(name, file="command line", key="NAME")
    if as_json:   # SI numbers; `published` is the model card's, for checking
        _echo_json({**dataclasses.asdict(m), "published": m.published and m.published.model_dump(),
                    "architecture": m.architecture and m.architecture.model_dump(),
                    "weight_bytes": m.weight_bytes, "sparsity": m.sparsity})
        return
    t = Table(title=f"{m.name}: parameter derivation", title_justify="left")
    for col in ("part", "total", "active", "rule"):
        t.add_column(col, justify="right" if col in ("total", "active") else "left")
    for p in m.parts:
        t.add_row(p.name, f"{p.total / 1e9:,.3f} B", f"{p.active / 1e9:,.3f} B", p.rule)
    t.add_row("[bold]total[/]", f"[bold]{m.total_params / 1e9:,.2f} B",
              f"[bold]{m.active_params / 1e9:,.2f} B", "")
    out.print(t)
    if m.published is not None:
        pt, pa = m.published.total_params, m.published.active_params
        out.print(f"published: {pt / 1e9:,.1f} B total ({(m.total_params / pt - 1) * 100:+.1f}%), "
                  f"{pa / 1e9:,.1f} B active ({(m.active_params / pa - 1) * 100:+.1f}%)")
    per = ", ".join(f"{c} {m.precision_of(c)} ({m.bytes_of(c):g} B/param)"
                    for c in m.component_bytes)
    out.print(f"weights: {m.bytes_per_param:g} bytes/param -> {fq(m.weight_bytes, 'B')}; "
              f"matmuls at {m.compute_precision}" + (f"; per component: {per}" if per else ""))
    out.print(f"KV cache: {fq(m.kv_bytes_per_token, 'B')} per token "
              f"({m.kv_bytes_per_token:,.0f} bytes, {m.kv_bytes_per_element:g} bytes/element)")
    if m.moe:
        out.print(f"MoE: {m.moe.experts} experts, top-{m.moe.top_k}, "
                  f"{m.moe.shared_experts} shared, {m.moe.moe_layers} MoE layers; "
                  f"sparsity (total/active) {m.sparsity:.1f}")
    for k, v in m.sources.items():
        out.print(f"source ({k}): {v}")


@show_app.command("hardware")
def show_hardware(name: Annotated[str, typer.Argument(help="preset name or path")],
                  as_json: Json_ = False):
    """Print a hardware design's figures."""
    hw = load_hardware(name, file="command line", key="NAME")
    if as_json:   # the file's figures in SI units, the scale-up domain size filled in
        doc = hw.model_dump(mode="json")
        doc["scale_up"]["domain_gpus"] = hw.domain_gpus
        _echo_json(doc)
        return
    g = hw.gpu
    t = Table(title=f"{hw.name}: {hw.description}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    flops = g.flops if isinstance(g.flops, dict) else {"(model precision)": g.flops}
    for p, v in flops.items():
        t.add_row(f"dense {p}", fq(v, "FLOP/s"))
    t.add_row("HBM", f"{fq(g.hbm_bytes, 'B')} at {fq(g.hbm_bandwidth, 'B/s')}")
    t.add_row("GPUs per rack / scale-up domain", f"{hw.gpus_per_rack} / {hw.domain_gpus}")
    t.add_row("scale-up per GPU (per direction)",
              f"{fq(hw.scale_up.bandwidth_per_gpu, 'B/s')}, {fq(hw.scale_up.latency, 's')}")
    so = hw.scale_out
    t.add_row("scale-out per GPU (per direction)",
              f"{fq(so.bandwidth_per_gpu, 'B/s')}, {fq(so.latency, 's')}, {so.topology}, "
              f"oversubscription {so.oversubscription:g}")
    e = hw.efficiency
    t.add_row("efficiency (compute/memory/up/out)",
              f"{e.compute:g} / {e.memory:g} / {e.scale_up:g} / {e.scale_out:g}")
    c = hw.cost
    if c is None:
        t.add_row("cost", "not given (no cost: in the file; price runs with "
                          "price_per_gpu_hour)")
    else:
        hours = c.amortisation_years * HOURS_PER_YEAR
        t.add_row("capex per rack", f"${c.capex_per_rack:,.0f} over {c.amortisation_years:g} "
                                    f"years (${c.capex_per_rack / hours:,.2f} per hour, "
                                    f"${c.capex_per_rack / hours / hw.gpus_per_rack:,.2f} "
                                    "per GPU-hour)")
        t.add_row("power per rack", f"{fq(c.power_per_rack, 'W')} at full load, "
                                    f"{c.idle_power_fraction:.0%} of it idle")
    out.print(t)
    for s in hw.sources:
        out.print(f"source: {s}")


@show_app.command("topology")
def show_topology(
    name: Annotated[str, typer.Argument(help="hardware preset or path")],
    racks: Annotated[int, typer.Option(help="number of racks")] = 1,
    export: Annotated[Optional[Path], typer.Option(
        help="write the graph: .graphml (GraphML) or .json (node-link)")] = None,
    as_json: Json_ = False,
):
    """Summarise the cluster graph built from a hardware design and a rack count."""
    from .cluster.topology import build_cluster, export_graph  # noqa: PLC0415

    if racks < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--racks")
    hw = load_hardware(name, file="command line", key="NAME")
    c = build_cluster(hw, racks)
    sm = c.summary()
    if export is not None:
        export_graph(c, str(export))
    if as_json:
        _echo_json(sm)
        return
    t = Table(title=f"{hw.name} x {racks} rack(s)", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k in ("gpus", "scale_up_domains", "leaves", "scale_out_topology", "oversubscription",
              "links"):
        t.add_row(k.replace("_", " "), str(sm[k]))
    for tier, v in sm["tiers"].items():
        t.add_row(f"{tier} links", f"{v['links']} ({fq(v['capacity_bytes_per_s'], 'B/s')} "
                                   "total capacity)")
    out.print(t)
    if export is not None:
        out.print(f"graph written to {export}")


@show_app.command("presets")
def show_presets(as_json: Json_ = False):
    """List the hardware and model presets."""
    if as_json:
        _echo_json({"hardware": list_presets("topologies"), "models": list_presets("models")})
        return
    out.print("hardware: " + ", ".join(list_presets("topologies")))
    out.print("models:   " + ", ".join(list_presets("models")))


def _interrupted(exc: BaseException) -> bool:
    """A Ctrl-C, also when it landed inside a compiled kernel's call back into Python, which
    numba reports as a SystemError caused by the KeyboardInterrupt."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _money_rows(c: dict | None) -> list[tuple[str, str]]:
    """The run table's cost rows (summary.json `cost`, results/cost.py)."""
    if not c:
        return []
    rows = [("$ per hour of the deployment", f"${c['usd_per_hour']:,.2f} ({c['priced_by']}"
             + (", site assumed" if c.get("site_assumed") else "") + ")")]
    if c.get("power_kw") is not None:
        per_mw = c.get("output_tokens_per_s_per_mw")
        rows.append(("IT power, output tokens/s per MW",
                     f"{c['power_kw']:,.1f} kW, "
                     + (f"{per_mw:,.0f}" if per_mw is not None else "n/a")))
    return rows


def main() -> None:
    """Entry point: typer handles usage errors (exit 2); our user errors exit 2 too."""
    try:
        app()
    except RacksimError as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except (KeyboardInterrupt, SystemError) as exc:   # before a command's own handler
        if not _interrupted(exc):
            raise
        err.print("interrupted: nothing was written", markup=False, highlight=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
