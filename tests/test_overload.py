"""Overload: arrivals far beyond capacity are turned away at a bounded queue, counted, and
the run ends on time with bounded state (deterministic proxies for time and memory: events
processed and request rows stored)."""

import copy

import pytest

from conftest import BASE
from sim.api import simulate
from sim.spec import scenario_from_dict


def scenario(rate, duration=0.5, **batching):
    d = copy.deepcopy(BASE)
    d["racks"] = 1
    d["layout"] = {"expert_parallel": 8}
    d["workload"] = {**d["workload"], "arrival": {"process": "poisson", "rate_per_s": rate},
                     "duration_s": duration, "warmup_s": 0.1,
                     "output_tokens": {"dist": "fixed", "value": 32}}
    d["batching"] = {"policy": "continuous", "max_batch": 64, **batching}
    return scenario_from_dict(d)


@pytest.fixture(scope="module")
def normal_and_flooded():
    normal = simulate(scenario(rate=100))
    capacity = normal.summary["service_rate_per_s"]
    flooded = simulate(scenario(rate=100 * max(capacity, 100)))
    return normal, flooded


def test_normal_load_is_not_overloaded(normal_and_flooded):
    normal, _ = normal_and_flooded
    sm = normal.summary
    assert sm["overloaded"] is False and sm["requests_dropped"] == 0


def test_flood_is_reported_and_bounded(normal_and_flooded):
    normal, flooded = normal_and_flooded
    sm = flooded.summary
    assert sm["overloaded"] is True
    assert sm["requests_dropped"] > 0.5 * sm["requests_arrived"]
    assert sm["arrival_rate_per_s"] > 50 * sm["service_rate_per_s"]
    # every arrival is accounted for: stored (completed, running, waiting) or dropped
    req = flooded.requests
    stored_in_window = int((req.arrival_s >= 0.1).sum())
    assert stored_in_window + sm["requests_dropped"] == sm["requests_arrived"]
    # bounded state: the queue never holds more than its bound; rows stored stay small
    waiting = int((req.status == "waiting").sum())
    assert waiting <= sm["max_queue_per_replica"]
    completed = int((req.status == "completed").sum())
    running = int((req.status == "running").sum())
    assert running <= 64  # max_batch x one microbatch slot
    assert len(req) <= sm["max_queue_per_replica"] + 64 + completed
    assert len(req) < 0.25 * sm["requests_arrived"]
    # the run ends on time with work comparable to a normal run's
    assert flooded.result.window[1] == pytest.approx(0.5)
    assert flooded.result.sim_events < 3 * normal.result.sim_events + \
        2 * sm["requests_arrived"]


def test_queue_bound_is_configurable():
    run = simulate(scenario(rate=20000, max_queue=5))
    assert run.summary["max_queue_per_replica"] == 5
    assert int((run.requests.status == "waiting").sum()) <= 5
    assert run.summary["requests_dropped"] > 0


def test_request_count_mode_counts_drops_as_finished():
    d = copy.deepcopy(BASE)
    d["racks"] = 1
    d["layout"] = {"expert_parallel": 8}
    d["workload"] = {**d["workload"], "arrival": {"process": "poisson", "rate_per_s": 50000},
                     "requests": 2000, "output_tokens": {"dist": "fixed", "value": 4}}
    d["workload"].pop("duration_s")
    d["workload"]["warmup_s"] = 0.0
    d["batching"] = {"policy": "continuous", "max_batch": 64, "max_queue": 50}
    run = simulate(scenario_from_dict(d))
    sm = run.summary
    assert sm["requests_arrived"] == 2000
    assert sm["requests_completed"] + sm["requests_dropped"] == 2000
