"""The discrete-event engine against closed forms, conservation laws and contention."""

import copy

import numpy as np
import pytest

from conftest import BASE, TOY_DENSE, TOY_MOE
from sim import roofline as rf
from sim.engine.simulation import simulate
from sim.results.tables import build_tables
from sim.spec import scenario_from_dict

FAST_NET = {"scale_up": {"bandwidth_per_gpu": 1e18, "latency": 0.0},
            "scale_out": {"bandwidth_per_gpu": 1e18, "latency": 0.0}}


def make(hardware=None, model=None, layout=None, workload=None, batching=None, **top):
    d = copy.deepcopy(BASE)
    if hardware:
        d["hardware"] = {**d["hardware"], **hardware}
    if model is not None:
        d["model"] = model
    if layout is not None:
        d["layout"] = layout
    if workload:
        d["workload"] = {**d["workload"], **workload}
    if batching:
        d["batching"] = batching
    d.update(top)
    return scenario_from_dict(d)


def run(s):
    res = simulate(s)
    return res, build_tables(res)


def saturated(concurrency, max_batch, duration=0.5, warmup=0.1, output=1000):
    """Closed loop whose requests outlast the run: after the first, every step decodes.
    (Admission reserves prompt + output tokens of KV, so `output` must fit.)"""
    return dict(workload={"arrival": {"process": "closed", "concurrency": concurrency},
                          "prompt_tokens": {"dist": "fixed", "value": 1},
                          "output_tokens": {"dist": "fixed", "value": output},
                          "duration_s": duration, "warmup_s": warmup},
                batching={"policy": "continuous", "max_batch": max_batch})


# ------------------------------------------------------------------ closed forms


@pytest.mark.parametrize("p,m", [(2, 1), (2, 2), (4, 1), (4, 2), (4, 4), (4, 8)])
def test_decode_pipeline_bubble(p, m):
    """Bubble fraction 1 - min(m, p)/p when communication is negligible."""
    s = make(hardware={**FAST_NET, "gpus_per_rack": 8}, model=TOY_DENSE, racks=1,
             layout={"pipeline_parallel": p, "microbatches": m},
             **saturated(concurrency=m * 16, max_batch=16))
    _, t = run(s)
    assert t.summary["bubble_fraction"] == pytest.approx(1 - min(m, p) / p, abs=0.03)


def test_fixed_interval_queue_wait_is_uniform():
    """A train every T at light load: waits uniform on [0, T], median T/2 within 10%."""
    T = 0.02
    s = make(hardware=FAST_NET, model=TOY_DENSE, racks=1, layout={"tensor_parallel": 8},
             workload={"arrival": {"process": "poisson", "rate_per_s": 50},
                       "prompt_tokens": {"dist": "fixed", "value": 8},
                       "output_tokens": {"dist": "fixed", "value": 2},
                       "duration_s": 30, "warmup_s": 1},
             batching={"policy": "fixed_interval", "interval": T, "max_batch": 256})
    _, t = run(s)
    waits = t.requests.loc[t.requests.status == "completed", "queue_wait_s"].to_numpy()
    assert len(waits) > 1000
    assert np.median(waits) == pytest.approx(T / 2, rel=0.10)
    assert waits.min() >= 0 and waits.max() <= T * (1 + 1e-9)
    # uniform: the quartiles too
    assert np.percentile(waits, [25, 75]) == pytest.approx([T / 4, 3 * T / 4], rel=0.15)


def test_uncontended_decode_step_is_roofline_plus_communication():
    """DeepSeek-V3 on one GB200 NVL72, EP 64, batch 256 (memory bound in every phase, every
    expert hit): step = roofline step + per MoE layer (dispatch + combine) within 5%, under
    the pooled op rule (the roofline's own convention)."""
    d = copy.deepcopy(BASE)
    d.update(hardware="gb200-nvl72", model="deepseek-v3", racks=1,
             layout={"expert_parallel": 64},
             engine={"attention_flops": False, "op_timing": "pooled"},
             **saturated(concurrency=256, max_batch=256, duration=0.2, warmup=0.05,
                         output=20000))
    s = scenario_from_dict(d)
    res, t = run(s)
    steps = t.steps[(t.steps.start >= 0.05) & (t.steps.prefill_tokens == 0)]
    measured = steps.duration_s.mean()
    context = 1 + steps.index.size / 2  # prompt 1 token + about half the decode steps
    roof = rf.evaluate(s.model, s.hardware, s.layout, 256, context).step_time_s
    hw, m = s.hardware, s.model
    G, k, h = 64, m.moe.top_k, m.hidden
    copies_per_gpu = 256 / G * k * (G - 1) / G
    bw = hw.scale_up.bandwidth_per_gpu * hw.efficiency.scale_up
    fixed = hw.scale_up.latency + hw.efficiency.collective_overhead
    fp8_token = h * (1 + 4 / 128)   # FP8 elements plus one FP32 scale per 128 (DeepEP format)
    dispatch = fixed + copies_per_gpu * fp8_token / bw
    combine = fixed + copies_per_gpu * h * 2 / bw
    expected = roof + m.moe.moe_layers * (dispatch + combine)
    assert measured == pytest.approx(expected, rel=0.05)


