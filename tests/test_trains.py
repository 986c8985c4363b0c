"""Layer trains (a stage-step as one event while its links are its own) give the same
results as running every layer's collectives as events, contended or not."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from conftest import TOY_HARDWARE, small_run
from sim.api import simulate
from sim.spec.scenario import scenario_from_dict


def pair(d: dict):
    runs = []
    for trains in (True, False):
        x = copy.deepcopy(d)
        x.setdefault("engine", {})["layer_trains"] = trains
        runs.append(simulate(scenario_from_dict(x)))
    return runs


def same(a, b, peaks=True):
    sa, sb = a.steps, b.steps
    assert len(sa) == len(sb) > 10
    assert sa.duration_s.to_numpy() == pytest.approx(sb.duration_s.to_numpy(), rel=1e-9)
    for k in ("output_tokens_per_s", "input_tokens_per_s", "requests_completed"):
        assert a.summary[k] == pytest.approx(b.summary[k], rel=1e-9)
    la, lb = a.links, b.links
    cols = ("bytes_moved", "mean_utilisation", "saturated_fraction") + \
        (("peak_utilisation",) if peaks else ())
    for col in cols:
        if col in la:
            assert la[col].to_numpy() == pytest.approx(lb[col].to_numpy(), rel=1e-6, abs=1e-9)
    for tier, v in a.summary["link_utilisation"].items():
        v, w = dict(v), dict(b.summary["link_utilisation"][tier])
        if not peaks:
            v.pop("peak"), w.pop("peak")
        assert v == pytest.approx(w, rel=1e-6, abs=1e-9)
    # the per-tier series, averaged, agrees too (it is rebuilt from the trains' steps)
    end = a.scenario.workload.duration_s
    ta, tb = a.tables.link_series, b.tables.link_series
    for tier in ta.columns[1:]:
        wa = np.diff(ta.time_s.to_numpy(), append=end) @ ta[tier].to_numpy()
        wb = np.diff(tb.time_s.to_numpy(), append=end) @ tb[tier].to_numpy()
        assert wa == pytest.approx(wb, rel=1e-6, abs=1e-12)


def test_uncontended_pipeline_matches_layer_by_layer():
    d = small_run()                   # EP 8 x PP 2 over two racks, stage-boundary sends
    d["engine"] = {"trace_detail_steps": 0}
    a, b = pair(d)
    same(a, b)
    assert a.summary["sim_events"] < b.summary["sim_events"] / 5
    assert a.summary["layer_trains"]["run"] > 10 and a.summary["layer_trains"]["split"] == 0
    assert b.summary["layer_trains"]["run"] == 0


def test_contended_replicas_split_their_trains_and_still_match():
    """Two replicas whose EP groups both span the two racks share the scale-out leaves:
    trains meet, split, and the rest runs as shared flows."""
    d = small_run()
    d["layout"] = {"expert_parallel": 8, "data_parallel": 2, "microbatches": 1}
    d["hardware"] = {**TOY_HARDWARE, "scale_up": {**TOY_HARDWARE["scale_up"]},
                     "gpus_per_rack": 8}
    d["racks"] = 2
    d["hardware"]["scale_up"]["domain_gpus"] = 4   # each EP group spans two domains ...
    d["hardware"]["scale_out"] = {**TOY_HARDWARE["scale_out"], "topology": "rail_optimized",
                                  "oversubscription": 2.0}   # leaves that can bind
    # ... whose rails (leaves) both replicas share
    a, b = pair(d)
    same(a, b)
    assert a.summary["link_utilisation"]["scale_out"]["saturated_fraction"] > 0
    assert a.summary["layer_trains"]["split"] > 0


def test_non_blocking_leaves_do_not_split_trains():
    """Shared leaves whose capacity covers all their NICs can never bind: trains keep going
    over them and every figure but the per-link peak (a train's own) is the same."""
    d = small_run()
    d["layout"] = {"expert_parallel": 8, "data_parallel": 2, "microbatches": 1}
    d["hardware"] = copy.deepcopy(TOY_HARDWARE)
    d["hardware"]["scale_up"]["domain_gpus"] = 4
    d["hardware"]["scale_out"] = {**TOY_HARDWARE["scale_out"], "topology": "rail_optimized"}
    a, b = pair(d)
    same(a, b, peaks=False)
    assert a.summary["layer_trains"]["split"] == 0 < a.summary["layer_trains"]["run"]


@pytest.mark.parametrize("batch, rows", [(1, 10**9), (3, 20)])
def test_batched_statistics_and_compaction_change_nothing(monkeypatch, batch, rows):
    """Finished trains' link statistics are logged in batches and the saturation log is
    compacted as it grows: with tiny batches and a tiny log the results still match the
    layer-by-layer run."""
    import sim.engine.network as network

    monkeypatch.setattr(network, "SETTLE_BATCH", batch)
    monkeypatch.setattr(network, "SAT_LOG_ROWS", rows)
    d = small_run()
    d["engine"] = {"trace_detail_steps": 0}
    a, b = pair(d)
    same(a, b)
    # the events trains resolved stand for at least as many events flow by flow
    resolved = a.summary["sim_events"] + a.summary["layer_trains"]["events_resolved"]
    assert a.summary["layer_trains"]["events_resolved"] > 0
    assert resolved <= b.summary["sim_events"]


def test_pool_saturation_log_compaction_changes_nothing(monkeypatch):
    """The shared flows' saturation intervals are compacted too once the log grows (memory
    stays flat in contended runs): a tiny log gives the same tier saturation."""
    import sim.engine.network as network

    d = small_run()
    d["layout"] = {"expert_parallel": 8, "data_parallel": 2, "microbatches": 1}
    d["hardware"] = copy.deepcopy(TOY_HARDWARE)
    d["hardware"]["gpus_per_rack"] = 8
    d["racks"] = 2
    d["hardware"]["scale_up"]["domain_gpus"] = 4
    d["hardware"]["scale_out"] = {**TOY_HARDWARE["scale_out"], "topology": "rail_optimized",
                                  "oversubscription": 2.0}
    d["engine"] = {"layer_trains": False}
    ref = simulate(scenario_from_dict(copy.deepcopy(d))).summary["link_utilisation"]
    monkeypatch.setattr(network, "SAT_LOG_ROWS", 3)
    small = simulate(scenario_from_dict(d)).summary["link_utilisation"]
    assert ref["scale_out"]["saturated_fraction"] > 0
    for tier in ref:
        assert small[tier]["saturated_fraction"] == pytest.approx(
            ref[tier]["saturated_fraction"], rel=1e-9, abs=1e-12)
