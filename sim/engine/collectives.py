"""Collectives as aggregated flows: the bytes each puts on each link, and its start latency.

Every collective phase becomes one network flow (see network.py), built from a matrix of
bytes between GPU pairs in one vectorised pass over the cluster's link arrays. Registered by
name in COLLECTIVES for `racksim collective`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from ..cluster.topology import Cluster


@dataclass(slots=True)
class Transfer:
    links: np.ndarray
    load: np.ndarray        # bytes on each link
    latency: float          # paid before the fluid phase
    bytes_sent: float       # total over all pairs (conservation checks)


def pair_loads(cluster: Cluster, gpus: np.ndarray, matrix: np.ndarray,
               dst_gpus: np.ndarray | None = None) -> Transfer:
    """Link loads of sending matrix[i, j] bytes from gpus[i] to dst_gpus[j] at once (a GPU
    sending to itself moves nothing)."""
    src = np.asarray(gpus)
    dst = src if dst_gpus is None else np.asarray(dst_gpus)
    out_links, out_v, in_links, in_v, latency, sent = _sides(cluster, src, dst, matrix)
    return _transfer(out_links, out_v, in_links, in_v, latency, sent)


def exchange_pair(cluster: Cluster, gpus: np.ndarray, matrix: np.ndarray) -> \
        tuple[Transfer, Transfer]:
    """Link loads of sending matrix[i, j] bytes from gpus[i] to gpus[j], and of sending its
    transpose (a dispatch and its combine), from one pass: among the same GPUs the
    transpose puts each link's load on its mirror (a GPU's uplink carries what its
    downlink did)."""
    src = np.asarray(gpus)
    out_links, out_v, in_links, in_v, latency, sent = _sides(cluster, src, src, matrix)
    return (_transfer(out_links, out_v, in_links, in_v, latency, sent),
            _transfer(out_links, in_v, in_links, out_v, latency, sent))


def _sides(cluster: Cluster, src: np.ndarray, dst: np.ndarray, matrix: np.ndarray):
    """Per tier used, the links bytes leave by and the bytes on each (row sums), the links
    they arrive by and theirs (column sums); the latency of the slowest tier used; and
    the bytes sent in all."""
    ns, nd, nl = len(src), len(dst), cluster.n_leaves
    sums, any_i, any_x, any_s, sent = _link_sums(    # C order: one compiled signature
        np.ascontiguousarray(matrix, dtype=float), src, dst, cluster.gpu_domain,
        cluster.gpu_leaf, nl)
    up_i, down_i = sums[:ns], sums[ns:ns + nd]
    up_x, down_x = sums[ns + nd:2 * ns + nd], sums[2 * ns + nd:2 * (ns + nd)]
    leaf_u, leaf_d = sums[2 * (ns + nd):2 * (ns + nd) + nl], sums[2 * (ns + nd) + nl:]
    out_links, out_v, in_links, in_v = [], [], [], []
    latency = 0.0
    if any_i:
        out_links.append(cluster.su_up[src])
        out_v.append(up_i)
        in_links.append(cluster.su_down[dst])
        in_v.append(down_i)
        latency = cluster.hardware.scale_up.latency
    if any_x:
        out_links.append(cluster.nic_up[src])
        out_v.append(up_x)
        in_links.append(cluster.nic_down[dst])
        in_v.append(down_x)
        if any_s:
            out_links.append(cluster.leaf_up)
            out_v.append(leaf_u)
            in_links.append(cluster.leaf_down)
            in_v.append(leaf_d)
        latency = cluster.hardware.scale_out.latency
    return out_links, out_v, in_links, in_v, latency, sent


@numba.njit(cache=True, nogil=True)
def _link_sums(m, src, dst, gpu_domain, gpu_leaf, n_leaves):   # pragma: no cover
    """One pass over the pairs (compiled): bytes each sender puts on its scale-up uplink
    (same domain) or NIC (other domains), each receiver's downlinks likewise, and each
    leaf's spine up/downlinks (between leaves), packed in one array in that order; whether
    each tier is used; bytes sent. A GPU sending to itself moves nothing."""
    ns, nd = len(src), len(dst)
    sums = np.zeros(2 * (ns + nd + n_leaves))   # one array back to Python, sliced there
    up_i, down_i = sums[:ns], sums[ns:ns + nd]
    up_x, down_x = sums[ns + nd:2 * ns + nd], sums[2 * ns + nd:2 * (ns + nd)]
    leaf_u = sums[2 * (ns + nd):2 * (ns + nd) + n_leaves]
    leaf_d = sums[2 * (ns + nd) + n_leaves:]
    any_i = any_x = any_s = False
    sent = 0.0
    dom_d, leaf_of_d = np.empty(nd, np.int64), np.empty(nd, np.int64)
    at = np.full(len(gpu_domain), -1, np.int64)      # GPU -> its position among dst
    one_domain = True
    for j in range(nd):
        dom_d[j], leaf_of_d[j] = gpu_domain[dst[j]], gpu_leaf[dst[j]]
        at[dst[j]] = j
        one_domain &= dom_d[j] == dom_d[0]
    for i in range(ns):
        one_domain &= gpu_domain[src[i]] == dom_d[0]
    if one_domain:     # the common case: row and column sums, around each self-send
        for i in range(ns):
            me = at[src[i]]
            skip = me if me >= 0 else nd
            row = 0.0
            for j in range(skip):
                row += m[i, j]
                down_i[j] += m[i, j]
            for j in range(skip + 1, nd):
                row += m[i, j]
                down_i[j] += m[i, j]
            up_i[i] = row
            sent += row
        for i in range(ns):
            any_i |= up_i[i] != 0.0
        return sums, any_i, any_x, any_s, sent
    spine_in = np.zeros(nd)            # per receiver: bytes from other leaves
    for i in range(ns):                # a row's own sums stay in registers
        a = src[i]
        da, la = gpu_domain[a], gpu_leaf[a]
        row_i = row_x = row_s = 0.0
        for j in range(nd):
            v = m[i, j]
            if dst[j] == a:
                continue
            if da == dom_d[j]:
                row_i += v
                down_i[j] += v
            else:
                row_x += v
                down_x[j] += v
                if la != leaf_of_d[j]:
                    row_s += v
                    spine_in[j] += v
        up_i[i], up_x[i] = row_i, row_x
        leaf_u[la] += row_s
        sent += row_i + row_x
        any_i |= row_i != 0.0
        any_x |= row_x != 0.0
        any_s |= row_s != 0.0
    for j in range(nd):
        leaf_d[leaf_of_d[j]] += spine_in[j]
    return sums, any_i, any_x, any_s, sent


def _transfer(out_links: list, out_v: list, in_links: list, in_v: list, latency: float,
              sent: float) -> Transfer:
    if not out_links:
        return Transfer(np.zeros(0, np.int64), np.zeros(0), 0.0, 0.0)
    return Transfer(np.concatenate(out_links + in_links), np.concatenate(out_v + in_v),
                    latency, sent)


def link_map(cluster: Cluster, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Link ids as seen from GPU group `b` instead of `a` (position k of one for position k
    of the other: its scale-up ports, NIC ports and its leaf's spine ports), when the two
    groups are laid out alike: a GPU-for-GPU map of their scale-up domains and of their
    leaves both ways, the same tiers, capacities and binding on mapped links. Then any
    exchange among `b` is one among `a` with its link ids mapped, loads and all
    (`Network.mapped`). None when they are not alike."""
    a, b = np.asarray(a), np.asarray(b)
    if len(a) != len(b):
        return None
    c = cluster
    for per_gpu in (c.gpu_domain, c.gpu_leaf):      # a bijection, position by position
        x, y = per_gpu[a], per_gpu[b]
        pairs = np.unique(np.column_stack([x, y]), axis=0)
        if len(np.unique(pairs[:, 0])) != len(pairs) or len(np.unique(pairs[:, 1])) != len(pairs):
            return None
    la, lb = c.gpu_leaf[a], c.gpu_leaf[b]
    src = np.concatenate([c.su_up[a], c.su_down[a], c.nic_up[a], c.nic_down[a],
                          c.leaf_up[la], c.leaf_down[la]])
    dst = np.concatenate([c.su_up[b], c.su_down[b], c.nic_up[b], c.nic_down[b],
                          c.leaf_up[lb], c.leaf_down[lb]])
    if not np.array_equal(src < 0, dst < 0):         # a link one side lacks (no spine)
        return None
    keep = src >= 0
    src, dst = src[keep], dst[keep]
    nonbinding = c.nonbinding
    if not (np.array_equal(c.capacity[src], c.capacity[dst])
            and np.array_equal(c.tier[src], c.tier[dst])
            and np.array_equal(nonbinding[src], nonbinding[dst])):
        return None
    m = np.arange(c.n_links)
    m[src] = dst
    return m