def test_uncontended_dense_tp_step_is_roofline_plus_all_reduces():
    """Dense model, TP 8 in one domain, memory bound: step = roofline + per layer two ring
    all-reduces of the batch's activations, 2(n-1)/n x size / bw + 2(n-1) alpha each."""
    b, n = 64, 8
    s = make(model=TOY_DENSE, racks=1, layout={"tensor_parallel": n},
             engine={"attention_flops": False},
             **saturated(concurrency=b, max_batch=b, duration=0.3, warmup=0.05))
    _, t = run(s)
    steps = t.steps[(t.steps.start >= 0.05) & (t.steps.prefill_tokens == 0)]
    context = 1 + len(t.steps) / 2
    roof = rf.evaluate(s.model, s.hardware, s.layout, b, context).step_time_s
    hw = s.hardware
    size = b * s.model.hidden * 2  # BF16 activations of the whole batch on every TP GPU
    ar = 2 * (n - 1) / n * size / hw.scale_up.bandwidth_per_gpu + 2 * (n - 1) * \
        hw.scale_up.latency
    expected = roof + s.model.layers * 2 * ar
    assert steps.duration_s.mean() == pytest.approx(expected, rel=0.05)


# ------------------------------------------------------------------ contention


def test_ep_across_racks_saturates_scale_out():
    """EP 16 over two 8-GPU racks crosses scale-out every layer; EP 8 inside a rack leaves
    scale-out idle. With fast GPUs and slow scale-out the cross-rack step is several times
    slower."""
    moe16 = {**TOY_MOE, "moe": {"experts": 16, "top_k": 2, "moe_layers": 32}}
    fast = {"gpu": {"flops": 1e17, "hbm_bytes": 80e9, "hbm_bandwidth": 1e14},
            "scale_up": {"bandwidth_per_gpu": 900e9, "latency": 1e-6},
            "scale_out": {"bandwidth_per_gpu": 25e9, "latency": 5e-6}}
    common = dict(hardware=fast, model=moe16, racks=2,
                  **saturated(concurrency=1024, max_batch=1024, duration=0.05, warmup=0.01))
    _, cross = run(make(layout={"expert_parallel": 16}, **common))
    _, inside = run(make(layout={"expert_parallel": 8, "data_parallel": 2,
                                 "microbatches": 1}, **common))
    assert cross.summary["link_utilisation"]["scale_out"]["peak"] == pytest.approx(1, abs=1e-6)
    assert cross.summary["link_utilisation"]["scale_out"]["saturated_fraction"] > 0.5
    assert inside.summary["link_utilisation"]["scale_out"]["peak"] == 0.0
    assert cross.summary["step_time_s"]["mean"] > 3 * inside.summary["step_time_s"]["mean"]


def test_skewed_routing_shows_as_waiting():
    """Hot experts load some GPUs more: the group waits for the slowest, steps lengthen."""
    common = dict(racks=1, layout={"expert_parallel": 8}, model=TOY_MOE,
                  **saturated(concurrency=256, max_batch=256, duration=0.1, warmup=0.02))
    _, uni = run(make(**common))
    _, hot = run(make(moe={"routing": {"dist": "hot", "experts": [0], "share": 0.6}},
                      **common))
    assert hot.summary["step_time_s"]["mean"] > uni.summary["step_time_s"]["mean"]
    assert hot.summary["gpu_time_fraction"]["network"] > \
        uni.summary["gpu_time_fraction"]["network"]


# ------------------------------------------------------------------ conservation


