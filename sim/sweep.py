"""Sweeps: the cross product of `--set key=v1,v2,...` over a scenario, run in parallel, each
point's result written atomically as it finishes, so a killed sweep resumes where it stopped.

Layout of a sweep folder:
    DIR/points/<key>.json   one finished point: params, status, reason, summary
    DIR/results.parquet     one row per point of the grid (and results.csv), rebuilt at the end
A point's key is a hash of its overrides, so the same point is never computed twice.
An unknown `--set` key stops the sweep before any point runs; infeasible points (the scenario
rejects a value) are recorded with the reason, not fatal. A simulated point is `ok`,
`overloaded` (arrivals outpace completions) or `no_completions` (nothing to measure).

Stopping: Ctrl-C or SIGTERM stops the worker processes before the exception leaves
`run_sweep`; the points already written stay, and the same command resumes. For tests,
`RACKSIM_SWEEP_KILL_AFTER=N` makes the sweep SIGKILL itself (and its process group, when it
leads one) right after writing its N-th point, so a crash lands at an exact state.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .api import apply_overrides, scenario_dict
from .spec.errors import RacksimError, SpecError
from .spec.scenario import Scenario, check_override_key, scenario_file, scenario_from_dict

MODES = ("roofline", "simulate")
VOLATILE = ("wall_time_s",)  # differs between identical runs; kept in the point file only
KILL_AFTER = "RACKSIM_SWEEP_KILL_AFTER"  # test hook (module docstring)
DASK_CONNECT_S = 5.0  # how long to try reaching a Dask scheduler
# The figures the end-of-sweep table shows per mode (summary keys, flattened).
HEADLINES = {
    "simulate": {"tokens_per_s_per_gpu": "tok/s/GPU", "ttft_s.p99": "TTFT p99",
                 "tpot_s.p99": "TPOT p99", "cost_per_million_tokens": "$/Mtok",
                 "overloaded": "overloaded"},
    "roofline": {"tokens_per_s_per_gpu": "tok/s/GPU", "step_time_s": "step time",
                 "fits": "fits", "cost_per_million_tokens": "$/Mtok"},
}


# --------------------------------------------------------------------------- the grid


def split_values(text: str) -> list[str]:
    """Split on commas outside brackets, braces and quotes: `1,[0,1],"a,b"`."""
    out, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return [v.strip() for v in out]


def parse_set(option: str) -> tuple[str, list[Any]]:
    """`layout.expert_parallel=16,32` -> ("layout.expert_parallel", [16, 32]). Values are
    read as YAML scalars (16 is a number, 20 ms a string, [0,1] a list)."""
    key, sep, values = option.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise SpecError(f"--set {option!r} is not KEY=V1,V2,...", key="--set",
                        fix="e.g. --set layout.expert_parallel=16,32,64")
    parsed = []
    for v in split_values(values):
        try:
            parsed.append(yaml.safe_load(v))
        except yaml.YAMLError:
            raise SpecError(f"value {v!r} of {key} does not parse", key="--set",
                            fix="quote strings with commas or brackets") from None
    return key.strip(), parsed


def grid(sets: Iterable[str]) -> list[dict[str, Any]]:
    axes = [parse_set(s) for s in sets]
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise SpecError("the same key is set twice", key="--set", fix="one --set per key")
    for a in keys:
        for b in keys:
            if a != b and b.startswith(a + "."):
                raise SpecError(f"--set {a} replaces the whole mapping that --set {b} changes",
                                key="--set", fix=f"set {b} inside the values of {a}, or drop one")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))]


def check_keys(keys: Iterable[str]) -> None:
    """Every `--set` key names a key of the scenario format (did-you-mean otherwise)."""
    for k in keys:
        check_override_key(k, file="command line", key=f"--set {k}")


def one_value_each(sets: Iterable[str]) -> dict[str, Any]:
    """`racksim run --set KEY=VALUE ...`: the overrides, one value per key, keys checked."""
    axes = [parse_set(s) for s in sets]
    for key, values in axes:
        if len(values) != 1:
            raise SpecError(f"{len(values)} values given; a run takes one", key=f"--set {key}",
                            fix="use `racksim sweep` for several values, or quote a value "
                                "holding commas: --set 'KEY=\"a,b\"'")
    (params,) = grid(sets)
    check_keys(params)
    return params


def point_scenario(data: dict, file: str, base_dir: str | Path, params: dict) -> Scenario:
    """The scenario with a point's overrides. A problem with a value set on the command line
    names `--set KEY`, not the scenario file."""
    try:
        return scenario_from_dict(apply_overrides(data, params), file=file,
                                  base_dir=Path(base_dir))
    except SpecError as exc:
        for k in params:
            if exc.key and (exc.key == k or exc.key.startswith((k + ".", k + "["))):
                raise exc.moved(file="command line", key=f"--set {exc.key}") from None
        raise


def load_with_sets(path: str | Path, sets: Iterable[str]) -> Scenario:
    """A scenario file with `--set KEY=VALUE` overrides (`racksim run`)."""
    path = scenario_file(path)
    return point_scenario(scenario_dict(path), str(path), path.parent, one_value_each(sets))


def point_key(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


# --------------------------------------------------------------------------- one point


def run_point(data: dict, file: str, base_dir: str, params: dict, mode: str) -> dict:
    """Run one point; never raises for a user's mistake (picklable, for pools and Dask)."""
    import time  # noqa: PLC0415

    from . import roofline as rf  # noqa: PLC0415

    t0 = time.perf_counter()
    record: dict[str, Any] = {"params": params, "mode": mode, "status": "ok", "reason": None,
                              "summary": None}
    try:
        s = point_scenario(data, file, base_dir, params)
        if mode == "roofline":
            record["summary"] = rf.for_scenario(s).to_json()
        else:
            from .api import simulate  # noqa: PLC0415

            record["summary"] = simulate(s).summary
            record.update(verdict(record["summary"]))
    except SpecError as exc:
        record.update(status="infeasible", reason=str(exc))
    except RacksimError as exc:
        record.update(status="error", reason=str(exc))
    except Exception as exc:  # a bug: record it, keep the sweep going  # noqa: BLE001
        record.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
    if record["summary"]:
        for k in VOLATILE:
            record["summary"].pop(k, None)
    record["wall_time_s"] = time.perf_counter() - t0
    return record


