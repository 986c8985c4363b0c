"""Sweeps: the cross product of `--set key=v1,v2,...` over a scenario, run in parallel, each
point's result written atomically as it finishes, so a killed sweep resumes where it stopped.

Layout of a sweep folder:
    DIR/points/<key>.json   one finished point: params, status, reason, summary
    DIR/results.parquet     one row per point of the grid (and results.csv), rebuilt at the end
A point's key is a hash of its overrides, so the same point is never computed twice.
Infeasible points (the scenario rejects them) are recorded with the reason, not fatal.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .api import apply_overrides, scenario_dict
from .spec.errors import RacksimError, SpecError

MODES = ("roofline", "simulate")
VOLATILE = ("wall_time_s",)  # differs between identical runs; kept in the point file only


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


def point_key(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


# --------------------------------------------------------------------------- one point


def run_point(data: dict, file: str, base_dir: str, params: dict, mode: str) -> dict:
    """Run one point; never raises for a user's mistake (picklable, for pools and Dask)."""
    import time  # noqa: PLC0415

    from . import roofline as rf  # noqa: PLC0415
    from .spec.scenario import scenario_from_dict  # noqa: PLC0415

    t0 = time.perf_counter()
    record: dict[str, Any] = {"params": params, "mode": mode, "status": "ok", "reason": None,
                              "summary": None}
    try:
        s = scenario_from_dict(apply_overrides(data, params), file=file,
                               base_dir=Path(base_dir))
        if mode == "roofline":
            record["summary"] = rf.for_scenario(s).to_json()
        else:
            from .api import simulate  # noqa: PLC0415

            record["summary"] = simulate(s).summary
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
              progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    if mode not in MODES:
        raise SpecError(f"unknown mode {mode!r}", key="--mode", fix="use roofline or simulate")
    scenario = Path(scenario)
    data = scenario_dict(scenario)
    points = grid(sets)
    out = Path(out)
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
    if progress:
        progress(done, total)
    args = [(data, str(scenario), str(scenario.parent), p, mode) for p in todo]

    def finished(rec: dict) -> None:
        nonlocal done
        key = point_key(rec["params"])
        _write_point(out / "points" / f"{key}.json", rec)
        records[key] = rec
        done += 1
        if progress:
            progress(done, total)

    if todo and dask_address:
        from dask.distributed import Client  # noqa: PLC0415
        from dask.distributed import as_completed as dask_completed  # noqa: PLC0415

        with Client(dask_address) as client:
            futures = [client.submit(run_point, *a, pure=False) for a in args]
            for f in dask_completed(futures):
                finished(f.result())
    elif todo:
        n = workers or min(len(todo), os.cpu_count() or 1)
        if n <= 1:
            for a in args:
                finished(run_point(*a))
        else:
            with ProcessPoolExecutor(max_workers=n) as pool:
                futures = [pool.submit(run_point, *a) for a in args]
                for f in as_completed(futures):
                    finished(f.result())
    df = rows_frame(points, records)
    from .results.write import atomic_write  # noqa: PLC0415

    atomic_write(out / "results.parquet", lambda p: df.to_parquet(p, index=False))
    atomic_write(out / "results.csv", lambda p: df.to_csv(p, index=False))
    return df