@pytest.fixture(scope="module")
def busy_run():
    s = make(layout={"expert_parallel": 8, "pipeline_parallel": 2, "microbatches": 2},
             workload={"arrival": {"process": "poisson", "rate_per_s": 300},
                       "prompt_tokens": {"dist": "uniform", "low": 64, "high": 512},
                       "output_tokens": {"dist": "lognormal", "mean_tokens": 40,
                                         "sigma": 0.7, "max_tokens": 400},
                       "duration_s": 1.0, "warmup_s": 0.2},
             batching={"policy": "continuous", "max_batch": 64, "prefill": "chunked",
                       "chunk_tokens": 1024},
             moe={"routing": {"dist": "zipf", "exponent": 1.2}})
    res = simulate(s)
    return res, build_tables(res)


def test_every_request_is_accounted_for(busy_run):
    res, t = busy_run
    req = t.requests
    assert len(req) == res.requests.n
    counts = req.status.value_counts()
    assert counts.sum() == len(req)
    done = req[req.status == "completed"]
    assert (done.first_token_s >= done.admitted_s).all()
    assert (done.admitted_s >= done.arrival_s).all()
    assert (done.finish_s >= done.first_token_s).all()
    sm = t.summary
    arrived = (req.arrival_s >= res.window[0]).sum()
    assert sm["requests_arrived"] == arrived
    assert sm["requests_completed"] > 0


def test_bytes_sent_equal_bytes_received(busy_run):
    res, _ = busy_run
    net = res.network
    # injected counts a flow's bytes when it starts; delivered when it ends (a train's as
    # they move); flows still moving at the end hold the rest
    assert net.bytes_injected > 0
    assert net.bytes_delivered + net.bytes_dropped + net.bytes_in_flight() == \
        pytest.approx(net.bytes_injected, rel=1e-9)


def test_gpu_time_fractions_sum_to_one_and_utilisation_at_most_one(busy_run):
    res, t = busy_run
    frac = t.summary["gpu_time_fraction"]
    assert sum(frac.values()) == pytest.approx(1.0, abs=1e-9)
    assert all(v >= -1e-12 for v in frac.values())
    window = res.window[1] - res.window[0]
    used = t.gpus[t.gpus.role == "serving"]
    per_gpu = used[[f"{c}_s" for c in ("compute", "memory", "network", "bubble", "idle")]]
    assert np.allclose(per_gpu.sum(axis=1), window)
    assert (t.links.peak_utilisation <= 1 + 1e-9).all()
    assert (t.links.mean_utilisation <= 1 + 1e-9).all()


def test_utilisation_series_agrees_with_link_integrals(busy_run):
    """Two accountings of the same fluid: the per-tier series averaged over the window
    equals the mean of that tier's per-link utilisation (bytes / capacity / window)."""
    from sim.results.tables import binned_mean

    res, t = busy_run
    t0, t1 = res.window
    ls = t.link_series
    for tier in ("scale_up", "scale_out"):
        series_mean = binned_mean(ls.time_s.to_numpy(), ls[tier].to_numpy(),
                                  np.array([t0, t1]))[0]
        links_mean = t.links.loc[t.links.tier == tier, "mean_utilisation"].mean()
        assert series_mean == pytest.approx(links_mean, rel=1e-6, abs=1e-12)
    assert t.links.mean_utilisation.max() > 0.01


def test_output_tokens_per_s_matches_requests(busy_run):
    """Tokens counted by the engine equal tokens implied by request records (whole run)."""
    res, t = busy_run
    assert res.output_tokens > 0
    assert t.summary["output_tokens_per_s"] * (res.window[1] - res.window[0]) == \
        pytest.approx(res.output_tokens)


# ------------------------------------------------------------------ determinism


def test_same_seed_same_files(tmp_path):
    from sim.results.write import write_results

    s = make(layout={"expert_parallel": 8}, racks=1,
             workload={"duration_s": 0.3, "warmup_s": 0.05, "arrival": {
                 "process": "poisson", "rate_per_s": 200}},
             moe={"routing": {"dist": "zipf", "exponent": 1.0}})
    outs = []
    for k in range(2):
        res = simulate(s)
        t = build_tables(res)
        t.summary["wall_time_s"] = None
        write_results(res, t, tmp_path / str(k), plots=False)
        outs.append(tmp_path / str(k))
    files = sorted(p.name for p in outs[0].iterdir())
    assert "summary.json" in files and "requests.csv" in files
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


