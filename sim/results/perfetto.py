"""trace.json: a Chrome trace-event timeline that opens in Perfetto (ui.perfetto.dev).

Tracks: one process per replica with a thread per pipeline stage (steps as slices, their
layers and collectives nested for the detailed steps, gaps marked as bubbles); a "network"
process with a utilisation counter per tier; a "requests" process with each request's life
as an async slice (lifetimes overlap, which plain slices on one track cannot show); with
faults, a "faults" process: one track per fault (its active window as a slice) and instants
where a replica stopped or restarted.
Times are microseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..engine.simulation import EngineResult
from .tables import Tables, binned_mean
from .write import atomic_write

MAX_HOLDS = 200_000      # stage slices kept; the rest are summarised in the metadata
MAX_REQUESTS = 500       # request lifetimes drawn
COUNTER_BINS = 5_000     # utilisation counter points per tier
US = 1e6
NETWORK_PID = 10_000
REQUESTS_PID = 10_001
FAULTS_PID = 10_002
FAULT_TID0 = 1_000_000   # fault tracks' thread ids, clear of the stage tracks'


def _meta(pid: int, name: str, tid: int | None = None, sort: int | None = None) -> list[dict]:
    if tid is None:
        ev = [{"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}]
        if sort is not None:
            ev.append({"ph": "M", "pid": pid, "name": "process_sort_index",
                       "args": {"sort_index": sort}})
        return ev
    return [{"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}},
            {"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index",
             "args": {"sort_index": tid}}]


def _tid(replica: int, stage: int, stages: int) -> int:
    """Thread ids unique across processes (Perfetto may treat equal tids as one thread)."""
    return 1 + replica * stages + stage


def trace_events(res: EngineResult, tables: Tables) -> dict:
    ev: list[dict] = []
    pl = res.placement.gpus
    P = pl.shape[1]
    for r in range(pl.shape[0]):
        ev += _meta(r, f"replica {r}", sort=r)
        for s in range(pl.shape[1]):
            g = pl[r, s]
            ev += _meta(r, f"stage {s} (GPUs {g.min()}-{g.max()})", tid=_tid(r, s, P))
    st = res.stage_steps
    n = len(st["start"])
    keep = min(n, MAX_HOLDS)
    order = np.lexsort((st["start"][:keep], st["stage"][:keep], st["replica"][:keep]))
    prev_end: dict[tuple, float] = {}
    for i in order:
        r, s = int(st["replica"][i]), int(st["stage"][i])
        t0, t1 = float(st["start"][i]), float(st["end"][i])
        key = (r, s)
        if key in prev_end and t0 > prev_end[key]:
            ev.append({"ph": "X", "pid": r, "tid": _tid(r, s, P), "name": "bubble",
                       "cat": "bubble",
                       "ts": prev_end[key] * US, "dur": (t0 - prev_end[key]) * US})
        prev_end[key] = t1
        ev.append({"ph": "X", "pid": r, "tid": _tid(r, s, P),
                   "name": f"step mb {int(st['microbatch'][i])}",
                   "cat": "step", "ts": t0 * US, "dur": (t1 - t0) * US,
                   "args": {"microbatch": int(st["microbatch"][i])}})
    for r, s, name, t0, t1 in res.phases:
        if t1 > t0:
            ev.append({"ph": "X", "pid": int(r), "tid": _tid(int(r), int(s), P), "name": name,
                       "cat": "layer",
                       "ts": t0 * US, "dur": (t1 - t0) * US})
    # network counters
    ev += _meta(NETWORK_PID, "network", sort=1000)
    ls = tables.link_series
    t_end = res.window[1]
    if len(ls) and t_end > 0:  # binned: one counter value per bin, not one per re-solve
        edges = np.linspace(0.0, t_end, min(COUNTER_BINS, len(ls)) + 1)
        t = ls["time_s"].to_numpy()
        for tier in [c for c in ls.columns if c != "time_s"]:
            for a, v in zip(edges[:-1], binned_mean(t, ls[tier].to_numpy(), edges)):
                ev.append({"ph": "C", "pid": NETWORK_PID, "name": f"{tier} utilisation",
                           "ts": float(a) * US, "args": {"mean": float(v)}})
    # request lifetimes
    ev += _meta(REQUESTS_PID, "requests", sort=1001)
    req = tables.requests
    done = req[req["finish_s"].notna()].head(MAX_REQUESTS)
    for row in done.itertuples():
        common = {"pid": REQUESTS_PID, "tid": 0, "cat": "request", "id": int(row.request),
                  "name": f"request {int(row.request)}"}
        ev.append({**common, "ph": "b", "ts": row.arrival_s * US,
                   "args": {"prompt_tokens": int(row.prompt_tokens),
                            "output_tokens": int(row.output_tokens)}})
        ev.append({**common, "ph": "e", "ts": row.finish_s * US})
    ev += _fault_events(res)
    return {"traceEvents": ev, "displayTimeUnit": "ms",
            "metadata": {"scenario": res.scenario.file, "stage_slices": n,
                         "stage_slices_written": keep, "truncated": n > keep}}


def _fault_events(res: EngineResult) -> list[dict]:
    log = res.faults
    if log is None:
        return []
    ev = _meta(FAULTS_PID, "faults", sort=999)
    t_end = res.window[1]
    for rec in log.records:
        tid = FAULT_TID0 + rec.index
        ev += _meta(FAULTS_PID, f"fault {rec.index}: {rec.kind} ({rec.target})", tid=tid)
        if rec.start > t_end:
            continue
        end = min(rec.end if rec.end is not None else t_end, t_end)
        args = {"target": rec.target, "effect": "; ".join(rec.effect)}
        if end > rec.start:
            ev.append({"ph": "X", "pid": FAULTS_PID, "tid": tid, "cat": "fault",
                       "name": rec.kind, "ts": rec.start * US, "dur": (end - rec.start) * US,
                       "args": args})
        else:
            ev.append({"ph": "i", "s": "t", "pid": FAULTS_PID, "tid": tid, "cat": "fault",
                       "name": rec.kind, "ts": rec.start * US, "args": args})
    stops_tid = FAULT_TID0 + len(log.records)
    if log.stops:
        ev += _meta(FAULTS_PID, "replica stops and restarts", tid=stops_tid)
    for st in log.stops:
        ev.append({"ph": "i", "s": "g", "pid": FAULTS_PID, "tid": stops_tid, "cat": "fault",
                   "name": f"replica {st.replica} stopped", "ts": st.time * US,
                   "args": {"reason": st.reason, "requests_failed": st.requests_failed,
                            "fault": st.fault}})
    for t, r in log.restarts:
        ev.append({"ph": "i", "s": "g", "pid": FAULTS_PID, "tid": stops_tid, "cat": "fault",
                   "name": f"replica {r} restarted", "ts": t * US})
    return ev


def write_trace(res: EngineResult, tables: Tables, path: Path) -> Path:
    data = trace_events(res, tables)
    return atomic_write(Path(path), lambda p: p.write_text(json.dumps(data)))
