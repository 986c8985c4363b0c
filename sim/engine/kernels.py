"""A layer as the kernels a GPU runs, one after another, each timed by its own roofline: the
one rule for op time (issue 19).

A kernel reads its weights once per call and its activations once per token row, and does
its FLOPs on rows padded up to the kernel class's tile (`tile_m`): small-M GEMMs in decode
pay for a whole tile of rows. Its time is

    fixed + per_row x rows + max(FLOPs / (peak at its precision x compute efficiency),
                                 bytes / (HBM bandwidth x memory efficiency))

with the efficiencies and the fixed costs of its class (GEMM, grouped expert GEMM,
attention, elementwise, MLA attention) from the hardware file's `efficiency.kernels` (fitted per GPU
generation on measured kernel latencies), or, without it, the scalar efficiencies with no
fixed cost and no tiles (each kernel at the old pooled efficiencies). A kernel given no rows
is not launched.

Shapes follow the roofline's convention for where weights live (costs.py): the dense part
(attention, dense and shared MLPs, routers, output head) is split over the GPUs of a stage
(`layout.dense: sharded`, as tensor parallelism over the whole stage group: every GPU runs
every token of the step on its slice) or over TP only (`replicated`: each EP rank's TP group
runs its own tokens). GEMMs are column-split (N / t) or row-split (K / t) as Megatron splits
them; attention splits heads, and the KV a GPU reads as far as heads have their own (GQA up
to its KV heads; MLA's latent, shared by every head, is read whole by each GPU of a tensor-
parallel group: the reason deployments run MLA data-parallel). The output head's cost is
spread over the layers (1 / L per layer), as its weights are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np

from ..spec.hardware import Hardware, KernelClass
from ..spec.model import GQA, MLA, Architecture, Model
from ..spec.precision import BYTES_PER_ELEMENT

GEMM, GROUPED, ATTENTION, ELEMENTWISE, MLA_ATTENTION, ATTENTION_PREFILL, MLA_PREFILL = range(7)
CLASS_NAMES = ("gemm", "grouped_gemm", "attention", "elementwise", "mla_attention",
               "attention_prefill", "mla_prefill")
DECODE_CLASSES = (ATTENTION, MLA_ATTENTION)
PREFILL_CLASSES = (ATTENTION_PREFILL, MLA_PREFILL)
ACT_BYTES = BYTES_PER_ELEMENT["bf16"]   # activations between kernels


class StepWork(NamedTuple):
    """A step's work on each GPU of a stage group (arrays over its GPUs): the rows through its
    GEMMs, and its attention split by phase, as serving engines launch it (decode and
    context attention are separate kernels)."""

    tokens: np.ndarray         # rows through the GEMMs: decode + prompt tokens
    decode: np.ndarray         # decoding sequences (decode attention rows)
    decode_kv: np.ndarray      # context tokens they read (one query each: also their pairs)
    prefill: np.ndarray        # prompt tokens (context attention rows)
    prefill_kv: np.ndarray     # context tokens the prefill reads
    prefill_pairs: np.ndarray  # (query, context) pairs of the prefill

    def scaled(self, f) -> StepWork:
        return StepWork(*(np.asarray(x, dtype=float) * f for x in self))


@dataclass(frozen=True)
class Kernel:
    """One kernel of a layer on one GPU. Per call: `flops_per_row` x rows (padded) FLOPs,
    `weight_bytes` + `io_bytes_per_row` x rows bytes; `per_layer` calls per layer on average
    (3 dense MLP layers of 61: 3/61). Attention reads KV instead of weights: its bytes per
    context token and FLOPs per (query, context) pair are `kv_bytes`, `flops_per_pair`; its
    decode and prefill kernels are two kernels of their own classes."""

    name: str
    cls: int
    precision: str
    flops_per_row: float = 0.0
    weight_bytes: float = 0.0
    io_bytes_per_row: float = 0.0
    per_layer: float = 1.0
    kv_bytes: float = 0.0
    flops_per_pair: float = 0.0
    # the shape measured tables are keyed by (measured.py): a GEMM's (n, k), an attention
    # kernel's (query heads, KV heads) on one GPU
    shape: tuple = ()


def _gemm(name: str, n: float, k: float, bpp: float, precision: str, per_layer: float = 1.0,
          cls: int = GEMM) -> Kernel:
    """Y[M, n] = X[M, k] W[k, n]: 2 n k FLOPs per row, weights n k, activations k + n."""
    return Kernel(name, cls, precision, flops_per_row=2.0 * n * k, weight_bytes=n * k * bpp,
                  io_bytes_per_row=(n + k) * ACT_BYTES, per_layer=per_layer, shape=(n, k))


def _norm(name: str, width: float, per_layer: float = 1.0) -> Kernel:
    """An elementwise pass (norm, activation): reads and writes `width` values per row."""
    return Kernel(name, ELEMENTWISE, "bf16", io_bytes_per_row=2.0 * width * ACT_BYTES,
                  per_layer=per_layer)


def dense_kernels(model: Model, arch: Architecture | None, t: int) -> list[Kernel]:
    """The dense part of an average layer on one GPU, its weights split `t` ways; each GEMM
    at its component's weight precision (`attention`, `dense`; model.bytes_of)."""
    L = model.layers
    abpp, aprec = model.bytes_of("attention"), model.precision_of("attention")
    bpp, precision = model.bytes_of("dense"), model.precision_of("dense")
    if arch is None:   # totals only: one GEMM of the dense weights per layer, K = hidden
        dense = (model.total_params - model.routed_expert_params) / (L * t)
        attn = dict(kv_bytes=model.kv_bytes_per_token / (L * t),
                    flops_per_pair=model.attention_flops_per_context_token / (L * t))
        return [_gemm("dense", dense / model.hidden, model.hidden, bpp, precision),
                Kernel("attention", ATTENTION, precision, **attn),
                Kernel("attention_prefill", ATTENTION_PREFILL, precision, **attn)]
    H, a = arch.hidden, arch.attention
    ks = [_norm("norms", H, 2.0)]
    if isinstance(a, GQA):
        ks.append(_gemm("qkv", (a.heads + 2 * a.kv_heads) * a.head_dim / t, H, abpp, aprec))
        o_k = a.heads * a.head_dim / t
    else:
        assert isinstance(a, MLA)
        qk = a.qk_nope_head_dim + a.qk_rope_head_dim
        if a.q_lora_rank:
            ks += [_gemm("q_a", a.q_lora_rank / t, H, abpp, aprec),
                   _gemm("q_b", a.heads * qk / t, a.q_lora_rank, abpp, aprec)]
        else:
            ks.append(_gemm("q", a.heads * qk / t, H, abpp, aprec))
        ks += [_gemm("kv_a", (a.kv_lora_rank + a.qk_rope_head_dim) / t, H, abpp, aprec),
               # absorbed decode: W_UK and W_UV applied per head as batched GEMMs
               _gemm("kv_b", a.heads * (a.qk_nope_head_dim + a.v_head_dim) / t,
                     a.kv_lora_rank, abpp, aprec)]
        o_k = a.heads * a.v_head_dim / t
    kv_elems = a.kv_elements_per_token_per_layer()
    # heads split t ways; the KV a GPU reads splits only as far as its heads have their own:
    # GQA's KV heads up to kv_heads ways, MLA's latent (shared by all heads) not at all
    kv_split = 1 if isinstance(a, MLA) else min(t, a.kv_heads)
    mla = isinstance(a, MLA)
    # decode and context attention are different kernels; MLA's context kernel runs
    # up-projected, with fewer FLOPs per (query, context) pair than the absorbed decode
    for name, cls, flops in (
            ("attention", MLA_ATTENTION if mla else ATTENTION,
             a.attention_flops_per_context_token()),
            ("attention_prefill", MLA_PREFILL if mla else ATTENTION_PREFILL,
             a.prefill_attention_flops_per_context_token())):
        ks.append(Kernel(name, cls, aprec,
                         kv_bytes=kv_elems * model.kv_bytes_per_element / kv_split,
                         flops_per_pair=flops / t, io_bytes_per_row=2.0 * o_k * ACT_BYTES,
                         shape=(a.heads / t, 1.0 if mla else a.kv_heads / kv_split)))
    ks.append(_gemm("o", H, o_k, abpp, aprec))
    if arch.dense_layers:
        f, share = arch.ffn_hidden / t, arch.dense_layers / L
        ks += [_gemm("mlp_gate_up", 2 * f, H, bpp, precision, share),
               _norm("mlp_act", f, share), _gemm("mlp_down", H, f, bpp, precision, share)]
    m = arch.moe
    if m is not None and L > arch.dense_layers:
        share = (L - arch.dense_layers) / L
        ks.append(_gemm("router", m.experts / t, H, bpp, precision, share))
        if m.shared_experts:
            f = m.shared_experts * (m.shared_ffn_hidden or m.expert_ffn_hidden) / t
            ks += [_gemm("shared_gate_up", 2 * f, H, bpp, precision, share),
                   _norm("shared_act", f, share),
                   _gemm("shared_down", H, f, bpp, precision, share)]
    ks.append(_gemm("head", arch.vocab / t, H, bpp, precision, 1.0 / L))
    return ks