def verdict(summary: dict) -> dict:
    """Status and reason of a simulated point: `overloaded` when the run could not keep up
    (its figures grow with the duration), `no_completions` when no request finished (no
    latency or cost to report), else `ok`."""
    arrivals = summary.get("arrival_rate", summary.get("arrival_rate_per_s"))
    completions = summary.get("completion_rate", summary.get("service_rate_per_s"))
    rates = (f"arrivals {arrivals:,.3g}/s, completions {completions:,.3g}/s"
             if arrivals is not None and completions is not None else "")
    if summary.get("overloaded"):
        text = (summary.get("load") or {}).get("text") or f"{rates}: overloaded"
        return {"status": "overloaded", "reason": text}
    if summary.get("requests_completed") == 0:
        return {"status": "no_completions",
                "reason": f"no request completed ({rates}); lengthen workload.duration_s or "
                          "shorten the requests"}
    return {"status": "ok", "reason": None}


def _write_point(path: Path, record: dict) -> None:
    from .results.write import atomic_write  # noqa: PLC0415

    atomic_write(path, lambda p: p.write_text(json.dumps(record, indent=1, default=str)))


def _read_point(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # absent or unreadable: compute it again


# --------------------------------------------------------------------------- the sweep


def rows_frame(points: list[dict], records: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for params in points:
        rec = records[point_key(params)]
        row = {**params, "point": point_key(params), "status": rec["status"],
               "reason": rec["reason"]}
        if rec.get("summary"):
            flat = pd.json_normalize(rec["summary"], sep=".").iloc[0].to_dict()
            row.update({k: v for k, v in flat.items() if k not in params})
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in df.columns:  # parquet needs one type per column
        if df[c].map(lambda v: isinstance(v, (list, dict))).any():
            df[c] = df[c].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    return df


def run_sweep(scenario: str | Path, sets: list[str], out: str | Path, mode: str = "roofline",
              workers: int | None = None, dask_address: str | None = None,
              progress: Callable[[int, int], None] | None = None,
              force: bool = False) -> pd.DataFrame:
    """Run every point not already in `out` (a sweep folder, or new or empty; `force` writes
    into any other folder beside its files, see results.write.check_out)."""
    from .results.write import atomic_write, check_out  # noqa: PLC0415

    if mode not in MODES:
        raise SpecError(f"unknown mode {mode!r}", key="--mode", fix="use roofline or simulate")
    scenario = scenario_file(scenario)
    data = scenario_dict(scenario)
    points = grid(sets)
    check_keys(points[0])
    out = Path(out)
    check_out(out, "sweep", force)
    (out / "points").mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    todo = []
    for params in points:
        rec = _read_point(out / "points" / f"{point_key(params)}.json")
        if rec is not None and rec.get("mode") == mode:
            records[point_key(params)] = rec
        else:
            todo.append(params)
    total, done = len(points), len(records)
    kill_after = done + int(os.environ[KILL_AFTER]) if os.environ.get(KILL_AFTER) else None
    if progress:
        progress(done, total)
    args = [(data, str(scenario), str(scenario.parent), p, mode) for p in todo]

    def finished(rec: dict) -> None:
        nonlocal done
        key = point_key(rec["params"])
        _write_point(out / "points" / f"{key}.json", rec)
        records[key] = rec
        done += 1
        if done == kill_after:
            _crash()
        if progress:
            progress(done, total)

    if todo and dask_address:
        _run_on_dask(dask_address, args, finished)
    elif todo:
        n = workers or min(len(todo), os.cpu_count() or 1)
        if n <= 1:
            for a in args:
                finished(run_point(*a))
        else:
            with ProcessPoolExecutor(max_workers=n, initializer=_worker_signals) as pool:
                try:
                    futures = [pool.submit(run_point, *a) for a in args]
                    for f in as_completed(futures):
                        finished(f.result())
                except BaseException:   # Ctrl-C, SIGTERM (see the CLI), a crash: no orphans
                    _stop_workers(pool)
                    raise
    df = rows_frame(points, records)
    atomic_write(out / "results.parquet", lambda p: df.to_parquet(p, index=False))
    atomic_write(out / "results.csv", lambda p: df.to_csv(p, index=False))
    return df


def _worker_signals() -> None:
    """In a worker: Ctrl-C is the parent's to handle (a terminal sends it to the whole
    group), and SIGTERM ends the worker (the parent's handler is not inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool's processes now, mid-point, and reap them."""
    procs = list(pool._processes.values())  # noqa: SLF001 - no public way before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.terminate()
    for p in procs:
        p.join()


def _crash() -> None:
    """The KILL_AFTER test hook: die at once, as a power cut would, with the workers (a test
    starts the sweep as the leader of its own process group)."""
    if os.getpgrp() == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _run_on_dask(address: str, args: list[tuple], finished: Callable[[dict], None]) -> None:
    try:
        from dask.distributed import Client  # noqa: PLC0415
        from dask.distributed import as_completed as dask_completed  # noqa: PLC0415
    except ImportError:
        raise SpecError("Dask is not installed", key="--dask",
                        fix="pip install 'racksim[dask]', or drop --dask to use local "
                            "processes") from None
    try:
        client = Client(address, timeout=DASK_CONNECT_S)
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot reach a Dask scheduler at {address} ({exc})", key="--dask",
                        fix="start one (`dask scheduler`) and pass the address it prints, "
                            "e.g. tcp://HOST:8786, or drop --dask to use local "
                            "processes") from None
    with client:
        futures = [client.submit(run_point, *a, pure=False) for a in args]
        try:
            for f in dask_completed(futures):
                finished(f.result())
        except BaseException:
            client.cancel(futures)
            raise
