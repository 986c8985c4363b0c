"""Faults (docs/faults.md) against closed forms: capacity changes mid-flow, a degraded rack
under cross-rack EP, re-routing around a down NIC, stragglers, lost GPUs, bad fault specs,
determinism."""

import copy
import json

import numpy as np
import pytest
import simpy

from conftest import BASE, REPO, TOY_DENSE, TOY_MOE, small_run
from sim.cluster.topology import build_cluster
from sim.engine import simulation
from sim.engine.costs import Routing
from sim.engine.faults import Router, Unroutable, target_links
from sim.engine.network import Network
from sim.engine.simulation import simulate
from sim.results.tables import build_tables
from sim.results.write import summary_json, write_results
from sim.spec import scenario_from_dict
from sim.spec.hardware import Hardware
from test_bad_input import run_cli

FAST_NET = {"scale_up": {"bandwidth_per_gpu": 1e18, "latency": 0.0},
            "scale_out": {"bandwidth_per_gpu": 1e18, "latency": 0.0}}


def scenario(faults=(), hardware=None, **top):
    d = copy.deepcopy(BASE)
    if hardware:
        d["hardware"] = {**d["hardware"], **hardware}
    d.update(top)
    d["faults"] = list(faults)
    return scenario_from_dict(d)


def run(s):
    res = simulate(s)
    return res, build_tables(res)


def closed(concurrency, max_batch, duration, output=1000, prompt=1):
    """Clients whose requests outlast the run: every step carries the same batch, so steps
    of two runs line up one to one."""
    return dict(workload={"arrival": {"process": "closed", "concurrency": concurrency},
                          "prompt_tokens": {"dist": "fixed", "value": prompt},
                          "output_tokens": {"dist": "fixed", "value": output},
                          "duration_s": duration, "warmup_s": 0},
                batching={"policy": "continuous", "max_batch": max_batch})


def conserved(net):
    return net.bytes_injected == pytest.approx(
        net.bytes_delivered + net.bytes_dropped + net.bytes_in_flight(), rel=1e-12)


# ------------------------------------------------------------------ network: capacity changes


def one_link_network(capacity):
    env = simpy.Environment()
    return env, Network(env, np.array([capacity]), np.array([0]))


def test_capacity_change_mid_flow_is_piecewise():
    """S bytes on a link of capacity C halved at t1: done at t1 + (S - C t1) / (C/2), every
    byte delivered once."""
    S, C, t1 = 3e9, 1e9, 0.5
    env, net = one_link_network(C)
    end = {}

    def flow():
        yield net.transfer(np.array([0]), np.array([S]))
        end["t"] = env.now

    def fault():
        yield env.timeout(t1)
        net.set_capacity(np.array([C / 2]))

    env.process(flow())
    env.process(fault())
    env.run()
    assert end["t"] == pytest.approx(t1 + (S - C * t1) / (C / 2), rel=1e-12)
    net.finish_stats()
    assert net.bytes_delivered == net.bytes_injected == S
    assert net.stats.bytes[0] == pytest.approx(S, rel=1e-12)


def test_capacity_change_under_sharing_and_restore():
    """Two flows (1 and 0.5 bytes) share a link of capacity 1; at 0.25 it halves, at 1.25
    it is restored. Max-min shares it equally in every phase (worked out below)."""
    env, net = one_link_network(1.0)
    ends = {}

    def flow(name, size):
        yield net.transfer(np.array([0]), np.array([size]))
        ends[name] = env.now

    def fault():
        yield env.timeout(0.25)
        net.set_capacity(np.array([0.5]))
        yield env.timeout(1.0)
        net.set_capacity(np.array([1.0]))

    env.process(flow("a", 1.0))
    env.process(flow("b", 0.5))
    env.process(fault())
    env.run()
    # [0, 0.25): 0.5 each -> a 0.875, b 0.375 left; [0.25, 1.25): 0.25 each -> 0.625, 0.125;
    # [1.25, ...): 0.5 each: b ends at 1.25 + 0.25 = 1.5 (a 0.5 left), a alone at 1: 2.0
    assert ends["b"] == pytest.approx(1.5, rel=1e-12)
    assert ends["a"] == pytest.approx(2.0, rel=1e-12)
    assert net.bytes_delivered == pytest.approx(1.5, rel=1e-12)
    assert net.stats.saturated[0] == pytest.approx(2.0, rel=1e-9), "at capacity throughout"