def expert_kernels(model: Model, arch: Architecture | None, tp: int) -> list[Kernel]:
    """One EP rank's routed experts as grouped GEMMs (per expert: rows = its tokens), split
    over the rank's `tp` GPUs, at the experts' weight precision."""
    if model.moe is None:
        return []
    bpp, precision = model.bytes_of("moe"), model.precision_of("moe")
    if arch is None or arch.moe is None:   # totals: one GEMM of an expert's weights
        per = model.routed_expert_params / (model.moe.experts * model.moe.moe_layers * tp)
        return [_gemm("experts", per / model.hidden, model.hidden, bpp, precision,
                      cls=GROUPED)]
    f = arch.moe.expert_ffn_hidden / tp
    H = arch.hidden
    return [_gemm("experts_gate_up", 2 * f, H, bpp, precision, cls=GROUPED),
            _norm("experts_act", f),
            _gemm("experts_down", H, f, bpp, precision, cls=GROUPED)]


@dataclass(frozen=True)
class KernelTable:
    """A kernel list as arrays for the compiled timing: per kernel its class, FLOPs and
    bytes coefficients, achieved FLOP/s and bytes/s, fixed cost and tile."""

    names: tuple
    cls: np.ndarray
    flops_per_row: np.ndarray
    weight_bytes: np.ndarray
    io_bytes_per_row: np.ndarray
    per_layer: np.ndarray
    kv_bytes: np.ndarray
    flops_per_pair: np.ndarray
    flops_rate: np.ndarray      # peak at the kernel's precision x its class's efficiency
    bytes_rate: np.ndarray
    fixed: np.ndarray
    per_row: np.ndarray
    tile: np.ndarray

    def subset(self, i: int) -> KernelTable:
        """Kernel `i` alone, as a table of one."""
        return KernelTable(*[(x[i:i + 1] if isinstance(x, (tuple, np.ndarray)) else x)
                             for x in (getattr(self, f) for f in self.__dataclass_fields__)])