@pytest.mark.parametrize("ep,tp", [(4, 2), (2, 4)])
def test_moe_with_ep_x_tp_is_roofline_plus_collectives(ep, tp):
    """MoE on EP x TP groups, memory bound: step = roofline + per layer two TP ring
    all-reduces of the group's activations + dispatch and combine of the expected copies."""
    b = 64
    s = make(racks=1, layout={"expert_parallel": ep, "tensor_parallel": tp},
             engine={"attention_flops": False},
             **saturated(concurrency=b, max_batch=b, duration=0.2, warmup=0.05))
    _, t = run(s)
    steps = t.steps[(t.steps.start >= 0.05) & (t.steps.prefill_tokens == 0)]
    roof = rf.evaluate(s.model, s.hardware, s.layout, b, 1 + len(t.steps) / 2).step_time_s
    hw, m = s.hardware, s.model
    bw, lat = hw.scale_up.bandwidth_per_gpu, hw.scale_up.latency
    size = b / ep * m.hidden * 2                      # one TP group's BF16 activations
    ar = 2 * (tp - 1) / tp * size / bw + 2 * (tp - 1) * lat
    # a GPU sends its b/G tokens' copies for other ranks to each of their tp GPUs; a GPU
    # receives all copies for its rank from other ranks: both b k (1 - 1/ep) / ep
    copies = b * m.moe.top_k * (1 - 1 / ep) / ep
    a2a = 2 * lat + copies * m.hidden * (1 + 2) / bw  # FP8 dispatch + BF16 combine
    expected = roof + m.layers * (2 * ar) + m.moe.moe_layers * a2a
    assert steps.duration_s.mean() == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("duration", [0.30, 0.31, 0.315])
def test_unfinished_step_at_the_end_is_busy_not_bubble(duration):
    """PP 1, one microbatch, saturated: no bubble, whether or not a step is cut by the end
    of the run (found in review: the cut step counted as bubble)."""
    hw = {"gpu": {"flops": 1.0e15, "hbm_bytes": 80e9, "hbm_bandwidth": 0.2e12}, **FAST_NET}
    s = make(hardware=hw, model=TOY_DENSE, racks=1, layout={"tensor_parallel": 8},
             **saturated(concurrency=64, max_batch=64, duration=duration, warmup=0.05))
    res, t = run(s)
    assert t.summary["bubble_fraction"] == pytest.approx(0.0, abs=1e-9)
    frac = t.summary["gpu_time_fraction"]
    assert sum(frac.values()) == pytest.approx(1.0) and frac["idle"] < 1e-9


def test_closed_loop_keeps_its_concurrency_when_requests_cannot_fit():
    """A client whose request is dropped (its KV can never fit) sends its next one
    (found in review: such clients vanished and concurrency decayed)."""
    s = make(model=TOY_DENSE, racks=1, layout={"tensor_parallel": 1},
             hardware={"gpu": {"flops": 1e15, "hbm_bytes": 30.1e9, "hbm_bandwidth": 1e14}},
             workload={"arrival": {"process": "closed", "concurrency": 32},
                       "prompt_tokens": {"dist": "fixed", "value": 100},
                       "output_tokens": {"dist": "lognormal", "mean_tokens": 2000,
                                         "sigma": 1.0},
                       "duration_s": 3.0, "warmup_s": 0.1},
             batching={"policy": "continuous", "max_batch": 32})
    _, t = run(s)
    req = t.requests
    assert (req.status == "dropped").sum() > 0, "the tail does not fit"
    assert t.summary["requests_in_flight"] == 32


# ------------------------------------------------------------------ found in review