def test_prepared_transfer_reused_after_capacity_change_uses_new_capacity():
    """A transfer prepared before a change and started after it runs at the new capacity
    (the solo fast path must not use stale figures)."""
    env, net = one_link_network(2.0)
    prep = net.prepare(np.array([0]), np.array([4.0]))
    net.set_capacity(np.array([1.0]))
    done = net.start(prep)
    env.run(done)
    assert env.now == pytest.approx(4.0, rel=1e-12)


# ------------------------------------------------------------------ routing around a down NIC

B_OUT, B_UP = 100e9, 400e9


def two_racks(topology="fat_tree"):
    hw = Hardware.model_validate({
        "name": "t", "gpu": {"flops": 1e15, "hbm_bytes": 80e9, "hbm_bandwidth": 3e12},
        "gpus_per_rack": 4,
        "scale_up": {"bandwidth_per_gpu": B_UP, "latency": 0.0},
        "scale_out": {"bandwidth_per_gpu": B_OUT, "latency": 0.0, "topology": topology}})
    return build_cluster(hw, 2)


@pytest.mark.parametrize("topology", ["fat_tree", "rail_optimized"])
def test_down_nic_traffic_goes_through_a_scale_up_peer(topology):
    """GPU 1's NIC down: its send to GPU 5 (other rack) goes GPU 1 -> GPU 2 over scale-up,
    out of GPU 2's NIC; GPU 1's NIC carries nothing; the bytes sent are unchanged."""
    c = two_racks(topology)
    router = Router(c)
    down = np.zeros(c.n_gpus, dtype=bool)
    down[1] = True
    router.set_down(down, np.zeros(c.n_gpus, dtype=bool))
    S = 1e9
    t = router.route(np.array([1]), np.array([[S]]), np.array([5]))
    load = np.bincount(t.links, weights=t.load, minlength=c.n_links)
    assert load[c.nic_up[1]] == load[c.nic_down[1]] == 0
    for link in (c.su_up[1], c.su_down[2], c.nic_up[2], c.nic_down[5]):
        assert load[link] == S
    assert load.sum() == 6 * S   # and the two leaf-spine links
    assert t.bytes_sent == S
    assert router.rerouted_transfers == 1 and router.rerouted_bytes == S


def test_in_flight_flow_reroutes_when_its_nic_goes_down():
    """A send started on GPU 1's NIC moves its remaining bytes to GPU 2's NIC at the instant
    the NIC goes down. Both paths are bottlenecked by one NIC, so it ends at S / B_OUT; GPU
    1's NIC carried B_OUT x t1 and GPU 2's the rest."""
    c = two_racks()
    env = simpy.Environment()
    net = Network(env, c.capacity, c.tier)
    router = Router(c)
    S, t1 = 1e9, 4e-3
    src, dst, m = np.array([1]), np.array([5]), np.array([[S]])
    t = router.route(src, m, dst)
    end = {}

    class Tag:
        pass

    tag = Tag()

    def flow():
        yield net.start(net.prepare(t.links, t.load), tag=tag)
        end["t"] = env.now

    def reroute(f):
        nt = router.route(src, m, dst)
        return net.prepare(nt.links, nt.load)

    def fault():
        yield env.timeout(t1)
        down = np.zeros(c.n_gpus, dtype=bool)
        down[1] = True
        router.set_down(down, np.zeros(c.n_gpus, dtype=bool))
        cap = c.capacity.copy()
        cap[target_links(c, "scale_out", 1, None)] = 0.0
        assert net.set_capacity(cap, reroute=reroute) == []

    env.process(flow())
    env.process(fault())
    env.run()
    net.finish_stats()
    assert end["t"] == pytest.approx(S / B_OUT, rel=1e-12)
    assert net.stats.bytes[c.nic_up[1]] == pytest.approx(B_OUT * t1, rel=1e-12)
    assert net.stats.bytes[c.nic_up[2]] == pytest.approx(S - B_OUT * t1, rel=1e-12)
    assert net.stats.bytes[c.su_up[1]] == pytest.approx(S - B_OUT * t1, rel=1e-12)
    assert conserved(net) and net.bytes_in_flight() == 0


