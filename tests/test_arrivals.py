"""Open arrivals offered in batches (Simulation._catch_up: ahead of the clock, no event per
request) give exactly the results of offering each at its own event: the same requests,
admissions, drops, steps and counts, when microbatches idle, queues overflow, replicas
stop and restart, and runs end after a number of requests."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

import sim.engine.simulation as engine
from conftest import BASE, small_run
from sim.api import simulate
from sim.spec.scenario import scenario_from_dict


def both_ways(d: dict, monkeypatch):
    runs = []
    for batched in (True, False):
        monkeypatch.setattr(engine, "BATCH_ARRIVALS", batched)
        runs.append(simulate(scenario_from_dict(copy.deepcopy(d))))
    return runs


def identical(a, b) -> None:
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.steps, b.steps)
    sa, sb = dict(a.summary), dict(b.summary)
    for k in ("wall_time_s", "sim_events", "layer_trains"):   # how it ran, not what
        sa.pop(k, None), sb.pop(k, None)
    assert sa == sb


def light_load():
    d = small_run()   # microbatches idle between requests: arrivals must wake them on time
    d["workload"] = {**d["workload"], "arrival": {"process": "poisson", "rate_per_s": 40},
                     "duration_s": 0.6}
    return d


def fixed_interval():
    d = copy.deepcopy(BASE)
    d["workload"] = {**d["workload"], "duration_s": 0.5, "warmup_s": 0.1,
                     "arrival": {"process": "poisson", "rate_per_s": 500},
                     "output_tokens": {"dist": "uniform", "low": 2, "high": 9}}
    return d


def flood():
    d = small_run()   # queues fill up: arrivals are dropped one by one
    d["workload"] = {**d["workload"], "arrival": {"process": "poisson", "rate_per_s": 20000}}
    d["batching"] = {"policy": "continuous", "max_batch": 16, "max_queue": 40}
    return d


def lost_and_restarted():
    d = small_run()   # while one replica is down, arrivals go to the other
    d["racks"] = 1
    d["layout"] = {"expert_parallel": 4, "data_parallel": 2}
    d["workload"] = {**d["workload"], "duration_s": 0.6, "warmup_s": 0}
    d["faults"] = [{"kind": "gpu_lost", "gpu": 1, "start": 0.2, "policy": "restart_replica",
                    "restart_after": 0.1}]
    return d


def three_replicas():
    d = small_run()   # round robin over a count that does not divide the batches
    d["racks"] = 3
    d["layout"] = {"expert_parallel": 8, "data_parallel": 3}
    d["workload"] = {**d["workload"], "arrival": {"process": "poisson", "rate_per_s": 700}}
    return d


@pytest.mark.parametrize("make", [light_load, fixed_interval, flood, lost_and_restarted,
                                  three_replicas])
def test_batched_arrivals_change_nothing(make, monkeypatch):
    a, b = both_ways(make(), monkeypatch)
    identical(a, b)
    assert len(a.requests) > 20


def test_flood_drops_and_light_load_idles(monkeypatch):
    """The cases above reach what they are for: drops under the flood (where, with no
    microbatch ever idle, batching saves at least an event per arrival), and idle
    microbatches that arrivals must wake."""
    a, b = both_ways(flood(), monkeypatch)
    assert a.summary["requests_dropped"] > 100
    saved = b.summary["sim_events"] - a.summary["sim_events"]
    assert saved >= a.summary["requests_arrived"]
    monkeypatch.setattr(engine, "BATCH_ARRIVALS", True)
    light = simulate(scenario_from_dict(light_load()))
    steps = light.steps
    gaps = steps.start.to_numpy()[1:] - steps["end"].to_numpy()[:-1]
    assert (gaps > 1e-3).sum() > 5     # the replica waited for work many times


def test_request_count_runs_offer_each_arrival_on_time(monkeypatch):
    """A run that ends after N requests ends at the same instant either way."""
    d = flood()
    d["workload"] = {**d["workload"], "duration_s": None, "requests": 400, "warmup_s": 0}
    a, b = both_ways(d, monkeypatch)
    identical(a, b)
    assert a.summary["requests_dropped"] > 0


def test_arrivals_tied_with_other_events_come_first_either_way(tmp_path, monkeypatch):
    """A trace whose every arrival ties with something: departures of a fixed interval (two
    microbatches, every 10 ms), a GPU lost and its replica restarted at arrival instants,
    and a last row at exactly duration_s. The rule: an arrival comes before the other events
    of its instant, and the run covers [0, duration_s). Batched offering follows it as the
    reference does (each arrival at its own event, offered by nothing else)."""
    rows = ["arrival_s,prompt_tokens,output_tokens"]
    rows += [f"{k / 100:.2f},64,3" for k in range(41)]          # 0.00 .. 0.40
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    d = small_run()
    d["racks"] = 1
    d["layout"] = {"expert_parallel": 4, "data_parallel": 2, "microbatches": 2,
                   "pipeline_parallel": 1}
    d["batching"] = {"policy": "fixed_interval", "interval": "20 ms", "max_batch": 64}
    d["workload"] = {"arrival": {"process": "trace", "path": str(tmp_path / "t.csv")},
                     "prompt_tokens": {"dist": "trace"}, "output_tokens": {"dist": "trace"},
                     "duration_s": 0.4, "warmup_s": 0.0}
    d["faults"] = [{"kind": "gpu_lost", "gpu": 1, "start": 0.2,      # replica 0
                    "policy": "restart_replica", "restart_after": 0.1}]
    a, b = both_ways(d, monkeypatch)
    identical(a, b)
    assert len(a.requests) == 40                 # the row at 0.40 is not part of the run
    req = a.requests
    assert (req.replica == 1).any() and (req.status == "failed").any()
    # the arrival at the fault's instant (dealt to replica 0) came first: it joined the
    # replica, which then stopped
    at_fault = req[req.arrival_s == 0.2]
    assert len(at_fault) == 1 and at_fault.status.iloc[0] == "failed"
