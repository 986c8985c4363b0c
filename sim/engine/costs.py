"""What one layer of one step costs each GPU of a stage group, and where its tokens go.

Operations take max(flops / (peak x efficiency), bytes / (HBM bandwidth x efficiency)) on
each GPU (the one rule for op timing). Parameters follow the roofline's convention so the two
paths agree: everything but the routed experts ("dense part": attention, dense and shared
MLPs, routers, embeddings) is spread evenly over the EP x TP GPUs of a stage and over the
layers; routed experts live on their EP rank, split over its TP GPUs, and a GPU reads an
expert's weights only when at least one token was routed to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..spec.engine_options import HotRouting, MoEOptions, ZipfRouting
from ..spec.hardware import Hardware
from ..spec.layout import Layout
from ..spec.model import Model
from ..spec.precision import BYTES_PER_ELEMENT


@dataclass(frozen=True)
class LayerCosts:
    """Per-layer constants of one stage group of G = EP x TP GPUs."""

    G: int
    ep: int
    tp: int
    flops: float                  # peak x efficiency, per GPU
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

    @property
    def experts_per_rank(self) -> int:
        return self.experts // self.ep if self.experts else 0

    def dense_phase(self, tokens: np.ndarray, kv_tokens: np.ndarray, attn_pairs: np.ndarray):
        """Attention + dense part on each GPU: (time, compute_bound) arrays over G GPUs.
        `tokens[i]` tokens run in GPU i's attention group (its TP group shares them),
        `kv_tokens[i]` context tokens whose KV it reads, `attn_pairs[i]` query x context
        pairs of its attention."""
        flops = (tokens * self.dense_flops_per_token + attn_pairs * self.attn_flops_per_ctx) \
            / self.tp
        mem = self.dense_weight_bytes + kv_tokens * self.kv_bytes_per_token / self.tp
        t_c, t_m = flops / self.flops, mem / self.bandwidth
        return np.maximum(t_c, t_m), t_c > t_m

    def expert_phase(self, expert_tokens: np.ndarray):
        """Routed experts on each GPU given tokens per expert (length E):
        (time, compute_bound) arrays over G GPUs."""
        per_rank = expert_tokens.reshape(self.ep, self.experts_per_rank)
        flops = 2.0 * self.expert_params * per_rank.sum(axis=1) / self.tp
        mem = (per_rank > 0).sum(axis=1) * self.expert_params * self.bpp / self.tp
        t_c, t_m = flops / self.flops, mem / self.bandwidth
        t, cb = np.maximum(t_c, t_m), t_c > t_m
        return np.repeat(t, self.tp), np.repeat(cb, self.tp)


def layer_costs(model: Model, hardware: Hardware, layout: Layout, moe: MoEOptions,
                activation_precision: str, attention_flops: bool) -> LayerCosts:
    _, peak = hardware.gpu.flops_at(model.compute_precision)
    eff = hardware.efficiency
    G = layout.stage_gpus
    L = model.layers
    if model.moe is not None:
        E, k, n_moe = model.moe.experts, model.moe.top_k, model.moe.moe_layers
        per_expert = model.routed_expert_params / (E * n_moe)
    else:
        E = k = n_moe = 0
        per_expert = 0.0
    dense_total = model.total_params - model.routed_expert_params
    dense_active = model.active_params - k * per_expert * n_moe
    return LayerCosts(
        G=G, ep=layout.expert_parallel, tp=layout.tensor_parallel,
        flops=peak * eff.compute, bandwidth=hardware.gpu.hbm_bandwidth * eff.memory,
        bpp=model.bytes_per_param,
        dense_weight_bytes=dense_total * model.bytes_per_param / (L * G),
        dense_flops_per_token=2.0 * dense_active / L,
        attn_flops_per_ctx=(model.attention_flops_per_context_token / L) if attention_flops
        else 0.0,
        kv_bytes_per_token=model.kv_bytes_per_token / L,
        expert_params=per_expert, experts=E, top_k=k,
        dispatch_bytes=model.hidden * BYTES_PER_ELEMENT[moe.dispatch_precision],
        combine_bytes=model.hidden * BYTES_PER_ELEMENT[moe.combine_precision],
        activation_bytes=model.hidden * BYTES_PER_ELEMENT[activation_precision])


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


@dataclass(frozen=True)
class Routing:
    """One step's routing of a stage group: tokens per (source GPU, expert)."""

    counts: np.ndarray    # [G, E] token copies from GPU i to expert e

    def expert_tokens(self) -> np.ndarray:
        return self.counts.sum(axis=0)


def draw_routing(costs: LayerCosts, tokens: np.ndarray, popularity: np.ndarray,
                 rng: np.random.Generator) -> Routing:
    """Each token on GPU i makes top_k choices from `popularity` (multinomial; the
    distinctness of a token's k experts is not enforced)."""
    counts = rng.multinomial(tokens.astype(np.int64) * costs.top_k, popularity)
    return Routing(counts)


def dispatch_matrix(costs: LayerCosts, routing: Routing, per_copy_bytes: float) -> np.ndarray:
    """Bytes GPU i sends GPU j: GPU i's token copies routed to experts of j's EP rank. Every
    TP GPU of that rank needs the whole activation (its experts are split TP ways), and
    copies for experts on i's own rank need no transfer (its TP peers already hold them)."""
    G, ep, tp = costs.G, costs.ep, costs.tp
    to_rank = routing.counts.reshape(G, ep, costs.experts_per_rank).sum(axis=2)  # [G, ep]
    rank = np.arange(G) // tp
    to_rank[np.arange(G), rank] = 0
    return np.repeat(to_rank, tp, axis=1) * per_copy_bytes                      # [G, G]


def split_tokens(total: int, parts: int) -> np.ndarray:
    """`total` tokens spread over `parts` GPUs as evenly as integers allow."""
    base, extra = divmod(int(total), parts)
    out = np.full(parts, base, dtype=np.int64)
    out[:extra] += 1
    return out
