"""Collectives as aggregated flows: the bytes each puts on each link, and its start latency.

Every collective phase becomes one network flow (see network.py), built from a matrix of
bytes between GPU pairs in one vectorised pass over the cluster's link arrays. Registered by
name in COLLECTIVES for `racksim collective`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..cluster.topology import Cluster


@dataclass(frozen=True)
class Transfer:
    links: np.ndarray
    load: np.ndarray        # bytes on each link
    latency: float          # paid before the fluid phase
    bytes_sent: float       # total over all pairs (conservation checks)


def pair_loads(cluster: Cluster, gpus: np.ndarray, matrix: np.ndarray,
               dst_gpus: np.ndarray | None = None) -> Transfer:
    """Link loads of sending matrix[i, j] bytes from gpus[i] to dst_gpus[j] at once."""
    src = np.asarray(gpus)
    dst = src if dst_gpus is None else np.asarray(dst_gpus)
    m = np.array(matrix, dtype=float)
    same_gpu = src[:, None] == dst[None, :]
    m[same_gpu] = 0.0
    dom_s, dom_d = cluster.gpu_domain[src], cluster.gpu_domain[dst]
    same_dom = dom_s[:, None] == dom_d[None, :]
    intra = np.where(same_dom, m, 0.0)
    cross = m - intra
    parts_l, parts_v = [], []
    if intra.any():
        parts_l += [cluster.su_up[src], cluster.su_down[dst]]
        parts_v += [intra.sum(axis=1), intra.sum(axis=0)]
    latency = cluster.hardware.scale_up.latency if intra.any() else 0.0
    if cross.any():
        parts_l += [cluster.nic_up[src], cluster.nic_down[dst]]
        parts_v += [cross.sum(axis=1), cross.sum(axis=0)]
        leaf_s, leaf_d = cluster.gpu_leaf[src], cluster.gpu_leaf[dst]
        spine = np.where(leaf_s[:, None] != leaf_d[None, :], cross, 0.0)
        if spine.any():
            n_leaves = cluster.n_leaves
            up = np.bincount(leaf_s, weights=spine.sum(axis=1), minlength=n_leaves)
            down = np.bincount(leaf_d, weights=spine.sum(axis=0), minlength=n_leaves)
            parts_l += [cluster.leaf_up, cluster.leaf_down]
            parts_v += [up, down]
        latency = cluster.hardware.scale_out.latency
    if not parts_l:
        return Transfer(np.zeros(0, np.int64), np.zeros(0), 0.0, 0.0)
    return Transfer(np.concatenate(parts_l), np.concatenate(parts_v), latency, float(m.sum()))


def launched(cluster: Cluster, t: Transfer, hops: int = 1) -> Transfer:
    """A collective as launched: `hops` sequential link latencies plus the hardware's fixed
    per-collective overhead (kernel launch and synchronisation, efficiency.collective_overhead)."""
    if not len(t.links):
        return t
    return Transfer(t.links, t.load,
                    hops * t.latency + cluster.hardware.efficiency.collective_overhead,
                    t.bytes_sent)


def exchange(cluster: Cluster, gpus: np.ndarray, matrix: np.ndarray) -> Transfer:
    """One collective moving matrix[i, j] bytes from gpus[i] to gpus[j] (MoE dispatch and
    combine; the matrix comes from costs.dispatch_matrix)."""
    return launched(cluster, pair_loads(cluster, gpus, matrix))


def all_to_all(cluster: Cluster, gpus: np.ndarray, bytes_per_pair: float) -> Transfer:
    """Every GPU sends `bytes_per_pair` to every other GPU of the group."""
    n = len(gpus)
    return exchange(cluster, gpus, np.full((n, n), float(bytes_per_pair)))


def ring_neighbours(n: int) -> np.ndarray:
    return (np.arange(n) + 1) % n


def all_reduce(cluster: Cluster, gpus: np.ndarray, size: float,
               algorithm: str = "ring") -> Transfer:
    """All-reduce of `size` bytes per GPU. Ring: 2(n-1) steps of size/n to the next GPU,
    i.e. 2(n-1)/n x size on each ring link and 2(n-1) latencies. Tree (NCCL's double binary
    tree): the same bytes per link at full pipelining, 2 log2(n) latencies."""
    n = len(gpus)
    if n < 2:
        return Transfer(np.zeros(0, np.int64), np.zeros(0), 0.0, 0.0)
    m = group_all_reduce_matrix(n, n, size)
    return launched(cluster, pair_loads(cluster, gpus, m), all_reduce_hops(n, algorithm))


def all_reduce_hops(n: int, algorithm: str) -> int:
    """Sequential latencies of an all-reduce among n GPUs: ring 2(n-1), tree 2 log2 n."""
    return 2 * (n - 1) if algorithm == "ring" else 2 * math.ceil(math.log2(n))


def group_all_reduce_matrix(G: int, n: int, size) -> np.ndarray:
    """Bytes between GPUs when consecutive groups of `n` of `G` GPUs (the TP groups of a
    stage) all-reduce at once, GPU i contributing size[i] bytes: ring steps of size/n."""
    idx = np.arange(G)
    nxt = (idx // n) * n + ring_neighbours(n)[idx % n]
    m = np.zeros((G, G))
    m[idx, nxt] = 2.0 * (n - 1) / n * np.broadcast_to(np.asarray(size, dtype=float), (G,))
    return m


def send_recv(cluster: Cluster, src: np.ndarray, dst: np.ndarray, size) -> Transfer:
    """GPU src[i] sends size[i] bytes to dst[i] (pipeline stage boundaries)."""
    size = np.broadcast_to(np.asarray(size, dtype=float), (len(src),))
    return launched(cluster, pair_loads(cluster, src, np.diag(size), dst_gpus=dst))


# nccl-tests bus-bandwidth factors: busbw = algbw x factor(n)
# (https://github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md)
BUS_FACTOR = {
    "all_to_all": lambda n: (n - 1) / n,
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "send_recv": lambda n: 1.0,
}
