"""Layer trains (a stage-step as one event while its links are its own) give the same
results as running every layer's collectives as events, contended or not."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import simpy

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


def _four_gpu_domains(**layout):
    d = small_run()
    d["hardware"] = copy.deepcopy(TOY_HARDWARE)
    d["hardware"]["scale_up"]["domain_gpus"] = 4   # each EP 8 stage spans two domains
    d["engine"] = {"trace_detail_steps": 0}
    if layout:
        d["layout"] = layout
    return d


@pytest.mark.parametrize("layout, dispatch", [
    ({}, "per_expert"),
    ({"expert_parallel": 4, "tensor_parallel": 2, "pipeline_parallel": 2, "microbatches": 2},
     "hierarchical")])
def test_pipelines_whose_stages_share_the_fabric_match_layer_by_layer(layout, dispatch):
    """Stage groups spanning two domains: their all-to-alls and the stage-boundary sends
    meet on the scale-out links, so trains (stage-steps and boundary sends) split, some in
    the middle of a transfer, and the results still match flow by flow."""
    d = _four_gpu_domains(**layout)
    d["moe"] = {"dispatch": dispatch}
    a, b = pair(d)
    same(a, b)
    assert a.summary["layer_trains"]["split"] > 0


def test_compaction_while_flows_share_links_is_exact(monkeypatch):
    """Compacting the saturation log while shared flows have not logged their latest
    interval must not count any time twice: one-train batches and a one-row log give the
    defaults' tier saturation."""
    import sim.engine.network as network

    d = _four_gpu_domains()
    ref = simulate(scenario_from_dict(copy.deepcopy(d))).summary
    monkeypatch.setattr(network, "SETTLE_BATCH", 1)
    monkeypatch.setattr(network, "SAT_LOG_ROWS", 1)
    tiny = simulate(scenario_from_dict(d)).summary
    assert ref["layer_trains"]["split"] > 0
    for tier, v in ref["link_utilisation"].items():
        assert tiny["link_utilisation"][tier]["saturated_fraction"] == pytest.approx(
            v["saturated_fraction"], rel=1e-9, abs=1e-12)


def test_a_split_as_its_transfer_is_due_is_not_lost():
    """A flow claims a train's link at the instant its wait ends: the transfer has not
    started, so the train hands back a finished wait and the caller starts the transfer
    as a shared flow; every byte arrives and the two share the link fairly."""
    import simpy

    from sim.engine.network import Network, TrainShape

    env = simpy.Environment()
    net = Network(env, np.array([1.0]), np.array([0]))
    p = net.prepare(np.array([0]), np.array([2.0]))   # 2 s alone, after a 1 s wait
    q = net.prepare(np.array([0]), np.array([1.0]))
    ends = {}

    def train():
        res = yield net.start_train(np.array([1.0]), TrainShape(np.array([0])), [p], ["x"])
        assert res is not None and res[0] == 0 and res[2] is None   # split, not started
        yield env.timeout(res[1])
        yield net.start(p, "x")
        ends["train"] = env.now

    def other():
        yield env.timeout(1.0)
        yield net.start(q, "y")
        ends["other"] = env.now

    env.process(train())
    env.process(other())
    env.run()
    assert ends == {"other": pytest.approx(3.0), "train": pytest.approx(4.0)}
    assert net.bytes_injected == pytest.approx(3.0) and net.bytes_delivered == pytest.approx(3.0)