def scaled(t: Transfer, factor: float) -> Transfer:
    """The same transfer with every byte multiplied by `factor`."""
    return Transfer(t.links, t.load * factor, t.latency, t.bytes_sent * factor)


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


@dataclass(frozen=True)
class MessageMap:
    """Link loads of GPU src[i] sending size[i] bytes to dst[i], for fixed pairs: a linear
    map built once (`message_map`) and applied to any sizes (`loads`)."""

    links: np.ndarray        # every link some pair's path crosses (unique)
    entry_link: np.ndarray   # per (pair, link on its path): position in `links`
    entry_pair: np.ndarray   # per (pair, link on its path): the pair
    intra: np.ndarray        # per pair: inside one scale-up domain
    cross: np.ndarray        # per pair: across domains (scale-out)
    up_latency: float
    out_latency: float

    def loads(self, size) -> Transfer:
        size = np.broadcast_to(np.asarray(size, dtype=float), self.intra.shape)
        load = np.bincount(self.entry_link, weights=size[self.entry_pair],
                           minlength=len(self.links))
        moving = size > 0
        latency = self.out_latency if (moving & self.cross).any() else \
            self.up_latency if (moving & self.intra).any() else 0.0
        return Transfer(self.links, load, latency,
                        float(size[self.intra | self.cross].sum()))


