"""From engine records to results-format.md: DataFrames (requests, GPUs, links, steps) and the
summary dictionary. Statistics are computed here, once, at the end of a run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..cluster.topology import TIER_NAMES
from ..engine.simulation import EngineResult
from ..spec.advice import layout_warnings
from .cost import run_cost
from .load import judge

STATUS = {0: "waiting", 1: "running", 2: "completed", 3: "dropped", 4: "failed"}
GPU_CATEGORIES = ("compute", "memory", "network", "bubble", "idle")


@dataclass(frozen=True)
class Tables:
    summary: dict
    requests: pd.DataFrame
    gpus: pd.DataFrame
    links: pd.DataFrame
    steps: pd.DataFrame
    link_series: pd.DataFrame
    faults: pd.DataFrame = None   # one row per scenario fault (faults.csv)


def distribution(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "count": 0}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(x.mean()),
            "count": int(len(x))}


def binned_mean(t: np.ndarray, v: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of the step function (value v[i] from t[i] to t[i+1]) over each bin."""
    if len(t) == 0:
        return np.zeros(len(edges) - 1)
    cum = np.concatenate([[0.0], np.cumsum(v[:-1] * np.diff(t))])
    k = np.clip(np.searchsorted(t, edges, side="right") - 1, 0, len(t) - 1)
    area = np.where(edges >= t[0], cum[k] + v[k] * (edges - t[k]), 0.0)
    return np.diff(area) / np.diff(edges)


def requests_frame(res: EngineResult) -> pd.DataFrame:
    r = res.requests
    n = r.n
    arrival, first, finish = r.arrival[:n], r.first_token[:n], r.finish[:n]
    out = r.output[:n]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (finish - first) / (out - 1), np.nan)
    return pd.DataFrame({
        "request": np.arange(n), "replica": r.replica[:n], "arrival_s": arrival,
        "admitted_s": r.admitted[:n], "first_token_s": first, "finish_s": finish,
        "queue_wait_s": r.admitted[:n] - arrival, "ttft_s": first - arrival,
        "tpot_s": tpot, "e2e_s": finish - arrival,
        "prompt_tokens": r.prompt[:n], "output_tokens": out,
        "status": pd.Categorical([STATUS[int(s)] for s in r.status[:n]],
                                 categories=list(STATUS.values())),
        "failed_s": r.failed_at[:n],
        "failure": _failure_reasons(res, r.cause[:n]),
    })


def _failure_reasons(res: EngineResult, cause: np.ndarray) -> pd.Categorical:
    """Why a failed request failed (its replica's stop reason); empty otherwise."""
    stops = res.faults.stops if res.faults is not None else []
    names = [""] + [f"replica {st.replica} stopped at {st.time:.9g} s: {st.reason}"
                    for st in stops]
    return pd.Categorical.from_codes(cause.astype(np.int64), categories=names)


FAULT_COLUMNS = ("fault", "kind", "target", "start_s", "end_s", "links", "gpus", "replica",
                 "requests_failed", "effect")


def faults_frame(res: EngineResult) -> pd.DataFrame:
    """faults.csv: one row per fault of the scenario and what it did."""
    recs = res.faults.records if res.faults is not None else []
    return pd.DataFrame([(f.index, f.kind, f.target, f.start, f.end, f.links, f.gpus,
                          f.replica, f.requests_failed, "; ".join(f.effect)) for f in recs],
                        columns=list(FAULT_COLUMNS))


def faults_summary(res: EngineResult, req: pd.DataFrame) -> dict:
    """summary.json's `faults`: counts by kind and what they did to the deployment (over the
    whole run, warm-up included, like faults.csv)."""
    log = res.faults
    kinds = ("link_degraded", "link_down", "straggler", "gpu_lost")
    by_kind = {k: 0 for k in kinds}
    for f in res.scenario.spec.faults:
        by_kind[f.kind] += 1
    failed = int((req["status"] == "failed").sum())
    return {
        "count": len(res.scenario.spec.faults), "by_kind": by_kind,
        "replicas_stopped": len(log.stops) if log else 0,
        "replica_restarts": len(log.restarts) if log else 0,
        "replicas_alive_at_end": res.scenario.layout.data_parallel - (
            len(log.stops) - len(log.restarts) if log else 0),
        "requests_failed": failed + (log.failed_unplaced if log else 0),
        "requests_failed_unplaced": log.failed_unplaced if log else 0,
        "transfers_rerouted": log.rerouted_transfers if log else 0,
        "bytes_rerouted": log.rerouted_bytes if log else 0.0,
        "flows_rerouted_in_flight": log.flows_rerouted_in_flight if log else 0,
    }