def test_one_routing_draw_per_microbatch_step_shared_by_its_stages(monkeypatch):
    """Every stage of a microbatch step uses the step's one routing draw (as without
    pipelining, one draw serves every MoE layer), and stages with the same pattern of
    domains share one dispatch matrix: with PP 2, a draw per step, not per stage."""
    import sim.engine.simulation as simulation
    from sim.engine.simulation import Simulation

    draws, matrices = [], []
    real_draw, real_matrix = simulation.draw_routing, simulation.dispatch_matrix
    monkeypatch.setattr(simulation, "draw_routing",
                        lambda *a: draws.append(1) or real_draw(*a))
    monkeypatch.setattr(simulation, "dispatch_matrix",
                        lambda *a: matrices.append(1) or real_matrix(*a))
    d = small_run()                         # EP 8 x PP 2, 2 microbatches
    sim = Simulation(scenario_from_dict(d))
    sim.run()
    steps = len(sim.step_rows["start"])     # finished steps (a few may be cut at the end)
    in_flight = sim.R * sim.M
    assert sim.P == 2 and steps > 10
    assert steps <= len(draws) <= steps + in_flight
    assert len(matrices) == len(draws)


def _mid_dispatch(d: dict, replica: int, after: float) -> float:
    """The middle of the first dispatch of `replica` starting after `after` in the run of
    `d` without faults: a fault there strikes a transfer in progress (the run up to a
    fault does not depend on it)."""
    x = copy.deepcopy(d)
    x["faults"] = []
    x["engine"] = {"trace_detail_steps": 10**6}
    res = simulate(scenario_from_dict(x)).result
    a, b = min((a, b) for r, _, name, a, b in res.phases
               if r == replica and name == "dispatch" and a > after)
    return (a + b) / 2


@pytest.mark.parametrize("faults, mid_transfer", [
    ([{"kind": "link_degraded", "tier": "scale_up", "rack": 0, "factor": 0.25,
       "start": 0.1, "end": 0.2},
      {"kind": "link_down", "tier": "scale_up", "gpu": 3, "start": 0.15, "end": 0.3},
      {"kind": "straggler", "gpu": 10, "slowdown": 2, "start": 0.2},
      {"kind": "gpu_lost", "gpu": 12, "start": 0.3, "policy": "restart_replica",
       "restart_after": 0.1}], False),
    # GPU 2's NIC goes down in the middle of a dispatch of its replica (replica 0, whose
    # EP 8 spans both 4-GPU domains): the train's transfer re-routes in flight
    ([{"kind": "link_down", "tier": "scale_out", "gpu": 2, "start": None, "end": 0.25},
      {"kind": "link_degraded", "tier": "scale_out", "rack": 1, "factor": 0.5,
       "start": 0.2, "end": 0.3}], True)])
def test_faults_split_trains_and_results_match_layer_by_layer(faults, mid_transfer):
    """A fault splits the trains running when it strikes (their transfer in progress
    re-routes as a shared flow); later steps run as trains on the new routes and
    capacities. Everything matches the flow-by-flow run, failures and faults included."""
    d = small_run()
    d["racks"] = 2
    d["hardware"] = copy.deepcopy(TOY_HARDWARE)
    d["hardware"]["scale_up"]["domain_gpus"] = 4   # EP 8 over two domains: scale-out used
    d["layout"] = {"expert_parallel": 8, "data_parallel": 2}
    d["workload"] = {**d["workload"], "duration_s": 0.5}
    d["engine"] = {"trace_detail_steps": 0}
    faults = copy.deepcopy(faults)
    if mid_transfer:
        faults[0]["start"] = _mid_dispatch(d, replica=0, after=0.1)
    d["faults"] = faults
    a, b = pair(d)
    same(a, b)
    assert a.summary["layer_trains"]["run"] > 10 and a.summary["layer_trains"]["split"] > 0
    for k in ("requests_failed", "requests_completed", "faults"):
        assert a.summary[k] == b.summary[k]
    assert a.tables.faults.equals(b.tables.faults)
    if mid_transfer:
        assert a.summary["faults"]["flows_rerouted_in_flight"] >= 1


@pytest.mark.parametrize("layout, racks, domain", [
    ({"expert_parallel": 8, "pipeline_parallel": 2, "microbatches": 2}, 2, 8),
    ({"expert_parallel": 4, "pipeline_parallel": 4, "microbatches": 4}, 2, 8),   # 2 a rack
    ({"expert_parallel": 8, "pipeline_parallel": 2, "data_parallel": 2}, 4, 8),
    # each stage's EP group spans two domains: NIC and spine links are mapped too
    ({"expert_parallel": 8, "pipeline_parallel": 2, "microbatches": 2}, 2, 4)])
