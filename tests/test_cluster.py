"""Topology graph and placement."""

import json

import networkx as nx
import numpy as np
import pytest

from sim.cluster.placement import place
from sim.cluster.topology import build_cluster, export_graph
from sim.spec import load_hardware
from sim.spec.errors import SpecError
from sim.spec.layout import Layout


@pytest.mark.parametrize("name,racks", [("gb200-nvl72", 2), ("hgx-h100", 4), ("hgx-b200", 3)])
def test_every_path_is_a_path_of_the_graph(name, racks):
    c = build_cluster(load_hardware(name), racks)
    ids = {d["id"]: (a, b) for a, b, d in c.graph.edges(data=True)}
    rng = np.random.default_rng(0)
    for src, dst in rng.integers(0, c.n_gpus, size=(200, 2)):
        links = c.path(int(src), int(dst))
        if src == dst:
            assert links == []
            continue
        hops = [ids[i] for i in links]
        assert hops[0][0] == f"gpu{src}" and hops[-1][1] == f"gpu{dst}"
        assert all(a[1] == b[0] for a, b in zip(hops, hops[1:])), "contiguous"
        same = c.gpu_domain[src] == c.gpu_domain[dst]
        assert all(c.tier[i] == (0 if same else 1) for i in links)


def test_rail_optimised_same_rank_stays_on_one_leaf():
    c = build_cluster(load_hardware("hgx-h100"), 4)
    assert c.hardware.scale_out.topology == "rail_optimized"
    assert len(c.path(3, 8 + 3)) == 2          # rail 3 of node 0 to rail 3 of node 1
    assert len(c.path(3, 8 + 5)) == 4          # different rails cross the spine


def test_oversubscription_divides_leaf_uplinks():
    hw = load_hardware({"preset": "hgx-h100", "scale_out": {
        "bandwidth_per_gpu": 50e9, "latency": 5e-6, "topology": "fat_tree",
        "oversubscription": 4.0}})
    c = build_cluster(hw, 2)
    assert c.capacity[c.leaf_up[0]] == pytest.approx(8 * 50e9 / 4 * hw.efficiency.scale_out)


def test_export_graphml_and_node_link(tmp_path):
    c = build_cluster(load_hardware("gb200-nvl72"), 2)
    export_graph(c, str(tmp_path / "g.graphml"))
    g = nx.read_graphml(tmp_path / "g.graphml")
    assert g.number_of_nodes() == c.graph.number_of_nodes()
    export_graph(c, str(tmp_path / "g.json"))
    data = json.loads((tmp_path / "g.json").read_text())
    assert len(data["links"]) == c.n_links


def test_ep_group_stays_inside_a_domain_and_stages_on_consecutive_racks():
    c = build_cluster(load_hardware("gb200-nvl72"), 4)
    p = place(c, Layout(expert_parallel=64, pipeline_parallel=2, data_parallel=2))
    for r in range(2):
        for s in range(2):
            doms = set(c.gpu_domain[p.group(r, s)])
            assert len(doms) == 1, "a 64-GPU EP group fits in a 72-GPU domain"
    assert [c.gpu_rack[p.group(0, s)][0] for s in range(2)] == [0, 1]
    assert [c.gpu_rack[p.group(1, s)][0] for s in range(2)] == [2, 3]
    assert len(np.unique(p.used())) == 256


def test_large_group_spans_whole_domains_evenly():
    c = build_cluster(load_hardware("gb200-nvl72"), 2)
    p = place(c, Layout(expert_parallel=128))
    counts = np.bincount(c.gpu_domain[p.group(0, 0)])
    assert list(counts) == [64, 64]


def test_small_groups_pack_without_splitting():
    c = build_cluster(load_hardware("hgx-h100"), 2)
    p = place(c, Layout(expert_parallel=4, pipeline_parallel=4))
    for s in range(4):
        assert len(set(c.gpu_domain[p.group(0, s)])) == 1


def test_unplaceable_layout_is_a_clear_error():
    c = build_cluster(load_hardware("gb200-nvl72"), 2)
    with pytest.raises(SpecError, match="cannot place"):
        place(c, Layout(expert_parallel=48, data_parallel=3))