def gpus_frame(res: EngineResult) -> pd.DataFrame:
    cl, g = res.cluster, res.gpu_time
    role = np.full(cl.n_gpus, "", dtype=object)
    replica = np.full(cl.n_gpus, -1)
    stage = np.full(cl.n_gpus, -1)
    rank = np.full(cl.n_gpus, -1)
    pl = res.placement.gpus
    for r in range(pl.shape[0]):
        for s in range(pl.shape[1]):
            replica[pl[r, s]], stage[pl[r, s]] = r, s
            rank[pl[r, s]] = np.arange(pl.shape[2])
    role[g["used"]] = "serving"
    role[~g["used"]] = "unused"
    role[list(res.lost_gpus)] = "lost"
    df = pd.DataFrame({"gpu": np.arange(cl.n_gpus), "rack": cl.gpu_rack,
                       "domain": cl.gpu_domain, "replica": replica, "stage": stage,
                       "rank": rank, "role": role})
    for c in GPU_CATEGORIES:
        df[f"{c}_s"] = g[c]
    return df


def links_frame(res: EngineResult) -> pd.DataFrame:
    cl, st = res.cluster, res.network.stats
    window = res.window[1] - res.window[0]   # link integrals start at the end of warm-up
    scale = 1.0 / window if window > 0 else 0.0
    return pd.DataFrame({
        "link": list(cl.link_names), "tier": [TIER_NAMES[t] for t in cl.tier],
        "capacity_bytes_per_s": cl.capacity, "bytes_moved": st.bytes,
        "mean_utilisation": st.bytes / cl.capacity * scale,
        "peak_utilisation": st.peak,
        "saturated_fraction": st.saturated * scale,
    })


def steps_frame(res: EngineResult) -> pd.DataFrame:
    df = pd.DataFrame(res.steps)
    if len(df):
        df["duration_s"] = df["end"] - df["start"]
    return df


def link_series_frame(res: EngineResult) -> pd.DataFrame:
    st = res.network.stats
    n_tiers = res.network.n_tiers or len(TIER_NAMES)
    util = np.frombuffer(st.series_util, dtype=float).reshape(-1, n_tiers).copy()
    df = pd.DataFrame(util, columns=list(TIER_NAMES[:n_tiers]))
    df.insert(0, "time_s", np.frombuffer(st.series_t, dtype=float).copy())
    return df


