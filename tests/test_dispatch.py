"""MoE dispatch modes (costs.dispatch_matrix) against closed forms and an explicit
per-token Monte Carlo of the routing they summarise."""

from __future__ import annotations

import numpy as np
import pytest

from sim.engine.costs import (LayerCosts, Routing, dispatch_matrix, hit_probability,
                              physical_popularity, routing_hits, token_bytes)
from sim.engine.microbench import run_moe_exchange
from sim.spec.presets import load_hardware


def toy_costs(G: int, experts: int, top_k: int, tp: int = 1) -> LayerCosts:
    return LayerCosts(G=G, ep=G // tp, tp=tp, flops=1.0, attn_flops_rate=1.0, bandwidth=1.0,
                      bpp=1.0, dense_weight_bytes=0.0, dense_flops_per_token=0.0,
                      attn_flops_per_ctx=0.0, kv_bytes_per_token=0.0, expert_params=0.0,
                      experts=experts, top_k=top_k, dispatch_bytes=0.0, combine_bytes=0.0,
                      activation_bytes=0.0)


def monte_carlo_hits(E, k, sets, groups, topk_groups, n=40000, seed=0):
    """Explicit per-token routing, independent draws as the engine assumes: take
    `topk_groups` distinct groups uniformly, then k experts uniformly among their experts."""
    rng = np.random.default_rng(seed)
    per = E // groups
    g = np.argsort(rng.random((n, groups)), axis=1)[:, :topk_groups]
    pick = rng.integers(0, topk_groups * per, size=(n, k))
    experts = g[np.arange(n)[:, None], pick // per] * per + pick % per
    hit = np.zeros((n, len(sets)), dtype=bool)
    for s, members in enumerate(sets):
        hit[:, s] = np.isin(experts, np.flatnonzero(members)).any(axis=1)
    return hit.mean(axis=0)


def test_token_bytes_adds_one_fp32_scale_per_block():
    assert token_bytes(7168, "fp8", 128) == 7168 + 56 * 4       # DeepEP's FP8 token
    assert token_bytes(7168, "bf16", 128) == 7168 * 2           # no scales at BF16
    assert token_bytes(7168, "fp8", 0) == 7168


@pytest.mark.parametrize("groups,topk_groups", [(1, 1), (8, 4), (4, 2), (8, 8)])
def test_hit_probability_matches_per_token_monte_carlo(groups, topk_groups):
    E, k, ep = 64, 8, 16
    p = np.full(E, 1 / E)
    ranks = np.zeros((ep, E))
    ranks[np.arange(E) // (E // ep), np.arange(E)] = 1
    predicted = hit_probability(p, k, ranks, groups, topk_groups)
    measured = monte_carlo_hits(E, k, ranks, groups, topk_groups)
    assert predicted == pytest.approx(measured, abs=0.01)


def test_group_limited_hit_of_a_whole_group_is_the_closed_form():
    """Groups = nodes, M of N taken, k picks: P(node) = (M / N)(1 - (1 - 1/M)^k)."""
    E, k, N, M = 256, 8, 8, 4
    p = np.full(E, 1 / E)
    nodes = np.zeros((N, E))
    nodes[np.arange(E) // (E // N), np.arange(E)] = 1
    assert hit_probability(p, k, nodes, N, M) == pytest.approx(
        np.full(N, M / N * (1 - (1 - 1 / M) ** k)))
    assert hit_probability(p, k, nodes) == pytest.approx(np.full(N, 1 - (1 - 1 / N) ** k))


def expected_routing(G, E, k, tokens):
    tok = np.full(G, tokens, dtype=np.int64)
    return Routing(np.outer(tok * k, np.full(E, 1 / E)), tok)


def test_per_gpu_sends_each_token_once_per_destination_rank():
    G, E, k, T = 8, 64, 8, 100
    c = toy_costs(G, E, k)
    hits = routing_hits(np.full(E, 1 / E), k, 1, 1, G, np.zeros(G, dtype=int))
    m = dispatch_matrix(c, expected_routing(G, E, k, T), 1.0, "per_gpu", hits)
    hit = 1 - (1 - 1 / G) ** k
    off = ~np.eye(G, dtype=bool)
    assert m[off] == pytest.approx(np.full(G * (G - 1), T * hit))
    assert (np.diag(m) == 0).all()
    per_copy = dispatch_matrix(c, expected_routing(G, E, k, T), 1.0, "per_expert")
    assert per_copy[off] == pytest.approx(np.full(G * (G - 1), T * k / G))
    assert m.sum() < per_copy.sum()


def test_hierarchical_crosses_domains_once_per_destination_domain():
    """Scale-out bytes leaving GPU i = tokens x sum over other domains of P(domain hit);
    scale-up forwarding inside the destination domain delivers the per-GPU copies."""
    G, E, k, T, D = 16, 64, 8, 100, 4
    dom = np.repeat(np.arange(D), G // D)
    c = toy_costs(G, E, k)
    p = np.full(E, 1 / E)
    hits = routing_hits(p, k, 1, 1, G, dom)
    r = expected_routing(G, E, k, T)
    h = dispatch_matrix(c, r, 1.0, "hierarchical", hits)
    flat = dispatch_matrix(c, r, 1.0, "per_gpu", hits)
    cross = dom[:, None] != dom[None, :]
    p_dom = 1 - (1 - 1 / D) ** k
    assert h[cross].reshape(G, -1).sum(axis=1) == pytest.approx(np.full(G, T * (D - 1) * p_dom))
    assert h[cross].sum() < flat[cross].sum()
    # each cross-domain byte goes to the GPU at the sender's position in that domain
    i, j = np.nonzero(h * cross)
    assert (i % (G // D) == j % (G // D)).all()
    # scale-up carries the direct in-domain copies plus the forwarded ones: every per-GPU
    # copy from another domain except the one the forwarder keeps for itself
    n = G // D
    fwd = lambda i, d: d * n + i % n  # noqa: E731
    forwarded = sum(flat[i, j] for i in range(G) for j in range(G)
                    if dom[i] != dom[j] and j != fwd(i, dom[j]))
    assert h[~cross].sum() == pytest.approx(flat[~cross].sum() + forwarded)


def test_redundant_experts_split_the_hottest_experts_share():
    p = np.array([0.4, 0.3, 0.2, 0.1])
    q = physical_popularity(p, 2)
    assert q.sum() == pytest.approx(1.0)
    assert q == pytest.approx([0.2, 0.15, 0.2, 0.1, 0.2, 0.15])


def test_low_latency_exchange_is_the_closed_form():
    """EP16 over two H800 nodes, one copy per (token, expert): half the copies cross the NIC,
    which binds; time = overhead + scale-out latency + bytes / (NIC x efficiency)."""
    hw = load_hardware("hgx-h800")
    T, k, h = 128, 8, 7168
    r = run_moe_exchange(hw, "dispatch", 16, 2, T, h, k, 256, "per_expert", "fp8", 128)
    nic = hw.scale_out.bandwidth_per_gpu * hw.efficiency.scale_out
    expected = (hw.efficiency.collective_overhead + hw.scale_out.latency
                + T * k / 2 * token_bytes(h, "fp8", 128) / nic)
    assert r.time_s == pytest.approx(expected, rel=1e-9)
    assert r.bottleneck == "scale_out"
    assert r.selection_bandwidth == pytest.approx(T * k * token_bytes(h, "fp8", 128) / r.time_s)
