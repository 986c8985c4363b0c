"""What one layer of one step costs each GPU of a stage group, and where its tokens go.

Operations take max(flops / (peak x efficiency), bytes / (HBM bandwidth x efficiency)) on
each GPU (the one rule for op timing). Parameters follow the roofline's convention so the two
paths agree: everything but the routed experts ("dense part": attention, dense and shared
MLPs, routers, embeddings) is spread evenly over the EP x TP GPUs of a stage (or only over TP
with `layout.dense: replicated`) and over the layers; routed experts live on their EP rank, split over its TP GPUs, and a GPU reads an
expert's weights only when at least one token was routed to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numba
import numpy as np

from ..spec.engine_options import HotRouting, MoEOptions, ZipfRouting
from ..spec.hardware import Hardware
from ..spec.layout import Layout, dense_share
from ..spec.model import Model
from ..spec.precision import BYTES_PER_ELEMENT, precision_for_bytes
from . import kernels
from . import measured as measured_timing
from .kernels import KernelTable, StepWork, grouped_time, layer_time
from .sampling import Categories, LogFactorials, categories, multinomial


@numba.njit(cache=True, nogil=True)
def op_time(flops, nbytes, flops_per_s, bytes_per_s):   # pragma: no cover (compiled)
    """The one rule for op timing: (time, compute_bound) = max(flops / achieved FLOP/s,
    bytes / achieved HBM bandwidth), elementwise over arrays (or for numbers). Compiled,
    so the phases below call it from compiled code too."""
    t_c, t_m = flops / flops_per_s, nbytes / bytes_per_s
    return np.maximum(t_c, t_m), t_c > t_m


@numba.njit(cache=True, nogil=True)
def _dense_phase(tokens, kv_tokens, attn_pairs, flops_per_token, flops_per_ctx, flops,
                 attn_rate, tp, weight_bytes, kv_bytes, bandwidth):   # pragma: no cover
    # attention's FLOPs run at their own rate; expressed here as GEMM-equivalent FLOPs
    f = (tokens * flops_per_token + attn_pairs * flops_per_ctx * (flops / attn_rate)) / tp
    mem = weight_bytes + kv_tokens * kv_bytes / tp
    return op_time(f, mem, flops, bandwidth)


@numba.njit(cache=True, nogil=True)
def _expert_phase(expert_tokens, ep, per_rank, expert_params, tp, bpp, flops,
                  bandwidth):   # pragma: no cover
    tokens, used = np.zeros(ep), np.zeros(ep)    # per EP rank: tokens, experts reached
    for r in range(ep):
        for e in range(r * per_rank, (r + 1) * per_rank):
            tokens[r] += expert_tokens[e]
            used[r] += expert_tokens[e] > 0
    return op_time(2.0 * expert_params * tokens / tp, used * expert_params * bpp / tp, flops,
                   bandwidth)


@dataclass(frozen=True)
class LayerCosts:
    """Per-layer constants of one stage group of G = EP x TP GPUs."""

    G: int
    ep: int
    tp: int
    flops: float                  # peak x efficiency, per GPU
    attn_flops_rate: float        # attention: peak at the KV precision x attention efficiency
    bandwidth: float              # HBM bytes/s x efficiency, per GPU
    bpp: float
    dense_weight_bytes: float     # per layer per GPU
    dense_flops_per_token: float  # per layer (whole token; divided by where tokens run)
    attn_flops_per_ctx: float     # per layer, per token per context token
    kv_bytes_per_token: float     # per layer
    expert_params: float          # one routed expert of one layer
    experts: int
    top_k: int
    dispatch_bytes: float         # per token per expert copy
    combine_bytes: float
    activation_bytes: float       # per token, stage boundary and TP all-reduce
    # kernel-level timing (kernels.py); None: the pooled rule (one roofline per phase)
    dense_kernels: KernelTable | None = None
    expert_kernels: KernelTable | None = None
    dense_sharded: bool = True    # dense part split over the whole stage group
    # engine.op_timing measured: each kernel's measured correction (measured.py)
    measured: measured_timing.MeasuredLayer | None = None
    timing_warnings: tuple = ()   # what the op timing could not do as asked

    @property
    def experts_per_rank(self) -> int:
        return self.experts // self.ep if self.experts else 0

    def dense_phase(self, work: StepWork):
        """Attention + dense part on each GPU: (time, compute-bound share) arrays over the G
        GPUs, given each GPU's step work (`kernels.StepWork`: the tokens its attention group,
        its TP GPUs, runs; its decoding sequences and prompt tokens with the KV they read).
        Per kernel (`dense_kernels`): the sum of the layer's kernels, the share being the
        time its compute-bound kernels take; pooled: one roofline over the phase."""
        k = self.dense_kernels
        if k is not None:
            n = len(work.tokens)
            if self.dense_sharded:   # every GPU runs the whole step on its slice: time once
                sums = np.asarray(work, dtype=float).sum(axis=1, keepdims=True) / self.tp
                work = StepWork(*sums)
            if self.measured is not None:
                t, share = measured_timing.dense_time(work, self.measured)
            else:
                t, share = layer_time(work, k)
            if self.dense_sharded:
                return np.full(n, t[0]), np.full(n, share[0])
            return t, share
        w = [np.asarray(x, dtype=float) for x in work]
        t, cb = _dense_phase(w[0], w[2] + w[4], w[2] + w[5], self.dense_flops_per_token,
                             self.attn_flops_per_ctx, self.flops, self.attn_flops_rate,
                             self.tp, self.dense_weight_bytes, self.kv_bytes_per_token,
                             self.bandwidth)
        return t, cb.astype(np.float64)

    def expert_phase(self, expert_tokens: np.ndarray):
        """Routed experts on each GPU given tokens per expert (length E):
        (time, compute_bound) arrays over G GPUs."""
        k = self.expert_kernels
        if k is not None:
            tokens = np.asarray(expert_tokens, dtype=float)
            t, cb = grouped_time(tokens, self.ep,
                                 self.experts_per_rank, k.cls, k.flops_per_row,
                                 k.weight_bytes, k.io_bytes_per_row, k.per_layer,
                                 k.flops_rate, k.bytes_rate, k.fixed, k.per_row, k.tile)
            if self.measured is not None and self.measured.experts is not None:
                copies = tokens.reshape(self.ep, -1).sum(axis=1)
                t = t * np.exp(self.measured.experts(copies * self.measured.tokens_per_copy))
        else:
            t, cb = _expert_phase(np.asarray(expert_tokens, dtype=float), self.ep,
                                  self.experts_per_rank, self.expert_params, self.tp,
                                  self.bpp, self.flops, self.bandwidth)
            cb = cb.astype(np.float64)
        if self.tp == 1:
            return t, cb
        return np.repeat(t, self.tp), np.repeat(cb, self.tp)


# op timings that time each kernel (kernels.py); "pooled" is one roofline per phase
PER_KERNEL = ("analytical", "measured")


def layer_costs(model: Model, hardware: Hardware, layout: Layout, moe: MoEOptions,
                activation_precision: str, attention_flops: bool,
                op_timing: str = "pooled") -> LayerCosts:
    _, peak = hardware.gpu.flops_at(model.compute_precision)
    # attention multiplies activations by the KV cache: at the KV precision, at least BF16
    # (FlashMLA computes in BF16 even over an FP8 cache)
    attn_prec = precision_for_bytes(max(model.kv_bytes_per_element, BYTES_PER_ELEMENT["bf16"]))
    _, attn_peak = hardware.gpu.flops_at(attn_prec or "bf16")
    eff = hardware.efficiency
    G = layout.stage_gpus
    L = model.layers
    if model.moe is not None:
        E, k, n_moe = model.moe.experts, model.moe.top_k, model.moe.moe_layers
        per_expert = model.routed_expert_params / (E * n_moe)
    else:
        E = k = n_moe = 0
        per_expert = 0.0
    dense_active = model.active_params - k * per_expert * n_moe
    dense_k = expert_k = None
    measured, warnings = None, []
    if op_timing in PER_KERNEL:
        t = dense_share(layout)
        dk = kernels.dense_kernels(model, model.architecture, t)
        if not attention_flops:
            dk = [replace(x, flops_per_pair=0.0) for x in dk]
        # fitted attention classes carry one compute figure per KV precision (the measured
        # kernels read an FP8 cache with FP8 math); the scalar figures keep the rule above
        kv_prec = (precision_for_bytes(model.kv_bytes_per_element)
                   if hardware.efficiency.kernels is not None else None)
        prec = kv_prec or attn_prec or "bf16"
        dense_k = kernels.table(dk, hardware, prec)
        ek = kernels.expert_kernels(model, model.architecture, layout.tensor_parallel)
        expert_k = kernels.table(ek, hardware, prec) if ek else None
        if op_timing == "measured":
            measured, warnings = measured_timing.for_layer(model, hardware, dk, dense_k, ek,
                                                           layout)
    return LayerCosts(
        G=G, ep=layout.expert_parallel, tp=layout.tensor_parallel,
        flops=peak * eff.compute, attn_flops_rate=attn_peak * eff.attention_compute,
        bandwidth=hardware.gpu.hbm_bandwidth * eff.memory,
        bpp=model.bytes_of("moe"),
        dense_weight_bytes=(model.weight_bytes - model.routed_weight_bytes)
        / (L * dense_share(layout)),
        dense_flops_per_token=2.0 * dense_active / L,
        attn_flops_per_ctx=(model.attention_flops_per_context_token / L) if attention_flops
        else 0.0,
        kv_bytes_per_token=model.kv_bytes_per_token / L,
        expert_params=per_expert, experts=E + (moe.redundant_experts if E else 0), top_k=k,
        dispatch_bytes=token_bytes(model.hidden, moe.dispatch_precision, moe.scale_block),
        combine_bytes=token_bytes(model.hidden, moe.combine_precision, moe.scale_block),
        activation_bytes=model.hidden * BYTES_PER_ELEMENT[activation_precision],
        dense_kernels=dense_k, expert_kernels=expert_k,
        dense_sharded=dense_share(layout) == layout.stage_gpus,
        measured=measured, timing_warnings=tuple(warnings))


def moe_layer_flags(model: Model) -> np.ndarray:
    """True for MoE layers: the last `moe_layers` layers (dense layers come first)."""
    flags = np.zeros(model.layers, dtype=bool)
    if model.moe is not None:
        flags[model.layers - model.moe.moe_layers:] = True
    return flags


def expert_popularity(moe: MoEOptions, experts: int, rng: np.random.Generator) -> np.ndarray:
    """Probability that one routing choice picks each expert."""
    r = moe.routing
    if isinstance(r, ZipfRouting):
        ranks = rng.permutation(experts) + 1.0
        p = ranks ** -r.exponent
    elif isinstance(r, HotRouting):
        hot = np.zeros(experts, dtype=bool)
        hot[np.unique(r.experts)] = True
        p = np.where(hot, r.share / hot.sum(), (1 - r.share) / max(experts - hot.sum(), 1))
    else:
        p = np.ones(experts)
    return p / p.sum()


def token_bytes(hidden: int, precision: str, scale_block: int) -> float:
    """Bytes of one token's activation: elements, plus one FP32 scale per `scale_block`
    elements when the precision is narrower than BF16 (DeepEP's FP8 token format)."""
    b = hidden * BYTES_PER_ELEMENT[precision]
    if scale_block and BYTES_PER_ELEMENT[precision] < BYTES_PER_ELEMENT["bf16"]:
        b += math.ceil(hidden / scale_block) * BYTES_PER_ELEMENT["fp32"]
    return b


def hit_probability(popularity: np.ndarray, top_k: int, sets: np.ndarray, groups: int = 1,
                    topk_groups: int | None = None) -> np.ndarray:
    """P(one token's top_k choices include an expert of each set); `sets` is [n_sets, E] 0/1.

    Choices are independent draws from `popularity`, as in `draw_routing`. Under
    group-limited routing a token first takes `topk_groups` of the `groups` equal expert
    groups, group g with probability min(1, topk_groups x its mass), then draws its experts
    from the groups taken (groups treated as independent)."""
    p = np.asarray(popularity, dtype=float)
    sets = np.asarray(sets, dtype=float)
    if groups <= 1 or topk_groups is None or topk_groups >= groups:
        return 1.0 - (1.0 - np.clip(sets @ p, 0.0, 1.0)) ** top_k
    E = len(p)
    onehot = np.zeros((E, groups))
    onehot[np.arange(E), np.arange(E) // (E // groups)] = 1.0
    group_mass = p @ onehot
    taken = np.minimum(1.0, topk_groups * group_mass)
    per_pick = (sets * p) @ onehot / float(taken @ group_mass)   # [n_sets, groups]
    miss = (1.0 - taken) + taken * (1.0 - np.clip(per_pick, 0.0, 1.0)) ** top_k
    return 1.0 - miss.prod(axis=1)


@dataclass(frozen=True)
class Hits:
    """Per-token hit probabilities of a stage group's EP ranks and scale-up domains, and the
    routing mass of each (for turning sampled copies into distinct tokens)."""

    rank: np.ndarray
    rank_mass: np.ndarray
    rank_domain: np.ndarray     # domain index (0..n) of each EP rank
    domain: np.ndarray
    domain_mass: np.ndarray


def routing_hits(popularity: np.ndarray, top_k: int, groups: int, topk_groups: int,
                 ep: int, rank_domain: np.ndarray) -> Hits:
    E = len(popularity)
    ranks = np.zeros((ep, E))
    ranks[np.arange(E) // (E // ep), np.arange(E)] = 1.0
    rank_domain = np.unique(np.asarray(rank_domain), return_inverse=True)[1]
    doms = np.zeros((int(rank_domain.max()) + 1, ep))
    doms[rank_domain, np.arange(ep)] = 1.0
    dom_sets = doms @ ranks
    return Hits(hit_probability(popularity, top_k, ranks, groups, topk_groups),
                ranks @ popularity, rank_domain,
                hit_probability(popularity, top_k, dom_sets, groups, topk_groups),
                dom_sets @ popularity)


def physical_popularity(popularity: np.ndarray, redundant: int) -> np.ndarray:
    """Popularity over physical experts when the `redundant` most popular experts get a second
    copy (EPLB): a copied expert's share splits evenly between its copies, which sit in the
    slots after the originals' positions are kept (copies appended at the end)."""
    if not redundant:
        return popularity
    hot = np.argsort(-popularity, kind="stable")[:redundant]
    p = popularity.copy()
    p[hot] /= 2.0
    return np.concatenate([p, p[hot]])


@dataclass(frozen=True)
class Routing:
    """One step's routing of a stage group: token copies per (source GPU, EP rank) and per
    expert. Built from a full [G, E] matrix (`counts`, tests and microbenchmarks) or drawn
    rank by rank (`draw_routing`)."""

    counts: np.ndarray | None          # [G, E] copies from GPU i to expert e, if known
    tokens: np.ndarray                 # [G] tokens on each GPU
    rank: np.ndarray | None = None     # [G, ep] copies from GPU i to EP rank r
    experts: np.ndarray | None = None  # [E] copies per expert

    def expert_tokens(self) -> np.ndarray:
        return self.experts if self.experts is not None else self.counts.sum(axis=0)

    def rank_copies(self, ep: int) -> np.ndarray:
        if self.rank is not None:
            return self.rank
        return self.counts.reshape(len(self.counts), ep, -1).sum(axis=2)


@dataclass(frozen=True)
class RoutingTable:
    """What every routing draw of a run shares: the probability that one choice lands on
    each EP rank, and each rank's experts' shares of it (built once, `routing_table`)."""

    ep: int
    rank: Categories         # [ep]: one distribution for every GPU
    expert: Categories       # [ep, experts per rank]: each rank's own
    logf: LogFactorials


def routing_table(costs: LayerCosts, popularity: np.ndarray) -> RoutingTable:
    ep, per = costs.ep, costs.experts_per_rank
    p = np.asarray(popularity, dtype=float).reshape(ep, per)
    mass = p.sum(axis=1)
    cond = np.divide(p, mass[:, None], out=np.full_like(p, 1.0 / per), where=mass[:, None] > 0)
    return RoutingTable(ep, categories(mass), categories(cond), LogFactorials())


def draw_routing(costs: LayerCosts, tokens: np.ndarray, table: RoutingTable,
                 rng: np.random.Generator) -> Routing:
    """Each token on GPU i makes top_k choices from the experts' popularity (`table`;
    multinomial; the distinctness of a token's k experts is not enforced). Drawn in two
    exact stages: each GPU's copies over EP ranks, then each rank's total over its experts
    (a sum of multinomials with equal probabilities is multinomial), which costs G x EP + E
    binomials instead of G x E (sampling.multinomial)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    rank = multinomial(rng, tokens * costs.top_k, table.rank, table.logf)
    experts = multinomial(rng, rank.sum(axis=0), table.expert, table.logf).ravel()
    return Routing(None, tokens, rank, experts)


def _distinct(tokens: np.ndarray, copies: np.ndarray, mass: np.ndarray, hit: np.ndarray,
              top_k: int) -> np.ndarray:
    """Distinct tokens of each sender that reach each destination set: tokens x P(hit),
    scaled by the sampled / expected copies so that a step's routing noise carries over."""
    t = tokens.astype(float)[:, None]
    expected = t * top_k * mass[None, :]
    ratio = np.divide(copies, expected, out=np.zeros_like(copies), where=expected > 0)
    return np.minimum(t * hit[None, :] * ratio, t)


def dispatch_matrix(costs: LayerCosts, routing: Routing, per_token_bytes: float,
                    mode: str = "per_expert", hits: Hits | None = None) -> np.ndarray:
    """Bytes GPU i sends GPU j in one dispatch ([G, G]; its transpose is the combine).

    Every TP GPU of a destination rank needs the whole activation (its experts are split TP
    ways); tokens for experts on the sender's own rank move no bytes (its TP peers hold them
    after the all-reduce). `mode` (see engine_options.DispatchMode): per_expert sends one
    copy per chosen expert; per_gpu one per destination rank; hierarchical sends across
    domains once per destination domain, to the GPU at the sender's position there, which
    forwards over scale-up. `hits` (from `routing_hits`) is needed unless per_expert."""
    G, ep, tp = costs.G, costs.ep, costs.tp
    copies = routing.rank_copies(ep).astype(float)
    if mode == "per_expert":
        to_rank = copies
    else:
        to_rank = _distinct(routing.tokens, copies, hits.rank_mass, hits.rank, costs.top_k)
    if tp == 1:
        np.fill_diagonal(to_rank, 0.0)
        m = to_rank * per_token_bytes                                           # [G, G]
    else:
        to_rank[np.arange(G), np.arange(G) // tp] = 0
        m = np.repeat(to_rank, tp, axis=1) * per_token_bytes                    # [G, G]
    if mode != "hierarchical":
        return m
    di = np.repeat(hits.rank_domain, tp)
    n_dom = int(di.max()) + 1
    if n_dom == 1:
        return m
    out = np.where(di[:, None] == di[None, :], m, 0.0)
    copies_dom = np.zeros((G, n_dom))
    np.add.at(copies_dom.T, hits.rank_domain, copies.T)
    to_dom = _distinct(routing.tokens, copies_dom, hits.domain_mass, hits.domain, costs.top_k)
    members = [np.flatnonzero(di == d) for d in range(n_dom)]
    pos = np.empty(G, dtype=np.int64)
    for mem in members:
        pos[mem] = np.arange(len(mem))
    for d, mem in enumerate(members):
        senders = np.flatnonzero(di != d)
        fwd = mem[pos[senders] % len(mem)]
        np.add.at(out, (senders, fwd), to_dom[senders, d] * per_token_bytes)
        np.add.at(out, (fwd[:, None], mem[None, :]), m[np.ix_(senders, mem)])
    out[np.arange(G), np.arange(G)] = 0.0
    return out


def split_tokens(total: int, parts: int) -> np.ndarray:
    """`total` tokens spread over `parts` GPUs as evenly as integers allow."""
    base, extra = divmod(int(total), parts)
    out = np.full(parts, base, dtype=np.int64)
    out[:extra] += 1
    return out


def split_per_rank(rank_tokens: np.ndarray, parts: int) -> np.ndarray:
    """Each rank's tokens spread over its `parts` GPUs as `split_tokens` spreads them, for
    every rank at once (ranks in order, their GPUs consecutive)."""
    r = np.asarray(rank_tokens).astype(np.int64)
    base, extra = np.divmod(r, parts)
    return (base[:, None] + (np.arange(parts)[None, :] < extra[:, None])).ravel()
