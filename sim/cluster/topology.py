"""The cluster as a graph: GPUs, one NVLink switch domain per scale-up domain, and the
scale-out fabric (a NIC per GPU to a leaf, leaves to a spine layer).

Every directed link has a capacity (bytes/s, already multiplied by the hardware's efficiency
for its tier) and a latency. The graph (networkx) is for inspection and export; the engine
uses the same links as numpy arrays, indexed by link id.

Shapes (`hardware.scale_out.topology`):
- `fat_tree`: one leaf (top-of-rack) per rack; all of a rack's NICs go to it.
- `rail_optimized`: one leaf per rail; GPU with local index i in its scale-up domain goes to
  leaf i (rail i), so same-rank GPUs of different domains are one leaf apart.
Leaves connect to a spine layer modelled as one non-blocking switch; a leaf's uplink capacity
is the sum of its NIC downlinks divided by `oversubscription`.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from ..spec.hardware import Hardware

SCALE_UP, SCALE_OUT = 0, 1
TIER_NAMES = ("scale_up", "scale_out")


@dataclass(frozen=True)
class Cluster:
    hardware: Hardware
    racks: int
    graph: nx.DiGraph
    # per link
    capacity: np.ndarray
    latency: np.ndarray
    tier: np.ndarray
    link_names: tuple[str, ...]
    # per GPU
    gpu_rack: np.ndarray
    gpu_domain: np.ndarray
    gpu_leaf: np.ndarray
    su_up: np.ndarray      # GPU -> its NVLink switch domain
    su_down: np.ndarray    # switch domain -> GPU
    nic_up: np.ndarray     # GPU -> leaf
    nic_down: np.ndarray   # leaf -> GPU
    # per leaf
    leaf_up: np.ndarray    # leaf -> spine
    leaf_down: np.ndarray  # spine -> leaf

    @property
    def n_gpus(self) -> int:
        return len(self.gpu_rack)

    @property
    def n_links(self) -> int:
        return len(self.capacity)

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_up)

    @property
    def nonbinding(self) -> np.ndarray:
        """Links that can never be a bottleneck: a leaf uplink (downlink) whose capacity
        covers all the NIC links feeding it (a non-blocking leaf). Per link, bool."""
        out = np.zeros(self.n_links, dtype=bool)
        if self.n_leaves > 1 and self.leaf_up[0] >= 0:
            feed_up = np.bincount(self.gpu_leaf, weights=self.capacity[self.nic_up],
                                  minlength=self.n_leaves)
            feed_down = np.bincount(self.gpu_leaf, weights=self.capacity[self.nic_down],
                                    minlength=self.n_leaves)
            out[self.leaf_up] = self.capacity[self.leaf_up] >= feed_up * (1 - 1e-12)
            out[self.leaf_down] = self.capacity[self.leaf_down] >= feed_down * (1 - 1e-12)
        return out

    def path(self, src: int, dst: int) -> list[int]:
        """Link ids from GPU src to GPU dst (empty for src == dst)."""
        if src == dst:
            return []
        if self.gpu_domain[src] == self.gpu_domain[dst]:
            return [int(self.su_up[src]), int(self.su_down[dst])]
        a, b = self.gpu_leaf[src], self.gpu_leaf[dst]
        if a == b:
            return [int(self.nic_up[src]), int(self.nic_down[dst])]
        return [int(self.nic_up[src]), int(self.leaf_up[a]), int(self.leaf_down[b]),
                int(self.nic_down[dst])]

    def path_latency(self, src: int, dst: int) -> float:
        """One-way latency GPU to GPU: the tier's figure (the hardware file gives it end to
        end, so it is not summed per hop)."""
        if src == dst:
            return 0.0
        hw = self.hardware
        if self.gpu_domain[src] == self.gpu_domain[dst]:
            return hw.scale_up.latency
        return hw.scale_out.latency

    def summary(self) -> dict:
        tiers = {}
        for t, name in enumerate(TIER_NAMES):
            mask = self.tier == t
            tiers[name] = {"links": int(mask.sum()),
                           "capacity_bytes_per_s": float(self.capacity[mask].sum())}
        return {"hardware": self.hardware.name, "racks": self.racks, "gpus": self.n_gpus,
                "scale_up_domains": int(self.gpu_domain.max()) + 1, "leaves": self.n_leaves,
                "scale_out_topology": self.hardware.scale_out.topology,
                "oversubscription": self.hardware.scale_out.oversubscription,
                "links": self.n_links, "tiers": tiers}


def build_cluster(hardware: Hardware, racks: int) -> Cluster:
    hw = hardware
    per_rack, per_dom = hw.gpus_per_rack, hw.domain_gpus
    n = racks * per_rack
    gpu = np.arange(n)
    rack = gpu // per_rack
    domain = gpu // per_dom
    local = gpu % per_dom
    if hw.scale_out.topology == "rail_optimized":
        leaf = local.copy()
        n_leaves = per_dom
    else:
        leaf = rack.copy()
        n_leaves = racks
    eff = hw.efficiency
    up_bw = hw.scale_up.bandwidth_per_gpu * eff.scale_up
    out_bw = hw.scale_out.bandwidth_per_gpu * eff.scale_out
    gpus_per_leaf = np.bincount(leaf, minlength=n_leaves)

    g = nx.DiGraph()
    capacity: list[float] = []
    latency: list[float] = []
    tier: list[int] = []
    names: list[str] = []

    def link(a: str, b: str, cap: float, lat: float, t: int) -> int:
        i = len(capacity)
        capacity.append(cap)
        latency.append(lat)
        tier.append(t)
        names.append(f"{a}->{b}")
        g.add_edge(a, b, id=i, capacity=cap, latency=lat, tier=TIER_NAMES[t])
        return i

    for i in range(n):
        g.add_node(f"gpu{i}", kind="gpu", rack=int(rack[i]), domain=int(domain[i]))
    for d in range(int(domain.max()) + 1):
        g.add_node(f"nvswitch{d}", kind="nvswitch", domain=d)
    for k in range(n_leaves):
        g.add_node(f"leaf{k}", kind="leaf")
    if n_leaves > 1:
        g.add_node("spine", kind="spine")
    su_lat, so_lat = hw.scale_up.latency / 2, hw.scale_out.latency / 4
    su_up = np.array([link(f"gpu{i}", f"nvswitch{domain[i]}", up_bw, su_lat, SCALE_UP)
                      for i in range(n)], dtype=np.int64)
    su_down = np.array([link(f"nvswitch{domain[i]}", f"gpu{i}", up_bw, su_lat, SCALE_UP)
                        for i in range(n)], dtype=np.int64)
    nic_up = np.array([link(f"gpu{i}", f"leaf{leaf[i]}", out_bw, so_lat, SCALE_OUT)
                       for i in range(n)], dtype=np.int64)
    nic_down = np.array([link(f"leaf{leaf[i]}", f"gpu{i}", out_bw, so_lat, SCALE_OUT)
                         for i in range(n)], dtype=np.int64)
    uplink = out_bw / hw.scale_out.oversubscription
    leaf_up = np.array([link(f"leaf{k}", "spine", uplink * gpus_per_leaf[k], so_lat, SCALE_OUT)
                        for k in range(n_leaves)] if n_leaves > 1 else [], dtype=np.int64)
    leaf_down = np.array([link("spine", f"leaf{k}", uplink * gpus_per_leaf[k], so_lat,
                               SCALE_OUT) for k in range(n_leaves)] if n_leaves > 1 else [],
                         dtype=np.int64)
    if n_leaves == 1:  # a single leaf needs no spine: same-leaf paths never use these
        leaf_up = leaf_down = np.full(1, -1, dtype=np.int64)
    return Cluster(hardware=hw, racks=racks, graph=g, capacity=np.array(capacity),
                   latency=np.array(latency), tier=np.array(tier, dtype=np.int8),
                   link_names=tuple(names), gpu_rack=rack, gpu_domain=domain, gpu_leaf=leaf,
                   su_up=su_up, su_down=su_down, nic_up=nic_up, nic_down=nic_down,
                   leaf_up=leaf_up, leaf_down=leaf_down)


def export_graph(cluster: Cluster, path: str) -> None:
    """GraphML (.graphml) or node-link JSON (.json)."""
    import json  # noqa: PLC0415

    if path.endswith(".graphml"):
        nx.write_graphml(cluster.graph, path)
    else:
        with open(path, "w") as fh:
            json.dump(nx.node_link_data(cluster.graph, edges="links"), fh)
