"""The flow-level network against closed forms (network-model.md's oracles)."""

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cluster.topology import build_cluster
from sim.engine import collectives as coll
from sim.engine.microbench import run_collective
from sim.engine.network import Network
from sim.spec import load_hardware
from sim.spec.hardware import Hardware

B = 100e9


def hw(per_rack=8, domain=None, so_bw=B, up_bw=4 * B, over=1.0, topo="fat_tree",
       up_lat=0.0, out_lat=0.0):
    return Hardware.model_validate({
        "name": "t", "gpu": {"flops": 1e15, "hbm_bytes": 80e9, "hbm_bandwidth": 3e12},
        "gpus_per_rack": per_rack,
        "scale_up": {"domain_gpus": domain or per_rack, "bandwidth_per_gpu": up_bw,
                     "latency": up_lat},
        "scale_out": {"bandwidth_per_gpu": so_bw, "latency": out_lat, "topology": topo,
                      "oversubscription": over}})


def finish_times(cluster, transfers, starts=None):
    env = simpy.Environment()
    net = Network(env, cluster.capacity, cluster.tier)
    ends = [None] * len(transfers)

    def go(i, t, at):
        if at:
            yield env.timeout(at)
        yield env.timeout(t.latency)
        yield net.transfer(t.links, t.load)
        ends[i] = env.now

    for i, t in enumerate(transfers):
        env.process(go(i, t, (starts or [0] * len(transfers))[i]))
    env.run()
    assert net.bytes_delivered == pytest.approx(net.bytes_injected, rel=1e-9)
    assert net.stats.peak.max() <= 1 + 1e-9, "no link above capacity"
    return ends, net


@pytest.mark.parametrize("n", [8, 32, 64])
def test_all_to_all_on_one_switch(n):
    """(n-1) S / B on a non-blocking switch."""
    c = build_cluster(hw(per_rack=64, up_bw=B), 1)
    S = 1e6
    (t,), _ = finish_times(c, [coll.all_to_all(c, np.arange(n), S)])
    assert t == pytest.approx((n - 1) * S / B, rel=1e-9)


@pytest.mark.parametrize("r", [1.0, 2.0, 4.0])
def test_all_to_all_two_tiers(r):
    """4 racks x 8 GPUs, scale-out only (1-GPU domains), oversubscription r:
    T = max(31 S/B, 24 r S/B)."""
    c = build_cluster(hw(per_rack=8, domain=1, over=r), 4)
    S = 1e6
    (t,), _ = finish_times(c, [coll.all_to_all(c, np.arange(32), S)])
    assert t == pytest.approx(max(31 * S / B, 24 * r * S / B), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 16), st.integers(0, 2**31 - 1))
def test_uneven_all_to_all_is_max_bytes_per_port(n, seed):
    """Skewed traffic on one switch: time = max over GPUs of bytes sent or received / B."""
    c = build_cluster(hw(per_rack=16, up_bw=B), 1)
    m = np.random.default_rng(seed).uniform(0, 1e6, size=(n, n))
    np.fill_diagonal(m, 0)
    t = coll.pair_loads(c, np.arange(n), m)
    (end,), _ = finish_times(c, [t])
    assert end == pytest.approx(max(m.sum(1).max(), m.sum(0).max()) / B, rel=1e-9)
    # conservation per collective: bytes leaving GPUs = bytes arriving
    up = t.load[np.isin(t.links, c.su_up)].sum()
    down = t.load[np.isin(t.links, c.su_down)].sum()
    assert up == pytest.approx(down) == pytest.approx(m.sum())


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("alpha", [0.0, 3e-6])
def test_ring_all_reduce(n, alpha):
    """2(n-1)/n M/B + 2(n-1) alpha."""
    c = build_cluster(hw(up_bw=B, up_lat=alpha), 1)
    M = 256e6
    (t,), _ = finish_times(c, [coll.all_reduce(c, np.arange(n), M)])
    assert t == pytest.approx(2 * (n - 1) / n * M / B + 2 * (n - 1) * alpha, rel=1e-9)


def test_two_collectives_sharing_links_take_longer():
    c = build_cluster(hw(per_rack=8, up_bw=B), 1)
    a2a = coll.all_to_all(c, np.arange(8), 1e6)
    (alone,), _ = finish_times(c, [a2a])
    (t1, t2), net = finish_times(c, [a2a, a2a])
    assert t1 > alone and t2 > alone
    assert t1 == pytest.approx(2 * alone, rel=1e-9)  # fair share: half each
    # a collective on other links is not slowed
    other = coll.all_to_all(c, np.arange(4), 1e6)
    disjoint = coll.all_to_all(c, np.arange(4, 8), 1e6)
    (x, y), _ = finish_times(c, [other, disjoint])
    assert x == pytest.approx(3e6 / B) and y == pytest.approx(3e6 / B)


