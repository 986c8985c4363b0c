"""Hypothesis properties of the engine: more hardware is never slower, more load never
shortens the queue."""

import copy

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import BASE
from sim.engine.simulation import simulate
from sim.results.tables import build_tables
from sim.spec import scenario_from_dict


def saturated_moe(scale_flops=1.0, scale_hbm=1.0, scale_up=1.0, scale_out=1.0, ep=8):
    d = copy.deepcopy(BASE)
    hw = d["hardware"]
    hw["gpu"] = {**hw["gpu"], "flops": hw["gpu"]["flops"] * scale_flops,
                 "hbm_bandwidth": hw["gpu"]["hbm_bandwidth"] * scale_hbm}
    hw["scale_up"] = {**hw["scale_up"], "bandwidth_per_gpu": 450e9 * scale_up}
    hw["scale_out"] = {**hw["scale_out"], "bandwidth_per_gpu": 50e9 * scale_out}
    d["model"] = {**d["model"], "moe": {"experts": 16, "top_k": 2, "moe_layers": 32}}
    d["layout"] = {"expert_parallel": ep}
    d["racks"] = 2
    d["workload"] = {"arrival": {"process": "closed", "concurrency": 128},
                     "prompt_tokens": {"dist": "fixed", "value": 1},
                     "output_tokens": {"dist": "fixed", "value": 4000},
                     "duration_s": 0.1, "warmup_s": 0.005}
    d["batching"] = {"policy": "continuous", "max_batch": 128}
    d["moe"] = {"routing": {"dist": "zipf", "exponent": 1.0}}
    return scenario_from_dict(d)


def step_times(s):
    res = simulate(s)
    return np.asarray(res.steps["end"]) - np.asarray(res.steps["start"])


factor = st.floats(1.0, 8.0)


@settings(max_examples=12, deadline=None)
@given(which=st.sampled_from(["scale_flops", "scale_hbm", "scale_up", "scale_out"]),
       f=factor, ep=st.sampled_from([8, 16]))
def test_more_bandwidth_or_flops_is_never_slower(which, f, ep):
    """Same scenario and seed, one resource scaled up: no step gets longer, and the faster
    cluster does at least as many steps in the same time."""
    base = step_times(saturated_moe(ep=ep))
    fast = step_times(saturated_moe(ep=ep, **{which: f}))
    n = min(len(base), len(fast))
    assert len(base) > 20, "enough steps to mean something"
    assert len(fast) >= len(base)
    assert (fast[:n] <= base[:n] * (1 + 1e-9)).all()


def queue_waits(concurrency):
    d = copy.deepcopy(BASE)
    d["layout"] = {"expert_parallel": 8}
    d["racks"] = 1
    d["workload"] = {"arrival": {"process": "closed", "concurrency": concurrency},
                     "prompt_tokens": {"dist": "fixed", "value": 16},
                     "output_tokens": {"dist": "fixed", "value": 8},
                     "duration_s": 0.2, "warmup_s": 0.02}
    d["batching"] = {"policy": "continuous", "max_batch": 16}
    sm = build_tables(simulate(scenario_from_dict(d))).summary
    return sm["queue_wait_s"]


@settings(max_examples=10, deadline=None)
@given(c1=st.integers(1, 64), extra=st.integers(1, 64))
def test_more_load_never_lowers_queue_wait(c1, extra):
    lo, hi = queue_waits(c1), queue_waits(c1 + extra)
    for q in ("p50", "p90", "p99"):
        assert hi[q] >= lo[q] - 1e-12, (q, lo, hi)