def kernel_classes(hardware: Hardware) -> tuple[KernelClass, ...]:
    """The classes' parameters (CLASS_NAMES order): fitted (`efficiency.kernels`), or the
    scalar efficiencies with no fixed cost and no tiles."""
    e = hardware.efficiency
    if e.kernels is not None:
        k = e.kernels
        mla = k.mla_attention or k.attention
        return (k.gemm, k.grouped_gemm, k.attention, k.elementwise, mla,
                k.attention_prefill or k.attention, k.mla_prefill or mla)
    gemm = KernelClass(compute=e.compute, memory=e.memory)
    attention = KernelClass(compute=e.attention_compute, memory=e.memory)
    return (gemm, gemm, attention, gemm, attention, attention, attention)


def table(kernels: list[Kernel], hardware: Hardware, attention_precision: str) -> KernelTable:
    classes = kernel_classes(hardware)
    gpu = hardware.gpu
    rate, brate, fixed, per_row, tile = [], [], [], [], []
    for k in kernels:
        c = classes[k.cls]
        attention = k.cls in DECODE_CLASSES + PREFILL_CLASSES
        prec = attention_precision if attention else k.precision
        used, peak = gpu.flops_at(prec)
        rate.append(peak * c.compute_at(used or prec))
        brate.append(gpu.hbm_bandwidth * c.memory)
        fixed.append(c.fixed_at(used or prec))
        per_row.append(c.per_row)
        tile.append(c.tile_m)

    def col(attr):
        return np.array([getattr(k, attr) for k in kernels], dtype=float)

    return KernelTable(tuple(k.name for k in kernels), np.array([k.cls for k in kernels]),
                       col("flops_per_row"), col("weight_bytes"), col("io_bytes_per_row"),
                       col("per_layer"), col("kv_bytes"), col("flops_per_pair"),
                       np.array(rate), np.array(brate), np.array(fixed),
                       np.array(per_row), np.array(tile, dtype=float))