def message_map(cluster: Cluster, src: np.ndarray, dst: np.ndarray) -> MessageMap:
    src, dst = np.asarray(src), np.asarray(dst)
    pair = np.arange(len(src))
    moves = src != dst
    intra = moves & (cluster.gpu_domain[src] == cluster.gpu_domain[dst])
    cross = moves & ~intra
    leaf_s, leaf_d = cluster.gpu_leaf[src], cluster.gpu_leaf[dst]
    spine = cross & (leaf_s != leaf_d)
    parts = [(cluster.su_up[src[intra]], pair[intra]), (cluster.su_down[dst[intra]], pair[intra]),
             (cluster.nic_up[src[cross]], pair[cross]), (cluster.nic_down[dst[cross]], pair[cross]),
             (cluster.leaf_up[leaf_s[spine]], pair[spine]),
             (cluster.leaf_down[leaf_d[spine]], pair[spine])]
    ids = np.concatenate([p[0] for p in parts]).astype(np.int64)
    links, entry_link = np.unique(ids, return_inverse=True)
    hw = cluster.hardware
    return MessageMap(links, entry_link, np.concatenate([p[1] for p in parts]), intra, cross,
                      hw.scale_up.latency, hw.scale_out.latency)


def message_loads(cluster: Cluster, src: np.ndarray, dst: np.ndarray, size) -> Transfer:
    """Link loads of GPU src[i] sending size[i] bytes to dst[i] for every i at once: the
    same as pair_loads of the diagonal matrix, in time linear in the pairs."""
    return message_map(cluster, src, dst).loads(size)


def send_recv(cluster: Cluster, src: np.ndarray, dst: np.ndarray, size) -> Transfer:
    """GPU src[i] sends size[i] bytes to dst[i] (pipeline stage boundaries)."""
    return launched(cluster, message_loads(cluster, src, dst, size))


# nccl-tests bus-bandwidth factors: busbw = algbw x factor(n)
# (https://github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md)
BUS_FACTOR = {
    "all_to_all": lambda n: (n - 1) / n,
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "send_recv": lambda n: 1.0,
}