def test_stages_laid_out_alike_share_transfers_with_identical_results(layout, racks, domain,
                                                                      monkeypatch):
    """A stage whose GPUs sit like an earlier stage's takes that stage's dispatch and
    combine with its link ids mapped: every figure is what computing them gives."""
    import sim.engine.simulation as engine

    d = small_run()
    d["layout"], d["racks"] = layout, racks
    d["hardware"] = {**TOY_HARDWARE, "scale_up": {**TOY_HARDWARE["scale_up"],
                                                  "domain_gpus": domain},
                     "scale_out": {**TOY_HARDWARE["scale_out"], "topology": "rail_optimized",
                                   "oversubscription": 2.0}}
    d["engine"] = {"trace_detail_steps": 5}
    runs, mapped = [], []
    real = engine.Simulation._mapped

    def counting(self, x, m):
        y = real(self, x, m)
        mapped.append(self.cluster.tier[y.prep.links].max() if y.prep is not None else 0)
        return y

    monkeypatch.setattr(engine.Simulation, "_mapped", counting)
    for share in (True, False):
        monkeypatch.setattr(engine, "SHARE_STAGE_TRANSFERS", share)
        runs.append(simulate(scenario_from_dict(copy.deepcopy(d))))
        if share:
            assert len(mapped) > 20            # stages did share
            assert (max(mapped) > 0) == (domain < layout["expert_parallel"])   # scale-out
    a, b = runs
    pd.testing.assert_frame_equal(a.steps, b.steps)
    pd.testing.assert_frame_equal(a.links, b.links)
    pd.testing.assert_frame_equal(a.gpus, b.gpus)
    pd.testing.assert_frame_equal(a.tables.link_series, b.tables.link_series)
    sa, sb = dict(a.summary), dict(b.summary)
    sa.pop("wall_time_s"), sb.pop("wall_time_s")
    assert sa == sb and len(a.steps) > 10


def test_link_map_maps_alike_groups_and_refuses_others():
    """Exchanges among group b are those among a with links mapped, figure for figure; groups
    not laid out alike (domains split differently, other capacities) get no map."""
    from sim.cluster.topology import build_cluster
    from sim.engine import collectives as coll
    from sim.engine.network import Network
    from sim.spec.scenario import scenario_from_dict as load

    hw = load({**small_run(), "racks": 4}).hardware
    cl = build_cluster(hw, 4)                         # 4 racks of 8, one domain each
    net = Network(simpy.Environment(), cl.capacity, cl.tier, nonbinding=cl.nonbinding)
    rng = np.random.default_rng(0)
    a, b = np.arange(8), np.arange(16, 24)
    m = coll.link_map(cl, a, b)
    assert m is not None
    for mat in (rng.random((8, 8)), np.diag(np.ones(7), 1)):
        fa, ra = coll.exchange_pair(cl, a, mat)
        fb, rb = coll.exchange_pair(cl, b, mat)
        for ta, tb in ((fa, fb), (ra, rb)):
            pa, pb = net.prepare(ta.links, ta.load), net.prepare(tb.links, tb.load)
            pm = net.mapped(pa, m)
            for f in pa.__slots__:
                assert np.array_equal(np.asarray(getattr(pm, f)), np.asarray(getattr(pb, f))), f
    # half in one rack, half in another: a different layout of domains
    assert coll.link_map(cl, a, np.r_[np.arange(4), np.arange(8, 12)]) is None
    cap = cl.capacity.copy()
    cap[cl.su_up[20]] /= 2                            # one GPU's port slower
    from dataclasses import replace
    assert coll.link_map(replace(cl, capacity=cap), a, b) is None