def test_isolated_gpu_is_unroutable():
    c = two_racks()
    router = Router(c)
    down = np.zeros(c.n_gpus, dtype=bool)
    down[0] = True
    router.set_down(down, down)
    with pytest.raises(Unroutable, match="GPU 0"):
        router.route(np.array([0, 1]), np.ones((2, 2)))
    # a whole rack's NICs down: no peer has a NIC, cross-rack traffic has no path
    router.set_down(c.gpu_rack == 0, np.zeros(c.n_gpus, dtype=bool))
    with pytest.raises(Unroutable, match="no NIC"):
        router.route(np.array([1]), np.ones((1, 1)), np.array([5]))
    # ... but traffic inside the rack still flows over scale-up
    assert router.route(np.array([1]), np.ones((1, 1)), np.array([2])).bytes_sent == 1


# ------------------------------------------------------------------ a rack's scale-out halved

MOE16 = {**TOY_MOE, "name": "toy-moe16", "layers": 4,
         "moe": {"experts": 16, "top_k": 2, "moe_layers": 4}}
TOKENS = 256   # per step: 16 per GPU of EP 16, top-2 over 16 experts: 2 copies per expert


def even_routing(costs, tokens, popularity, rng):
    """Every expert gets the same share of every GPU's copies (a deterministic pattern, so
    the all-to-all has a closed form)."""
    per = tokens.astype(np.int64) * costs.top_k
    assert (per % costs.experts == 0).all()
    return Routing(np.repeat((per // costs.experts)[:, None], costs.experts, axis=1),
                   tokens.astype(np.int64))


def cross_rack_ep(faults, duration=0.04):
    """EP 16 over two 8-GPU racks (one switch domain each, fat tree): 8 of each GPU's 15
    peers are across scale-out."""
    return scenario(faults, model=MOE16, racks=2, layout={"expert_parallel": 16},
                    **closed(TOKENS, TOKENS, duration))


def test_halved_rack_scale_out_lengthens_steps_by_the_closed_form(monkeypatch):
    """Rack 1's NICs and leaf links at half capacity from t1 to t2. Each GPU sends b bytes to
    each other GPU per all-to-all: 8 b cross the rack over its NIC (capacity B) and 7 b
    stay on scale-up (capacity 9 B), so alone the all-to-all takes 8 b / B and, halved, 8 b /
    (B/2) (the leaf uplink, 8 NICs' worth, ties with the NIC either way). A step inside the
    window is longer by moe_layers x 8 (b_dispatch + b_combine) / B; steps after it are
    back to the original, to the float."""
    monkeypatch.setattr(simulation, "draw_routing", even_routing)
    t1, t2 = 0.01, 0.025
    fault = {"kind": "link_degraded", "tier": "scale_out", "rack": 1, "factor": 0.5,
             "start": t1, "end": t2}
    _, base = run(cross_rack_ep([]))
    res, hit = run(cross_rack_ep([fault]))
    B = BASE["hardware"]["scale_out"]["bandwidth_per_gpu"]
    h = MOE16["hidden"]
    copies = TOKENS // 16 * 2 // 16          # per (GPU, other GPU): one expert per EP rank
    # FP8 dispatch with one FP32 scale per 128 elements (DeepEP's format), BF16 combine
    b_dispatch, b_combine = copies * h * (1 + 4 / 128), copies * h * 2
    per_step = MOE16["moe"]["moe_layers"] * 8 * (b_dispatch + b_combine) * (1 / (B / 2) - 1 / B)
    n = min(len(base.steps), len(hit.steps))
    d0, d1 = base.steps.duration_s[:n].to_numpy(), hit.steps.duration_s[:n].to_numpy()
    start, end = hit.steps.start[:n].to_numpy(), hit.steps.end[:n].to_numpy()
    inside = (start >= t1) & (end <= t2)
    before, after = end <= t1, start >= t2
    assert inside.sum() >= 3 and after.sum() >= 3 and before.sum() >= 3
    assert d1[inside] - d0[inside] == pytest.approx(np.full(inside.sum(), per_step), rel=1e-6)
    assert d1[before] == pytest.approx(d0[before], rel=1e-12)
    assert d1[after] == pytest.approx(d0[after], rel=1e-12), "the window's end restores it"
    # the slowdown is the only difference: rack 1's links saturated at half capacity
    links = hit.links.set_index("link")
    assert links.loc["gpu8->leaf1", "peak_utilisation"] == pytest.approx(1.0, rel=1e-9)
    assert conserved(res.network)
    assert hit.summary["faults"]["by_kind"]["link_degraded"] == 1


def test_down_nic_in_engine_moves_its_bytes_to_the_peer_nic():
    """GPU 3's NIC down for the whole run under cross-rack EP: it never carries a byte and
    GPU 4's NIC (its peer) carries both GPUs' cross-rack traffic."""
    fault = {"kind": "link_down", "tier": "scale_out", "gpu": 3, "start": 0}
    res, t = run(cross_rack_ep([fault], duration=0.01))
    out = t.links.set_index("link")["bytes_moved"]
    assert out["gpu3->leaf0"] == 0 and out["leaf0->gpu3"] == 0
    others = out[[f"gpu{g}->leaf0" for g in (0, 1, 2, 5, 6, 7)]]
    assert others.min() > 0
    assert out["gpu4->leaf0"] == pytest.approx(2 * others.mean(), rel=0.05)
    assert t.summary["faults"]["transfers_rerouted"] > 0
    assert t.summary["requests_failed"] == 0
    assert conserved(res.network)


# ------------------------------------------------------------------ stragglers


def straggler_run(faults, tp=2):
    """Dense model, TP 2 on an ideal network, decode at batch 1024: compute bound (13 ms of
    FLOPs against under 8 ms of weights and KV per step, the pooled rule's closed form)."""
    return scenario(faults, hardware=FAST_NET, model=TOY_DENSE, racks=1,
                    layout={"tensor_parallel": tp},
                    engine={"attention_flops": False, "op_timing": "pooled"},
                    **closed(1024, 1024, 0.4, output=100))


def test_straggler_multiplies_a_compute_bound_step():
    """Slowdown s on one GPU of a TP pair: every step it joins takes s times as long (the
    slowest GPU gates the all-reduces; on the ideal network they cost ~1e-8 of a step, hence
    the tolerance); once the window ends steps are as before."""
    s, t_end = 1.5, 0.2
    _, base = run(straggler_run([]))
    _, hit = run(straggler_run([{"kind": "straggler", "gpu": 1, "slowdown": s, "start": 0,
                                 "end": t_end}]))
    m = base.steps.duration_s.to_numpy()
    n = min(len(m), len(hit.steps))
    roof = hit.steps.start[:n].to_numpy()
    slowed, free = roof < t_end, roof >= t_end
    assert slowed.sum() >= 3 and free.sum() >= 3
    d0, d1 = m[:n], hit.steps.duration_s[:n].to_numpy()
    assert d1[slowed] == pytest.approx(s * d0[slowed], rel=1e-6)
    assert d1[free] == pytest.approx(d0[free], rel=1e-12)
    assert hit.summary["gpu_time_fraction"]["compute"] > 0.9
    g = hit.gpus.set_index("gpu")
    assert g.loc[1, "compute_s"] > g.loc[0, "compute_s"], "the straggler computes longer"
    assert g.loc[0, "network_s"] > g.loc[1, "network_s"], "its peer waits for it"


# ------------------------------------------------------------------ lost GPUs


def two_replicas(faults, **workload):
    d = small_run()
    d["racks"] = 1
    d["layout"] = {"expert_parallel": 4, "data_parallel": 2}
    d["workload"] = {**d["workload"], "duration_s": 0.6, "warmup_s": 0, **workload}
    d["faults"] = faults
    return scenario_from_dict(d)


def test_gpu_lost_stops_its_replica_and_the_other_continues():
    t = 0.3
    res, out = run(two_replicas([{"kind": "gpu_lost", "gpu": 5, "start": t}]))
    sm, req, steps = out.summary, out.requests, out.steps
    failed = req[req.status == "failed"]
    # the replica owning GPU 5 (GPUs 4-7) stopped at t; its requests failed, counted
    assert len(failed) > 0 and (failed.replica == 1).all()
    assert (failed.failed_s == t).all()
    assert failed.failure.str.contains("gpu_lost: GPU 5").all()
    assert sm["requests_failed"] == len(failed) == out.faults.requests_failed[0]
    assert sm["faults"]["replicas_stopped"] == 1 and sm["faults"]["replicas_alive_at_end"] == 1
    # conservation (no warm-up): every arrival completed, dropped, failed or in flight
    assert sm["requests_arrived"] == (sm["requests_completed"] + sm["requests_dropped"]
                                      + sm["requests_failed"] + sm["requests_in_flight"])
    # replica 1 does nothing after t; replica 0 takes every arrival and keeps producing
    assert not ((steps.replica == 1) & (steps.end > t)).any()
    assert (req[req.arrival_s > t].replica == 0).all()
    r0 = steps[steps.replica == 0]
    rate_before = r0[r0.end <= t].output_tokens.sum() / t
    rate_after = r0[r0.end > t].output_tokens.sum() / (0.6 - t)
    assert rate_after >= 0.9 * rate_before > 0
    assert ((req.replica == 0) & (req.status == "completed") & (req.finish_s > t)).sum() > 0
    assert out.gpus.set_index("gpu").loc[5, "role"] == "lost"
    assert conserved(res.network)


def test_gpu_lost_with_restart_brings_the_replica_back():
    t, delay = 0.2, 0.1
    _, out = run(two_replicas([{"kind": "gpu_lost", "gpu": 1, "start": t,
                                "policy": "restart_replica", "restart_after": delay}]))
    steps, req = out.steps, out.requests
    assert not ((steps.replica == 0) & (steps.start > t) & (steps.start < t + delay)).any()
    assert ((steps.replica == 0) & (steps.start >= t + delay)).sum() > 0
    assert (req[(req.arrival_s > t) & (req.arrival_s < t + delay)].replica == 1).all()
    assert (req[req.arrival_s > t + delay].replica == 0).any()
    f = out.summary["faults"]
    assert f["replicas_stopped"] == 1 and f["replica_restarts"] == 1
    assert f["replicas_alive_at_end"] == 2


@pytest.mark.parametrize("arrival", ["poisson", "closed"])
def test_losing_every_replica_ends_cleanly_in_requests_mode(arrival):
    """A `requests:` run whose only replica dies cannot reach its target: it ends at the
    failure instead of hanging, with every request accounted for."""
    d = small_run()
    d["layout"] = {"expert_parallel": 8, "pipeline_parallel": 2}
    d["workload"] = {**d["workload"], "requests": 400, "duration_s": None, "warmup_s": 0}
    if arrival == "closed":
        d["workload"]["arrival"] = {"process": "closed", "concurrency": 32}
    d["faults"] = [{"kind": "gpu_lost", "gpu": 9, "start": 0.05}]
    res, out = run(scenario_from_dict(d))
    assert res.window[1] == pytest.approx(0.05)
    counts = out.requests.status.value_counts()
    assert counts["failed"] > 0 and counts["waiting"] == counts["running"] == 0
    assert out.summary["requests_failed"] == counts["failed"] + \
        out.summary["faults"]["requests_failed_unplaced"]


def test_whole_scale_out_down_stops_a_cross_rack_replica_with_a_reason():
    """Every NIC down, permanently, under cross-rack EP: no path exists, so the replica stops
    (reason: unreachable) instead of stalling; arrivals after that fail, counted."""
    fault = {"kind": "link_down", "tier": "scale_out", "start": 0.01}
    res, out = run(cross_rack_ep([fault], duration=0.03))
    f = out.faults.iloc[0]
    assert "unreachable" in f.effect and f.requests_failed > 0
    assert out.summary["faults"]["replicas_alive_at_end"] == 0
    assert not (out.steps.end > 0.011).any()
    assert conserved(res.network)


# ------------------------------------------------------------------ outputs


def all_kinds(seed=0):
    d = small_run()
    d["seed"] = seed
    d["racks"] = 2
    d["layout"] = {"expert_parallel": 8, "data_parallel": 2}
    d["workload"] = {**d["workload"], "duration_s": 0.5}
    d["faults"] = [
        {"kind": "link_degraded", "tier": "scale_up", "rack": 0, "factor": 0.25,
         "start": 0.1, "end": 0.2},
        {"kind": "link_down", "tier": "scale_up", "gpu": 3, "start": 0.15, "end": 0.3},
        {"kind": "straggler", "gpu": 10, "slowdown": 2, "start": 0.2},
        {"kind": "gpu_lost", "gpu": 12, "start": 0.3, "policy": "restart_replica",
         "restart_after": 0.1},
    ]
    return scenario_from_dict(d)


def test_same_seed_same_results_with_faults():
    (_, a), (_, b) = run(all_kinds()), run(all_kinds())
    assert summary_json(a.summary, deterministic=True) == \
        summary_json(b.summary, deterministic=True)
    for x, y in ((a.requests, b.requests), (a.steps, b.steps), (a.links, b.links),
                 (a.faults, b.faults)):
        assert x.equals(y)
    assert a.summary["faults"]["count"] == 4


def test_fault_run_folder_has_faults_table_and_trace_track(tmp_path):
    res, t = run(all_kinds())
    write_results(res, t, tmp_path, plots=True)
    import pandas as pd

    table = pd.read_csv(tmp_path / "faults.csv")
    assert list(table.kind) == ["link_degraded", "link_down", "straggler", "gpu_lost"]
    assert table.effect.str.len().min() > 0 and table.loc[3, "replica"] == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["faults"]["by_kind"] == {"link_degraded": 1, "link_down": 1,
                                            "straggler": 1, "gpu_lost": 1}
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert "faults" in names
    slices = [e for e in events if e.get("cat") == "fault" and e["ph"] == "X"]
    assert {e["name"] for e in slices} == {"link_degraded", "link_down", "straggler",
                                           "gpu_lost"}
    stops = [e for e in events if e.get("cat") == "fault" and e["ph"] == "i"]
    assert {e["name"] for e in stops} == {"replica 1 stopped", "replica 1 restarted"}
    tids = [e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    assert len(tids) == len(set(tids))


def test_no_faults_writes_an_empty_faults_table(tmp_path):
    res, t = run(scenario_from_dict(small_run()))
    write_results(res, t, tmp_path, plots=False, trace=False)
    assert (tmp_path / "faults.csv").read_text().startswith("fault,kind,target")
    assert t.summary["faults"]["count"] == 0 and t.summary["requests_failed"] == 0


def shipped(name, **over):
    import sim.api as rs

    return rs.simulate(rs.load(REPO / "scenarios" / f"{name}.yaml", **over))


def mean_step(steps, a, b, replica=None):
    m = (steps.start >= a) & (steps.end <= b)
    if replica is not None:
        m &= steps.replica == replica
    return steps[m].duration_s.mean()


@pytest.mark.parametrize("name", ["fault-link-degraded", "fault-link-down"])
def test_shipped_link_scenarios_dip_in_the_window(name):
    """Rack 1's scale-out halved (or one NIC down, its traffic doubled on a peer's): steps in
    the window are longer, throughput dips, and it recovers afterwards. The all-to-all is
    about a third of these decode steps (the rest is kernels) and its cross-rack half runs
    at half speed, so steps lengthen by about that third: more than 1.25x, and back within
    5% after."""
    r = shipped(name)
    f = r.scenario.spec.faults[0]
    st = r.steps
    before, inside, after = (mean_step(st, 0.25, f.start), mean_step(st, f.start, f.end),
                             mean_step(st, f.end + 0.25, 3.0))
    assert inside > 1.25 * before and inside > 1.25 * after
    assert after == pytest.approx(before, rel=0.05)

    def rate(a, b):
        return st[(st.end >= a) & (st.end < b)].output_tokens.sum() / (b - a)
    # continuous batching absorbs part of the slowdown with larger batches
    assert rate(f.start + 0.1, f.end) < 0.97 * rate(0.25, f.start)
    if f.kind == "link_down":
        assert r.summary["faults"]["transfers_rerouted"] > 0


def test_shipped_straggler_scenario_slows_only_its_replica():
    r = shipped("fault-straggler")
    st = r.steps
    assert mean_step(st, 1.1, 2.0, replica=0) > 1.2 * mean_step(st, 1.1, 2.0, replica=1)
    assert mean_step(st, 0.25, 1.0, replica=0) == pytest.approx(
        mean_step(st, 0.25, 1.0, replica=1), rel=0.2)


def test_shipped_gpu_lost_scenario():
    r = shipped("fault-gpu-lost")
    st, req = r.steps, r.requests
    assert not ((st.replica == 1) & (st.end > 1.0)).any()
    assert not ((st.replica == 2) & (st.end > 1.5) & (st.start < 2.25)).any()
    assert ((st.replica == 2) & (st.start >= 2.25)).any(), "replica 2 restarted"
    failed = req[req.status == "failed"]
    assert set(failed.replica) == {1, 2}
    assert r.summary["faults"]["replicas_alive_at_end"] == 2


# ------------------------------------------------------------------ bad fault specs

GOOD = {"kind": "link_degraded", "tier": "scale_out", "rack": 1, "factor": 0.5,
        "start": "1 s", "end": "2 s"}
BAD = [
    ("unknown-kind", {**GOOD, "kind": "link_degradd"}, "faults[0]", ["link_degraded"]),
    ("gpu-out-of-range", {"kind": "straggler", "gpu": 16, "slowdown": 2, "start": 0},
     "faults[0].gpu", ["GPU 16 does not exist", "0..15"]),
    ("rack-out-of-range", {**GOOD, "rack": 2}, "faults[0].rack", ["rack 2 does not exist"]),
    ("end-before-start", {**GOOD, "end": "0.5 s"}, "faults[0]", ["must be after start"]),
    ("factor-zero", {**GOOD, "factor": 0}, "faults[0].factor", ["(0, 1]", "link_down"]),
    ("factor-above-one", {**GOOD, "factor": 1.5}, "faults[0].factor", ["(0, 1]"]),
    ("slowdown-below-one", {"kind": "straggler", "gpu": 1, "slowdown": 0.5, "start": 0},
     "faults[0].slowdown", ["at least 1"]),
    ("unknown-tier", {**GOOD, "tier": "scale_upp"}, "faults[0].tier", ["scale_up"]),
    ("gpu-and-rack", {**GOOD, "gpu": 1}, "faults[0]", ["not both"]),
    ("restart-without-delay", {"kind": "gpu_lost", "gpu": 1, "start": 0,
                               "policy": "restart_replica"}, "faults[0]", ["restart_after"]),
    ("unknown-policy", {"kind": "gpu_lost", "gpu": 1, "start": 0, "policy": "reboot"},
     "faults[0].policy", ["stop_replica"]),
    ("end-on-gpu-lost", {"kind": "gpu_lost", "gpu": 1, "start": 0, "end": 1},
     "faults[0].end", ["unknown key"]),
    ("start-after-run", {**GOOD, "start": "30 s", "end": "40 s"}, "faults[0].start",
     ["run (20 s) is over"]),
    ("bad-time-unit", {**GOOD, "start": "1 parsec"}, "faults[0].start", ["parsec"]),
    ("missing-kind", {"gpu": 1, "start": 0}, "faults[0]", ["kind"]),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_fault_is_one_clean_paragraph(case, write_yaml, monkeypatch, capsys):
    _, fault, key, words = case
    d = copy.deepcopy(BASE)
    d["faults"] = [fault]
    path = write_yaml(d)
    code, out, err = run_cli(monkeypatch, capsys, "roofline", path)
    assert code == 2 and "Traceback" not in err + out
    assert str(path) in err and f": {key}:" in err, err
    for w in words:
        assert w in err, f"{w!r} not in {err!r}"
    assert "Fix:" in err and err.strip().count("\n\n") == 0
