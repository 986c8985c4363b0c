"""One collective alone on a fresh cluster (`racksim collective`), for comparison with
nccl-tests or DeepEP measurements. Same network code path as a full simulation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import simpy

from ..cluster.topology import TIER_NAMES, build_cluster
from ..spec.errors import SpecError
from ..spec.hardware import Hardware
from . import collectives as coll
from .network import Network

KINDS = ("all_to_all", "all_reduce", "send_recv")


@dataclass(frozen=True)
class CollectiveResult:
    kind: str
    gpus: int
    domains: int
    size_bytes: float
    time_s: float
    algbw_bytes_per_s: float
    busbw_bytes_per_s: float
    bottleneck: str
    latency_s: float
    bytes_sent: float

    def to_json(self) -> dict:
        return dict(self.__dict__)


def pick_gpus(hw: Hardware, gpus: int, domains: int) -> tuple[np.ndarray, int]:
    """`gpus` GPUs spread evenly over `domains` scale-up domains; returns ids and racks."""
    if gpus < 2:
        raise SpecError("a collective needs at least 2 GPUs", key="--gpus", fix="use --gpus 2+")
    if domains < 1 or gpus % domains:
        raise SpecError(f"{gpus} GPUs do not spread evenly over {domains} domain(s)",
                        key="--racks", fix="choose --gpus divisible by --racks")
    per = gpus // domains
    if per > hw.domain_gpus:
        raise SpecError(f"{per} GPUs per domain exceed the {hw.domain_gpus}-GPU scale-up domain "
                        f"of {hw.name}", key="--racks",
                        fix=f"use --racks {math.ceil(gpus / hw.domain_gpus)} or more")
    per_rack = hw.gpus_per_rack // hw.domain_gpus
    racks = math.ceil(domains / per_rack)
    ids = np.concatenate([d * hw.domain_gpus + np.arange(per) for d in range(domains)])
    return ids, racks


def run_alone(cluster, t: coll.Transfer) -> tuple[float, str]:
    """Simulate one transfer alone on a fresh network: its time (latency included) and the
    tier of its most loaded link ("latency" if it moves nothing)."""
    env = simpy.Environment()
    net = Network(env, cluster.capacity, cluster.tier, record_series=False)

    def proc():
        yield env.timeout(t.latency)
        yield net.transfer(t.links, t.load)

    env.process(proc())
    env.run()
    if not len(t.links):
        return env.now, "latency"
    ratio = t.load / cluster.capacity[t.links]
    return env.now, TIER_NAMES[int(cluster.tier[t.links[int(np.argmax(ratio))]])]


def run_collective(hw: Hardware, kind: str, gpus: int, size: float, domains: int = 1,
                   algorithm: str = "ring") -> CollectiveResult:
    ids, racks = pick_gpus(hw, gpus, domains)
    cluster = build_cluster(hw, racks)
    n = len(ids)
    if kind == "all_to_all":  # nccl-tests: SIZE is the per-GPU buffer, SIZE/n to each peer
        t = coll.all_to_all(cluster, ids, size / n)
    elif kind == "all_reduce":
        t = coll.all_reduce(cluster, ids, size, algorithm)
    elif kind == "send_recv":  # nccl-tests sendrecv: rank r sends SIZE to rank r+1
        t = coll.send_recv(cluster, ids, np.roll(ids, -1), size)
    else:
        raise SpecError(f"unknown collective {kind!r}", key="KIND", fix=f"use one of {KINDS}")
    total, tier = run_alone(cluster, t)
    bottleneck = "latency" if t.latency >= total - t.latency else tier
    algbw = size / total if total > 0 else math.inf
    return CollectiveResult(kind, n, domains, float(size), total, algbw,
                            algbw * coll.BUS_FACTOR[kind](n), bottleneck, t.latency,
                            t.bytes_sent)


@dataclass(frozen=True)
class ExchangeResult:
    """One MoE dispatch or combine alone. Bandwidths divide bytes counted three ways by the
    time (DeepEP's test conventions): `selection` counts every (token, chosen expert) pair,
    own GPU included (its low-latency kernels); `gpu` every token once per destination GPU,
    own included (normal kernels, NVLink side); `domain` every token once per destination
    domain, own included (normal kernels, RDMA side)."""

    phase: str
    mode: str
    ep: int
    domains: int
    tokens_per_gpu: int
    time_s: float
    latency_s: float
    bytes_on_wire: float
    selection_bandwidth: float
    gpu_bandwidth: float
    domain_bandwidth: float
    bottleneck: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


def run_moe_exchange(hw: Hardware, phase: str, ep: int, domains: int, tokens: int,
                     hidden: int, top_k: int, experts: int, mode: str,
                     precision: str, scale_block: int, groups: int = 1,
                     topk_groups: int | None = None) -> ExchangeResult:
    """One dispatch (or combine) of `tokens` tokens per GPU among `ep` GPUs spread over
    `domains` scale-up domains, with uniform routing at its expected counts (no sampling
    noise), through the engine's own dispatch matrix and network."""
    from .costs import LayerCosts, Routing, dispatch_matrix, routing_hits, token_bytes

    if phase not in ("dispatch", "combine"):
        raise SpecError(f"unknown phase {phase!r}", key="KIND", fix="use dispatch or combine")
    if experts % ep:
        raise SpecError(f"EP {ep} does not divide {experts} experts", key="--experts",
                        fix="choose experts divisible by --gpus")
    ids, racks = pick_gpus(hw, ep, domains)
    cluster = build_cluster(hw, racks)
    costs = LayerCosts(G=ep, ep=ep, tp=1, flops=1.0, attn_flops_rate=1.0, bandwidth=1.0, bpp=1.0,
                       dense_weight_bytes=0.0, dense_flops_per_token=0.0,
                       attn_flops_per_ctx=0.0, kv_bytes_per_token=0.0, expert_params=0.0,
                       experts=experts, top_k=top_k, dispatch_bytes=0.0, combine_bytes=0.0,
                       activation_bytes=0.0)
    p = np.full(experts, 1.0 / experts)
    tok = np.full(ep, tokens, dtype=np.int64)
    routing = Routing(np.outer(tok * top_k, p), tok)
    hits = routing_hits(p, top_k, groups, topk_groups or groups, ep,
                        cluster.gpu_domain[ids])
    per_token = token_bytes(hidden, precision, scale_block)
    m = dispatch_matrix(costs, routing, per_token, mode, hits)
    t = coll.exchange(cluster, ids, m if phase == "dispatch" else m.T)
    total, bottleneck = run_alone(cluster, t)
    n_dom = len(hits.domain)
    return ExchangeResult(
        phase, mode, ep, n_dom, tokens, total, t.latency, t.bytes_sent / ep,
        selection_bandwidth=tokens * top_k * per_token / total,
        gpu_bandwidth=tokens * float(hits.rank.sum()) * per_token / total,
        domain_bandwidth=tokens * float(hits.domain.sum()) * per_token / total,
        bottleneck=bottleneck)
