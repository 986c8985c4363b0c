"""The overload verdict (results/load.py): the issue's reproduction, a run that keeps up, the
verdict on synthetic queues whose answer is known, and the line-length count against a
brute-force count."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import BASE, one_server
from sim.api import simulate
from sim.results.load import judge, waiting_at
from sim.spec import scenario_from_dict

# The issue's reproduction: Llama-3.1-405B on two HGX H200 nodes, PP2 x TP8, prompts of about
# 2,000 tokens, 10 requests/s; the deployment completes far fewer.
LLAMA_405B = {
    "version": 1, "name": "405b pp2 tp8", "seed": 0, "hardware": "hgx-h200", "racks": 2,
    "model": "llama-3.1-405b",
    "layout": {"tensor_parallel": 8, "pipeline_parallel": 2, "microbatches": 2},
    "workload": {"arrival": {"process": "poisson", "rate_per_s": 10},
                 "prompt_tokens": {"dist": "uniform", "low": 1500, "high": 2500},
                 "output_tokens": {"dist": "lognormal", "mean_tokens": 300, "sigma": 0.8,
                                   "max_tokens": 4096},
                 "duration_s": 40, "warmup_s": 5},
    "batching": {"policy": "continuous", "max_batch": 256},
    "price_per_gpu_hour": 2.0,
}


def run_405b(rate: float, duration: float, **extra):
    d = copy.deepcopy(LLAMA_405B)
    d["workload"]["arrival"]["rate_per_s"] = rate
    d["workload"]["duration_s"] = duration
    d.update(extra)
    return simulate(scenario_from_dict(d)).summary


@pytest.fixture(scope="module")
def flooded():
    return run_405b(10, 40), run_405b(10, 80)


def test_issue_reproduction_is_overloaded(flooded):
    short, long = flooded
    for sm in (short, long):
        assert sm["overloaded"] is True
        assert sm["load"]["verdict"] == "overloaded" and sm["load"]["reasons"]
        assert sm["arrival_rate"] == pytest.approx(10, rel=0.15)
        assert sm["completion_rate"] < 0.5 * sm["arrival_rate"]
        assert "overloaded" in sm["load"]["text"] and "/s" in sm["load"]["text"]
        assert sm["in_flight_end"] == sm["requests_in_flight"]
    # the backlog grows with the duration, as overload does
    assert long["in_flight_end"] > 1.5 * short["in_flight_end"]


def test_percentiles_say_what_they_leave_out(flooded):
    sm = flooded[0]
    cov = sm["latency_coverage"]
    assert cov["requests"] == sm["ttft_s"]["count"]
    assert cov["requests"] + cov["unfinished_after_warmup"] <= cov["arrived_after_warmup"]
    assert cov["unfinished_after_warmup"] > 10 * max(cov["requests"], 1)
    # the unfinished have waited longer than the survivors' quoted TTFT
    assert sm["in_flight_age_s"]["p90"] > (sm["ttft_s"]["p90"] or 0.0)


def test_same_deployment_at_a_low_rate_keeps_up():
    sm = run_405b(1.0, 80)
    assert sm["overloaded"] is False and sm["load"]["reasons"] == []
    assert sm["completion_rate"] == pytest.approx(sm["arrival_rate"], rel=0.25)
    assert sm["in_flight_end"] < 3 * sm["load"]["in_flight_stable"] + 5


def test_nothing_completed_has_no_price_and_a_warning():
    d = copy.deepcopy(BASE)
    d["workload"] = {**d["workload"], "duration_s": 0.3, "warmup_s": 0.05,
                     "output_tokens": {"dist": "fixed", "value": 100000}}
    d["batching"] = {"policy": "continuous", "max_batch": 64}
    sm = simulate(scenario_from_dict(d)).summary
    assert sm["requests_completed"] == 0 and sm["output_tokens_per_s"] > 0
    assert sm["cost_per_million_tokens"] is None
    assert any("no request completed" in w for w in sm["warnings"])


def test_goodput_and_slo_verdict():
    d = one_server(1.0, 0.2, 64, arrival={"process": "poisson", "rate_per_s": 100},
                   output_tokens={"dist": "fixed", "value": 16})
    loose = simulate(scenario_from_dict({**d, "slo": {"ttft_p99": "1 h"}})).summary
    tight = simulate(scenario_from_dict({**d, "slo": {"ttft_p99": "1 us",
                                                      "tpot_p50": "1 h"}})).summary
    none = simulate(scenario_from_dict(d)).summary
    window = loose["window_s"][1] - loose["window_s"][0]
    assert loose["slo_met"] is True and loose["slo_misses"] == []
    assert loose["goodput_requests_per_s"] == pytest.approx(loose["ttft_s"]["count"] / window)
    assert tight["slo_met"] is False and tight["goodput_requests_per_s"] == 0.0
    assert any("TTFT p99" in m for m in tight["slo_misses"])
    assert none["slo"] is None and none["goodput_requests_per_s"] is None


# --------------------------------------------------------------------------- synthetic queues


def frame(arrival, first, finish=None):
    n = len(arrival)
    finish = np.asarray(first) + 1.0 if finish is None else finish
    status = np.where(np.isfinite(finish), "completed",
                      np.where(np.isfinite(first), "running", "waiting"))
    return pd.DataFrame({"arrival_s": arrival, "admitted_s": arrival, "first_token_s": first,
                         "finish_s": np.where(np.isfinite(finish), finish, np.nan),
                         "failed_s": np.full(n, np.nan),
                         "status": pd.Categorical(status)})


def fifo_server(rate_in: float, rate_out: float, horizon: float, seed: int):
    """Poisson arrivals; first tokens served one at a time at exponential rate_out (M/M/1)."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / rate_in, int(rate_in * horizon * 1.5)))
    arrival = arrival[arrival < horizon]
    first = np.empty_like(arrival)
    free = 0.0
    for i, a in enumerate(arrival):
        free = max(free, a) + rng.exponential(1 / rate_out)
        first[i] = free
    first[first >= horizon] = np.inf
    finish = np.where(first + 0.1 < horizon, first + 0.1, np.inf)
    return frame(arrival, first, finish)