def summarise(res: EngineResult, req: pd.DataFrame, gpus: pd.DataFrame,
              links: pd.DataFrame, steps: pd.DataFrame) -> dict:
    s = res.scenario
    t0, t1 = res.window
    window = t1 - t0
    done = (req["status"] == "completed") & (req["finish_s"] >= t0)
    measured = done & (req["arrival_s"] >= t0)
    dropped = int(((req["status"] == "dropped") & (req["arrival_s"] >= t0)).sum()) \
        + res.dropped_in_window
    in_flight = req["status"].isin(["waiting", "running"])
    failed = int(((req["status"] == "failed") & (req["arrival_s"] >= t0)).sum()) + (
        res.faults.failed_unplaced_window if res.faults is not None else 0)
    used = gpus[gpus["role"] == "serving"]
    frac = {c: float((used[f"{c}_s"] / window).mean()) if window > 0 else 0.0
            for c in GPU_CATEGORIES}
    gpu_count = s.layout.total_gpus
    out_tps = res.output_tokens / window if window > 0 else 0.0
    # per tier: mean over its links, highest peak, and the share of the window during which
    # at least one of its links was at capacity (the tier was a bottleneck somewhere)
    link_util = {}
    tier_sat = res.network.stats.tier_saturated
    for t, tier in enumerate(TIER_NAMES):
        sub = links[links["tier"] == tier]
        link_util[tier] = {
            "mean": float(sub["mean_utilisation"].mean()) if len(sub) else 0.0,
            "peak": float(sub["peak_utilisation"].max()) if len(sub) else 0.0,
            "saturated_fraction": float(tier_sat[t] / window)
            if window > 0 and t < len(tier_sat) else 0.0,
        }
    busy = ((gpus["compute_s"] + gpus["memory_s"] + gpus["network_s"]) / window).to_numpy() \
        if window > 0 else np.zeros(len(gpus))
    # priced by price_per_gpu_hour, else the hardware file's cost: and the site; no completed
    # request, no price per token (an overloaded point would otherwise look cheapest)
    money = run_cost(s.hardware.cost, s.spec.site, s.spec.price_per_gpu_hour, s.racks,
                     s.hardware.gpus_per_rack, gpu_count, busy, out_tps, bool(done.any()))
    cost = money["usd_per_million_output_tokens"] if money is not None else None
    e2e = distribution(req.loc[measured, "e2e_s"])
    load = judge(req, (t0, t1), res.arrived_in_window, dropped, int(done.sum()), e2e["p50"])
    unfinished = in_flight & (req["arrival_s"] >= t0)
    decode_steps = steps[steps["prefill_tokens"] == 0] if len(steps) else steps
    in_window = decode_steps[decode_steps["start"] >= t0] if len(decode_steps) else decode_steps
    stage_time = s.layout.pipeline_parallel * s.layout.data_parallel * window
    summary = {
        "name": s.spec.name,
        "scenario": s.file,
        "hardware": s.hardware.name, "racks": s.racks, "model": s.model.name,
        "layout": s.layout.model_dump(), "gpus": gpu_count,
        "window_s": [t0, t1],
        "requests_arrived": res.arrived_in_window,
        "requests_completed": int(done.sum()),
        "requests_dropped": dropped,
        "requests_in_flight": int(in_flight.sum()),
        "requests_failed": failed,
        # is the deployment keeping up? (results/load.py: drops, queue growth, backlog)
        "overloaded": load.overloaded,
        "arrival_rate": load.arrival_rate,
        "completion_rate": load.completion_rate,
        "in_flight_end": load.in_flight_end,
        "load": load.to_json(),
        "warnings": list(load.warnings) + list(res.warnings)
        + layout_warnings(s.model, s.layout, s.spec.engine.op_timing),
        "arrival_rate_per_s": load.arrival_rate,      # earlier names of the same figures
        "service_rate_per_s": load.completion_rate,
        "max_queue_per_replica": res.max_queue,
        "output_tokens_per_s": out_tps,
        "input_tokens_per_s": res.input_tokens / window if window > 0 else 0.0,
        "tokens_per_s_per_gpu": out_tps / gpu_count,
        "queue_wait_s": distribution(req.loc[measured, "queue_wait_s"]),
        "ttft_s": distribution(req.loc[measured, "ttft_s"]),
        "tpot_s": distribution(req.loc[measured, "tpot_s"]),
        "e2e_s": e2e,
        # what the percentiles above cover, and what they leave out
        "latency_coverage": {
            "requests": int(measured.sum()),
            "arrived_after_warmup": res.arrived_in_window,
            "unfinished_after_warmup": int(unfinished.sum()),
            "text": (f"{int(measured.sum()):,} completed of {res.arrived_in_window:,} "
                     f"arrived after warm-up; {int(unfinished.sum()):,} still in flight "
                     "at the end"),
        },
        "in_flight_age_s": distribution(t1 - req.loc[unfinished, "arrival_s"]),
        **slo_figures(s.spec.slo, req.loc[measured], window),
        "step_time_s": distribution(in_window["duration_s"] if len(in_window) else []),
        "bubble_fraction": float(res.stage_bubble.sum() / stage_time) if stage_time else 0.0,
        "gpu_time_fraction": frac,
        "link_utilisation": link_util,
        "cost_per_million_tokens": cost,
        # what the deployment costs (results/cost.py): per hour, per token, per megawatt
        "cost": money,
        "kv_capacity_tokens_per_replica": (None if not np.isfinite(res.kv_capacity_tokens)
                                           else float(res.kv_capacity_tokens)),
        "bytes_by_collective": {k: v[1] for k, v in res.transfers.items()},
        "faults": faults_summary(res, req),
        "network_solves": res.network.solves,
        "layer_trains": {"run": res.network.trains_run, "split": res.network.trains_split,
                         "events_resolved": res.network.train_events},
        "sim_events": res.sim_events,
        "wall_time_s": res.wall_time_s,
    }
    if s.spec.slo is not None and s.spec.slo.targets():
        misses = s.spec.slo.misses(summary) + (["overloaded"] if load.overloaded else [])
        summary.update(slo_met=not misses, slo_misses=misses)
    else:
        summary.update(slo_met=None, slo_misses=[])
    return summary


def slo_figures(slo, measured: pd.DataFrame, window: float) -> dict:
    """The scenario's SLO and goodput: requests per second (after warm-up) whose own TTFT,
    TPOT and end-to-end latency are each within the SLO's limit for that metric."""
    if slo is None or not slo.targets():
        return {"slo": None, "goodput_requests_per_s": None}
    ok = np.ones(len(measured), dtype=bool)
    for col, limit in slo.request_limits().items():
        v = measured[col].to_numpy(float)
        ok &= ~(v > limit)   # TPOT of a one-token request is NaN: nothing to miss
    return {"slo": slo.targets(),
            "goodput_requests_per_s": float(ok.sum()) / window if window > 0 else 0.0}


def build_tables(res: EngineResult) -> Tables:
    req = requests_frame(res)
    gpus = gpus_frame(res)
    links = links_frame(res)
    steps = steps_frame(res)
    return Tables(summarise(res, req, gpus, links, steps), req, gpus, links, steps,
                  link_series_frame(res), faults_frame(res))