@numba.njit(cache=True, nogil=True)
def kernel_time(rows, kv_tokens, pairs, cls, flops_per_row, weight_bytes, io_bytes_per_row,
                kv_bytes, flops_per_pair, flops_rate, bytes_rate, fixed, per_row, tile
                ):   # pragma: no cover (compiled)
    """(time, compute-bound) of one kernel call given its rows, context tokens read and
    (query, context) pairs: the one rule for op time."""
    if rows <= 0.0:
        return 0.0, False
    padded = np.ceil(rows / tile) * tile
    if cls == 2 or cls >= 4:   # attention: FLOPs over pairs, bytes over the KV it reads
        f = pairs * flops_per_pair
        b = kv_tokens * kv_bytes + rows * io_bytes_per_row
    else:
        f = padded * flops_per_row
        b = weight_bytes + rows * io_bytes_per_row
    tc, tm = f / flops_rate, b / bytes_rate
    return fixed + per_row * rows + max(tc, tm), tc > tm


def layer_time(work: StepWork, k: KernelTable):
    """An average layer's kernels on each GPU: (time, compute-bound share) arrays over GPUs."""
    return _layer_time(*(np.asarray(x, dtype=float) for x in work), k.cls, k.flops_per_row,
                       k.weight_bytes, k.io_bytes_per_row, k.per_layer, k.kv_bytes,
                       k.flops_per_pair, k.flops_rate, k.bytes_rate, k.fixed, k.per_row,
                       k.tile)


@numba.njit(cache=True, nogil=True)
def _layer_time(tokens, decode, decode_kv, prefill, prefill_kv, prefill_pairs, cls,
                flops_per_row, weight_bytes, io_bytes_per_row, per_layer, kv_bytes,
                flops_per_pair, flops_rate, bytes_rate, fixed, per_row,
                tile):   # pragma: no cover (compiled)
    """`layer_time` compiled: each kernel takes its rows by class (GEMMs and elementwise:
    every token; decode attention: decoding sequences; context attention: prompt tokens)."""
    n = len(tokens)
    t, comp = np.zeros(n), np.zeros(n)
    for i in range(n):
        for k in range(len(cls)):
            c = cls[k]
            if c == 2 or c == 4:
                rows, kv, pairs = decode[i], decode_kv[i], decode_kv[i]
            elif c >= 5:
                rows, kv, pairs = prefill[i], prefill_kv[i], prefill_pairs[i]
            else:
                rows, kv, pairs = tokens[i], 0.0, 0.0
            dt, cb = kernel_time(rows, kv, pairs, c, flops_per_row[k], weight_bytes[k],
                                 io_bytes_per_row[k], kv_bytes[k], flops_per_pair[k],
                                 flops_rate[k], bytes_rate[k], fixed[k], per_row[k], tile[k])
            t[i] += per_layer[k] * dt
            comp[i] += per_layer[k] * dt * cb
    share = np.zeros(n)
    for i in range(n):
        if t[i] > 0.0:
            share[i] = comp[i] / t[i]
    return t, share


@numba.njit(cache=True, nogil=True)
def grouped_time(expert_tokens, ep, per_rank, cls, flops_per_row, weight_bytes,
                 io_bytes_per_row, per_layer, flops_rate, bytes_rate, fixed, per_row, tile
                 ):   # pragma: no cover (compiled)
    """Each EP rank's routed experts as grouped kernels: one call per kernel per rank, its
    FLOPs summed over the rank's experts (each padded to the tile), weights read for each
    expert that got a token. (time, compute-bound share) over EP ranks."""
    t, share = np.zeros(ep), np.zeros(ep)
    for r in range(ep):
        comp = 0.0
        for k in range(len(cls)):
            rows = used = padded = 0.0
            for e in range(r * per_rank, (r + 1) * per_rank):
                x = expert_tokens[e]
                if x > 0:
                    rows += x
                    used += 1.0
                    padded += np.ceil(x / tile[k]) * tile[k]
            if rows <= 0.0:
                continue
            if cls[k] == 3:   # elementwise: rows only
                f, b = 0.0, rows * io_bytes_per_row[k]
            else:
                f = padded * flops_per_row[k]
                b = used * weight_bytes[k] + rows * io_bytes_per_row[k]
            tc, tm = f / flops_rate[k], b / bytes_rate[k]
            dt = per_layer[k] * (fixed[k] + per_row[k] * rows + max(tc, tm))
            t[r] += dt
            comp += dt * (tc > tm)
        if t[r] > 0.0:
            share[r] = comp / t[r]
    return t, share