@pytest.mark.parametrize("seed", range(4))
def test_stable_mm1_queue_keeps_up(seed):
    req = fifo_server(rate_in=50, rate_out=100, horizon=200, seed=seed)
    done = int(((req.status == "completed") & (req.finish_s >= 20)).sum())
    v = judge(req, (20, 200), int((req.arrival_s >= 20).sum()), 0, done, 0.2)
    assert not v.overloaded, v.reasons


@pytest.mark.parametrize("seed", range(4))
def test_overloaded_mm1_queue_is_caught(seed):
    req = fifo_server(rate_in=60, rate_out=50, horizon=200, seed=seed)   # 20% over
    done = int(((req.status == "completed") & (req.finish_s >= 20)).sum())
    v = judge(req, (20, 200), int((req.arrival_s >= 20).sum()), 0, done, 0.2)
    assert v.overloaded and v.queue_second_half > v.queue_first_half


def test_drops_alone_are_overload():
    req = fifo_server(rate_in=50, rate_out=100, horizon=50, seed=0)
    v = judge(req, (5, 50), int((req.arrival_s >= 5).sum()) + 3, 3, 1000, 0.2)
    assert v.overloaded and "turned away" in v.reasons[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 5), st.booleans()), min_size=1,
                max_size=40),
       st.lists(st.floats(0, 16), min_size=1, max_size=10))
def test_waiting_at_counts_like_brute_force(rows, times):
    arrival = np.array([a for a, _, _ in rows])
    first = np.array([a + d if served else np.inf for a, d, served in rows])
    req = frame(arrival, first, np.full(len(rows), np.inf))
    t = np.array(times)
    brute = [sum(1 for a, f in zip(arrival, first) if a <= x < f) for x in t]
    assert list(waiting_at(req, t)) == brute


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