def test_ep_x_tp_dispatch_reaches_every_tp_gpu_and_skips_own_rank():
    from sim.engine.costs import Routing, dispatch_matrix, layer_costs

    s = make(racks=1, layout={"expert_parallel": 2, "tensor_parallel": 4})
    c = layer_costs(s.model, s.hardware, s.layout, s.spec.moe, "bf16", False)
    counts = np.zeros((8, 8))
    counts[0, 4:] = 3         # GPU 0 (rank 0) sends 3 copies to each expert of rank 1
    counts[0, :4] = 5         # and 5 to each expert of its own rank
    m = dispatch_matrix(c, Routing(counts, counts.sum(axis=1) // c.top_k), 1.0)
    assert (m[0, :4] == 0).all(), "own rank's TP GPUs already hold the tokens"
    assert (m[0, 4:] == 12).all(), "each TP GPU of rank 1 gets all 12 copies"


def test_placement_never_splits_a_tp_group_across_domains():
    from sim.cluster.placement import place
    from sim.cluster.topology import build_cluster

    moe12 = {**TOY_MOE, "moe": {"experts": 12, "top_k": 2, "moe_layers": 32}}
    s = make(model=moe12, racks=2, layout={"expert_parallel": 3, "tensor_parallel": 4})
    c = build_cluster(s.hardware, 2)
    g = place(c, s.layout).group(0, 0)
    for k in range(3):
        assert len(set(c.gpu_domain[g[4 * k:4 * k + 4]])) == 1


def test_light_load_on_many_replicas_is_not_overloaded():
    s = make(racks=8, layout={"expert_parallel": 8, "data_parallel": 8},
             workload={"arrival": {"process": "poisson", "rate_per_s": 60},
                       "output_tokens": {"dist": "fixed", "value": 16},
                       "duration_s": 1.0, "warmup_s": 0.2},
             batching={"policy": "continuous", "max_batch": 64, "max_queue": 4})
    _, t = run(s)
    assert t.summary["requests_dropped"] == 0
    assert t.summary["overloaded"] is False


def test_freed_kv_wakes_idle_microbatches(tmp_path):
    trace = tmp_path / "burst.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "0.0,100,900\n" * 5
                     + "0.0,100,400\n" * 20)
    d = copy.deepcopy(BASE)
    d.update(hardware={**BASE["hardware"], "gpu": {"flops": 1e15,
                                                   "hbm_bytes": 13e9 + 409600 * 5000,
                                                   "hbm_bandwidth": 3.35e12}},
             model=TOY_DENSE, racks=1,
             layout={"tensor_parallel": 1, "pipeline_parallel": 2, "microbatches": 2},
             workload={"arrival": {"process": "trace", "path": str(trace)},
                       "prompt_tokens": {"dist": "trace"}, "output_tokens": {"dist": "trace"},
                       "requests": 25, "warmup_s": 0.0},
             batching={"policy": "continuous", "max_batch": 5})
    _, t = run(scenario_from_dict(d))
    per_mb = t.steps.groupby("microbatch").size()
    assert len(per_mb) == 2 and per_mb.min() > 100, "the second microbatch gets work"
    assert t.summary["requests_completed"] == 25


def test_step_time_excludes_waiting_for_the_stage():
    """More microbatches than stages queue for the stage; a step's time is its own."""
    times = {}
    for m in (1, 2, 4):
        s = make(hardware=FAST_NET, model=TOY_DENSE, racks=1,
                 layout={"tensor_parallel": 8, "microbatches": m},
                 **saturated(concurrency=16 * m, max_batch=16, duration=0.3, warmup=0.05))
        _, t = run(s)
        times[m] = t.summary["step_time_s"]["p50"]
    # before the fix a step included waiting for the other microbatches: about m x longer;
    # what remains is the small effect of context length (fewer steps per sequence)
    assert times[4] < 1.2 * times[1] and times[2] < 1.2 * times[1]


def test_warm_up_compiles_what_runs_use():
    """`python -m sim.engine.warm` (run by the Makefile after installing) compiles every
    kernel signature real runs need: in a fresh process, after it, the default scenario and
    a fault scenario add none (a kernel it misses would compile on a user's first run)."""
    import subprocess
    import sys

    code = """
import importlib, pkgutil
import numba
import sim.engine
import sim.api as rs
from sim.engine.warm import warm

def signatures():
    out = {}
    for m in pkgutil.iter_modules(sim.engine.__path__):
        mod = importlib.import_module("sim.engine." + m.name)
        for name, obj in vars(mod).items():
            if isinstance(obj, numba.core.registry.CPUDispatcher) and \
                    obj.py_func.__module__ == mod.__name__:   # defined there, not imported
                out[mod.__name__ + "." + name] = set(obj.signatures)
    return out

warm()
before = signatures()
for path, end in (("scenarios/default.yaml", 0.5), ("scenarios/fault-link-down.yaml", 1.2)):
    for timing in ("pooled", "analytical"):
        rs.simulate(rs.load(path, **{"workload.duration_s": end, "workload.warmup_s": 0.1,
                                     "engine.op_timing": timing}))
after = signatures()
print(len(before), sorted(k for k in after if after[k] - before[k]))
"""
    from conftest import REPO

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    # every kernel of the engine's source was found, and none compiled anything new
    declared = sum(p.read_text().count("@numba.njit") for p in (REPO / "sim/engine").glob("*.py"))
    assert out.split() == [str(declared), "[]"], out