def test_late_flow_shares_then_first_speeds_up():
    """Re-solve when a flow starts and when one ends: the first flow runs alone, shares,
    and the second finishes alone."""
    c = build_cluster(hw(per_rack=2, up_bw=B), 1)
    t = coll.send_recv(c, np.array([0]), np.array([1]), 1e9)  # 10 ms alone
    (a, b), _ = finish_times(c, [t, t], starts=[0.0, 0.005])
    # 5 ms alone (half done), then half rate: the rest of the first takes 10 ms more
    assert a == pytest.approx(0.015, rel=1e-9)
    assert b == pytest.approx(0.020, rel=1e-9)


def test_max_min_gives_spare_capacity_to_unconstrained_flow():
    """Flow A crosses links 0 and 1, flow B only link 1, flow C only link 0 with link 0 half
    the capacity: classic progressive filling."""
    env = simpy.Environment()
    net = Network(env, np.array([1.0, 2.0]), np.array([0, 0]))
    ends = {}

    def go(name, links, load):
        yield net.transfer(np.array(links), np.array(load, dtype=float))
        ends[name] = env.now

    env.process(go("A", [0, 1], [1, 1]))
    env.process(go("C", [0], [1]))
    env.process(go("B", [1], [1]))
    env.run(until=1e-9)
    rates = {i: f.rate * f.prep.size for i, f in enumerate(net.flows)}
    # link 0 (cap 1) shared by A and C: 0.5 each; B gets the rest of link 1: 1.5
    assert sorted(rates.values()) == pytest.approx([0.5, 0.5, 1.5])


def test_collective_cli_figures_hold_to_closed_form():
    h = load_hardware("gb200-nvl72")
    r = run_collective(h, "all_to_all", 64, 64e6)
    bw = h.scale_up.bandwidth_per_gpu * h.efficiency.scale_up
    fixed = h.scale_up.latency + h.efficiency.collective_overhead
    assert r.time_s == pytest.approx(63 / 64 * 64e6 / bw + fixed, rel=0.02)
    assert r.bottleneck == "scale_up"
    r = run_collective(h, "all_reduce", 8, 1e9)
    assert r.busbw_bytes_per_s == pytest.approx(bw, rel=0.02)
    r = run_collective(load_hardware("hgx-h800"), "all_to_all", 16, 64e6, domains=2)
    assert r.bottleneck == "scale_out"


def _as_dict(t):
    return {int(k): float(v) for k, v in zip(t.links, t.load) if v}


def _by_paths(c, src, dst, m):
    """Oracle: every byte of m[i, j] on every link of the path from src[i] to dst[j]."""
    out: dict = {}
    for i, a in enumerate(src):
        for j, b in enumerate(dst):
            if m[i, j] and a != b:
                for link in c.path(int(a), int(b)):
                    out[link] = out.get(link, 0.0) + float(m[i, j])
    return out


def _check(got, want: dict):
    d = _as_dict(got)
    assert d.keys() == want.keys()
    assert all(d[k] == pytest.approx(want[k], rel=1e-12) for k in d)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_link_loads_are_the_bytes_on_each_path(racks, spr, seed):
    """pair_loads (a byte matrix), message_loads (one message per pair) and exchange_pair
    (a matrix and its transpose in one pass) put on every link exactly the bytes whose
    GPU-to-GPU path crosses it (Cluster.path, pair by pair), across domains and leaves."""
    c = build_cluster(hw(per_rack=8, domain=4), racks * spr)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, min(c.n_gpus, 24) + 1))
    src = rng.permutation(c.n_gpus)[:n]
    dst = rng.permutation(c.n_gpus)[:n]
    size = rng.random(n) * 1e6 * (rng.random(n) < 0.8)    # some pairs send nothing
    diag = np.diag(size)
    msg, mat = coll.message_loads(c, src, dst, size), coll.pair_loads(c, src, diag, dst)
    _check(msg, _by_paths(c, src, dst, diag))
    _check(mat, _by_paths(c, src, dst, diag))
    assert msg.latency == mat.latency
    m = rng.random((n, n)) * (rng.random((n, n)) < 0.5)
    fwd, rev = coll.exchange_pair(c, src, m)
    _check(fwd, _by_paths(c, src, src, m))
    _check(rev, _by_paths(c, src, src, m.T))
    assert fwd.latency == coll.pair_loads(c, src, m).latency == rev.latency
    assert coll.message_loads(c, src, dst, size).bytes_sent == pytest.approx(
        float(size[src != dst].sum()), rel=1e-12)
