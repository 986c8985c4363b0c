"""Fit the per-kernel timing model of sim/engine/kernels.py per GPU generation on measured
kernel latencies, reproducibly, with calibration rows kept apart from held-out rows (issue 19;
docs/kernel-model.md).

The data are NVIDIA's aiconfigurator-core measurements as `aic_data` extracts them (TensorRT-
LLM, the version aiconfigurator serves as current), or the committed sample of them in
validation/kernels/ (`root` may be either: see `measured`). The model is the engine's, term
for term (kernels.py):

    t = fixed[precision] + per_row x rows
        + max(FLOPs / (peak[precision] x compute[precision]), bytes / (HBM bandwidth x memory))

with each class's FLOPs and bytes built as the engine builds them:

- gemm (`gemm_table`, dtypes bfloat16 / fp8 / nvfp4 = racksim bf16 / fp8 / fp4): rows = m,
  FLOPs = ceil(m / tile_m) tile_m 2nk, bytes = n k w + m (n + k) 2 with w the engine's bytes
  per weight (BYTES_PER_ELEMENT: 2, 1, 0.5; nvfp4's block scales are not counted, as the
  engine does not count them).
- grouped_gemm (`moe_table`, balanced routing, the gated CUTLASS path): the measured fused MoE
  layer as the engine's expert kernels on one EP rank, gate_up (n = 2I, k = H) and down
  (n = H, k = I) grouped GEMMs (FLOPs over each expert's tokens padded to the tile, weights
  of every expert hit) plus the activation (an elementwise kernel of 2 I 2 bytes per row).
  Tokens per expert: the row's `copies` split as evenly as possible over its `active`
  experts (the balanced routing's own split to within one token per expert).
- attention / attention_prefill (`attention_table`, the torch_flow backend, generation /
  context rows) and mla_attention / mla_prefill (`mla_table`, generation / context rows):
  rows = sequences (decode) or prompt tokens (prefill), FLOPs = pairs x FLOPs per pair,
  bytes = context tokens read x KV bytes per token + rows x (Q in, O out), at the peak of the
  KV cache's precision (bf16 / fp8: the engine's, for a fitted class). Decode attention is
  fitted on the rows with at most GQA_GROUP query heads per KV head (XQA's range).

`compute` is one figure per precision (a mapping, resolved as KernelClass.compute_at
resolves it: the precision itself, else the nearest by width): the weights' precision for the
GEMM classes, the KV cache's for the attention classes; `fixed` one per precision for the
GEMM classes, one figure for the attention classes.

Peaks are the racksim hardware file of the system when there is one (PRESETS; the engine
multiplies the fitted efficiencies by these), else aiconfigurator's systems/<system>.yaml.

Fit: robust least squares (soft_l1, scale 0.1: LOSS, F_SCALE) on log(predicted / measured)
over the calibration rows (bounded: every
efficiency in (0, 1], fixed and per-row costs >= 0; tile_m by grid over TILES). Rows are split
80 / 20 into calibration and held-out by a hash of the shape (not of the precision, so one
shape is in the same split at every precision and on every system; the two phases of one
attention table share the hash, so a row is in the split it was in when one class fitted
both).

    python -m sim.calibration.fit [ROOT] [--write] [--sample] [--against DIR]
                                  [--generation hopper|blackwell]

prints the fitted parameters of each generation and their errors per class on the fit's own
system, a second GPU of the generation and the other generation; `--write` writes
topologies/kernels/<generation>.yaml, `--sample` the committed rows in validation/kernels/,
`--against DIR` also scores DIR/<generation>.yaml (e.g. an earlier fit) on the same rows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from ..engine.measured import SYSTEMS
from ..spec import load_hardware
from ..spec.hardware import GPU, KernelTiming, at_precision
from ..spec.precision import BYTES_PER_ELEMENT
from . import aic_data

FRAMEWORK = "trtllm"
VERSION = "current"
PACKAGE = "aiconfigurator-core"

# racksim matmul precision -> aiconfigurator weight dtype it is fitted on
PRECISIONS = {"bf16": "bfloat16", "fp8": "fp8", "fp4": "nvfp4"}
# dtypes evaluated but not fitted: -> the racksim precision they run at
UNFITTED = {"fp8_block": "fp8"}
DTYPE_PRECISION = {**{v: k for k, v in PRECISIONS.items()}, **UNFITTED}
ACT = BYTES_PER_ELEMENT["bf16"]            # activations between kernels (kernels.ACT_BYTES)
# attention kernels run at their KV cache's precision (costs.py: one compute figure per KV
# precision, as serving kernels read an FP8 cache with FP8 math where they can)
KV_PRECISION = {"bfloat16": "bf16", "float16": "bf16", "fp8": "fp8"}

CLASSES = ("gemm", "grouped_gemm", "attention", "attention_prefill", "mla_attention",
           "mla_prefill")
GEMM_CLASSES = ("gemm", "grouped_gemm")
# each attention class: the table it is read from (aic_data) and the phase of its rows
TABLE = {"attention": "attention", "attention_prefill": "attention",
         "mla_attention": "mla_attention", "mla_prefill": "mla_attention"}
PHASE = {"attention": "generation", "attention_prefill": "context",
         "mla_attention": "generation", "mla_prefill": "context"}
# an optional class absent from a KernelTiming runs as this one (hardware.py)
DEFAULT = {"attention_prefill": "attention", "mla_attention": "attention",
           "mla_prefill": "mla_attention"}
# the keys of topologies/kernels/*.yaml, in order
KEYS = ("gemm", "grouped_gemm", "attention", "attention_prefill", "elementwise",
        "mla_attention", "mla_prefill")
TILES = (1, 8, 16, 32, 64, 128)
HELD_OUT_PERCENT = 20
# query heads per KV head above which decode attention is another kernel: TRT-LLM's XQA
# serves groups up to 32; wider groups run a fallback 10-20x slower (h100_sxm, 64 sequences
# of 2,048 tokens, 1 KV head: 47 us at 32 query heads, 651 us at 64). Decode attention is
# fitted on the rows up to it and the wider rows are reported apart.
GQA_GROUP = 32
# the fit's loss: soft_l1 with a scale of 0.1 in log(predicted / measured) treats residuals
# beyond ~10% as linear, not squared (least squares left the grouped GEMMs and decode
# attention 15-36% slow on their held-out rows: docs/kernel-model.md)
LOSS, F_SCALE = "soft_l1", 0.1

# the shape a row measures (the split's key, per table): every column but the precisions
SHAPE = {
    "gemm": ("m", "n", "k"),
    "grouped_gemm": ("tokens", "hidden", "inter", "topk", "experts", "tp", "ep"),
    "attention": ("phase", "batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim",
                  "window"),
    "mla_attention": ("phase", "batch", "q_len", "kv_len", "heads"),
}

GENERATIONS = {"hopper": "h100_sxm", "blackwell": "b200_sxm"}
# systems each generation's fit is checked on, at their own peaks
CHECKS = {"hopper": {"h200_sxm": "leave one GPU out", "b200_sxm": "leave one generation out"},
          "blackwell": {"gb200": "leave one GPU out"}}
# aiconfigurator system -> racksim hardware file whose peaks the engine uses (the measured
# back end's map, turned round)
PRESETS = {system: preset for preset, system in SYSTEMS.items()}

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO / "validation" / "kernels"
KERNELS_DIR = REPO / "topologies" / "kernels"


# --------------------------------------------------------------------------- data


def is_sample(root) -> bool:
    """True when `root` is a folder of committed rows (<root>/<system>/<class>.csv)."""
    return root is not None and any(Path(root).glob("*/gemm.csv"))


def shape_split(cls: str, df: pd.DataFrame) -> np.ndarray:
    """'calibration' or 'held_out' per row, from a hash of the row's shape (SHAPE of the
    class's table): deterministic, the same on every system and precision, HELD_OUT_PERCENT
    held out. A prefill class hashes as its table (`attention_prefill` as `attention`)."""
    table = TABLE.get(cls, cls)
    buckets = _hashes(df, SHAPE[table], f"{table}:") % 100
    return np.where(buckets < HELD_OUT_PERCENT, "held_out", "calibration")


def _hashes(df: pd.DataFrame, cols, prefix: str = "") -> np.ndarray:
    """A stable 64-bit hash (blake2b, not Python's salted hash) of each row's `cols`."""
    keys = prefix + df[cols[0]].astype(str)
    for c in cols[1:]:
        keys = keys + "," + df[c].astype(str)
    table = {k: int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big")
             for k in keys.unique()}
    return keys.map(table).to_numpy(np.uint64)


def measured(root, system: str, cls: str, unfitted: bool = False) -> pd.DataFrame:
    """The measured rows one class is fitted on, in the extractor's schema plus `split`.

    From aiconfigurator-core (`root` its unpacked folder, or None for the installed
    package): TensorRT-LLM, VERSION; gemm rows of the PRECISIONS dtypes (with
    `unfitted`: also UNFITTED ones); grouped_gemm rows `distribution == "balanced"` of the
    gated CUTLASS kernels (`moe_torch_flow_cutlass`) in the PRECISIONS dtypes; attention rows
    of the torch_flow backend and MLA rows, of the class's PHASE. From a sample folder
    (`is_sample`): its <system>/<cls>.csv as committed."""
    if cls not in CLASSES:
        raise ValueError(f"unknown kernel class {cls!r}; one of {', '.join(CLASSES)}")
    if is_sample(root):
        f = Path(root) / system / f"{cls}.csv"
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no committed {cls} rows for {system}")
        df = pd.read_csv(f)
        if not unfitted and cls in GEMM_CLASSES:
            df = df[df["dtype"].isin(PRECISIONS.values())]
        if cls in PHASE:
            df = df[df["phase"] == PHASE[cls]]
        return df.reset_index(drop=True)
    dtypes = list(PRECISIONS.values()) + (list(UNFITTED) if unfitted else [])
    if cls == "gemm":
        df = aic_data.gemm_table(root, system, FRAMEWORK, VERSION)
        df = df[df["dtype"].isin(dtypes)]
    elif cls == "grouped_gemm":
        df = aic_data.moe_table(root, system, FRAMEWORK, VERSION)
        df = df[(df["distribution"] == "balanced")
                & (df["kernel_source"] == "moe_torch_flow_cutlass")
                & df["dtype"].isin(PRECISIONS.values())]
    elif TABLE[cls] == "attention":
        df = aic_data.attention_table(root, system, FRAMEWORK, VERSION, phase=PHASE[cls])
        df = df[df["kernel_source"] == "torch_flow"]
    else:
        df = aic_data.mla_table(root, system, FRAMEWORK, VERSION, phase=PHASE[cls])
    df = df.reset_index(drop=True)
    df["split"] = shape_split(cls, df)
    return df


def gpu_of(root, system: str) -> GPU:
    """The GPU whose peaks scale the efficiencies: racksim's hardware file (PRESETS), else
    aiconfigurator's systems/<system>.yaml."""
    if system in PRESETS:
        return load_hardware(PRESETS[system]).gpu
    p = aic_data.system_peaks(root, system)
    names = {"bfloat16": "bf16", "fp8": "fp8", "fp4": "fp4"}
    return GPU(name=system, flops={names[k]: p[k] for k in names if k in p},
               hbm_bytes=p["mem_capacity"], hbm_bandwidth=p["mem_bw"])


def origin(root) -> str:
    """Where the rows come from, for `source`: the package and its version (its dist-info),
    or the committed sample folder."""
    if is_sample(root):
        return f"the rows committed in {root} (a sample of {PACKAGE}; its README.md)"
    version = "unknown"
    try:
        pkg = aic_data.package_root(root)
        found = [d.name.removesuffix(".dist-info").split("-")[1]
                 for d in pkg.parent.glob("aiconfigurator_core-*.dist-info")]
        if found:
            version = found[0]
        else:
            from importlib.metadata import version as installed
            version = installed(PACKAGE)
    except Exception:   # the version is only quoted
        pass
    return f"{PACKAGE} {version} (NVIDIA, Apache-2.0)"


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Figures:
    """One kernel class's figures as the fit handles them (KernelClass's fields, unvalidated:
    the fit tries many): `compute` and `fixed` one number or one per precision."""

    compute: float | dict = 1.0
    memory: float = 1.0
    fixed: float | dict = 0.0
    per_row: float = 0.0
    tile_m: int = 1


def at(value, precision: str | None) -> float:
    """A per-precision figure at `precision`, as KernelClass.compute_at / fixed_at resolve it:
    one number as is; else the precision's own, else the nearest precision given by width
    (fp4 on a file fitted without it: fp8's)."""
    return at_precision(value, precision)


def figures(params) -> dict[str, Figures]:
    """Every class (KEYS) of `params` (a KernelTiming, or a mapping of class -> KernelClass,
    Figures or their mapping): an absent optional class takes its DEFAULT's figures."""
    if isinstance(params, KernelTiming):
        params = params.model_dump()
    out: dict[str, Figures] = {}
    # the defaults first: a class's DEFAULT is filled before it
    for key in ("gemm", "grouped_gemm", "attention", "elementwise", "mla_attention",
                "attention_prefill", "mla_prefill"):
        c = params.get(key) if isinstance(params, Mapping) else getattr(params, key, None)
        if c is None:
            out[key] = out[DEFAULT[key]] if key in DEFAULT else Figures()
        elif isinstance(c, Figures):
            out[key] = c
        else:
            c = c if isinstance(c, Mapping) else c.model_dump()
            out[key] = Figures(**{k: c[k] for k in ("compute", "memory", "fixed", "per_row",
                                                     "tile_m") if k in c})
    return out


def shapes(cls: str, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each row as the engine's kernel inputs (kernels.py): rows, FLOPs and bytes terms and
    the racksim precision the kernel runs at."""
    col = {c: df[c].to_numpy(float) for c in df.columns
           if c not in ("system", "framework", "version", "kernel_source", "dtype", "phase",
                        "kv_dtype", "distribution", "split", "gated")}
    s: dict[str, np.ndarray] = {}
    if cls in GEMM_CLASSES:
        if not df["dtype"].isin(list(DTYPE_PRECISION)).all():
            raise ValueError(f"dtypes without a racksim precision: {set(df['dtype'])}")
        s["precision"] = df["dtype"].map(DTYPE_PRECISION).to_numpy(object)
        w = np.array([BYTES_PER_ELEMENT[p] for p in s["precision"]])
    else:
        s["precision"] = df["kv_dtype"].map(KV_PRECISION).to_numpy(object)
    if cls == "gemm":
        m, n, k = col["m"], col["n"], col["k"]
        s.update(rows=m, flops_per_row=2 * n * k, weight_bytes=n * k * w,
                 io_bytes_per_row=(n + k) * ACT)
    elif cls == "grouped_gemm":
        H, f = col["hidden"], col["inter_local"]
        copies, active = col["copies"], col["active"]
        s.update(rows=copies, used=active, per_expert=np.floor(copies / np.maximum(active, 1)),
                 extra=copies - np.floor(copies / np.maximum(active, 1)) * active,
                 # gate_up (n = 2f, k = H), down (n = H, k = f); act 2 f values per row
                 gemm_n=np.stack([2 * f, H]), gemm_k=np.stack([H, f]), w=w,
                 act_bytes_per_row=2 * f * ACT)
    elif TABLE.get(cls) == "attention":
        b, q, kv, w_ = col["batch"], col["q_len"], col["kv_len"], col["window"]
        h, hkv, d = col["heads"], col["kv_heads"], col["head_dim"]
        kvb = df["kv_dtype"].map(aic_data.ELEMENT_BYTES).to_numpy(float)
        s.update(rows=b * q, kv_tokens=b * aic_data.keys_touched(q, kv, w_),
                 pairs=b * aic_data.causal_pairs(q, kv, w_), kv_bytes=2 * hkv * d * kvb,
                 flops_per_pair=4 * h * d, io_bytes_per_row=2 * h * d * ACT)
    elif TABLE.get(cls) == "mla_attention":
        b, q, kv, h = col["batch"], col["q_len"], col["kv_len"], col["heads"]
        kvb = df["kv_dtype"].map(aic_data.ELEMENT_BYTES).to_numpy(float)
        pairs = b * aic_data.causal_pairs(q, kv)
        s.update(rows=b * q, kv_tokens=b * kv, pairs=pairs,
                 kv_bytes=(aic_data.MLA_KV_LORA + aic_data.MLA_QK_ROPE) * kvb,
                 flops_per_pair=col["flops"] / pairs,   # the table's own: absorbed decode,
                 io_bytes_per_row=2 * h * aic_data.MLA_V_HEAD * ACT)   # up-projected context
    else:
        raise ValueError(f"unknown kernel class {cls!r}")
    return s


def _per_precision(c: Figures, precision: np.ndarray, gpu: GPU) -> tuple[np.ndarray, ...]:
    """Achieved FLOP/s and fixed cost per row, as kernels.table computes them: the peak at
    the row's precision (or the GPU's nearest wider one) x the class's compute there, and the
    class's fixed cost there (both resolved at the precision the GPU runs)."""
    rate, fixed = np.empty(len(precision)), np.empty(len(precision))
    for p in set(precision):
        used, peak = gpu.flops_at(p)
        rate[precision == p] = peak * at(c.compute, used or p)
        fixed[precision == p] = at(c.fixed, used or p)
    return rate, fixed


def _padded(rows_per: np.ndarray, extra: np.ndarray, used: np.ndarray, tile: int):
    """Rows computed when `extra` experts take rows_per + 1 tokens and the other
    used - extra take rows_per, each padded up to the tile."""
    def pad(x):
        return np.ceil(x / tile) * tile
    return extra * pad(rows_per + 1) + (used - extra) * pad(rows_per)


def predict(cls: str, s: Mapping[str, np.ndarray], params, gpu: GPU) -> np.ndarray:
    """Predicted seconds per row (the engine's kernel_time / grouped_time, vectorised);
    `params` as `figures` takes them."""
    f = figures(params)
    c = f[cls]
    bw = gpu.hbm_bandwidth * c.memory
    rate, fixed = _per_precision(c, s["precision"], gpu)
    if cls == "gemm":
        padded = np.ceil(s["rows"] / c.tile_m) * c.tile_m
        tc = padded * s["flops_per_row"] / rate
        tm = (s["weight_bytes"] + s["rows"] * s["io_bytes_per_row"]) / bw
        return fixed + c.per_row * s["rows"] + np.maximum(tc, tm)
    if cls == "grouped_gemm":
        padded = _padded(s["per_expert"], s["extra"], s["used"], c.tile_m)
        t = np.zeros(len(rate))
        for n, k in zip(s["gemm_n"], s["gemm_k"]):
            tc = padded * 2 * n * k / rate
            tm = (s["used"] * n * k * s["w"] + s["rows"] * (n + k) * ACT) / bw
            t += fixed + c.per_row * s["rows"] + np.maximum(tc, tm)
        e = f["elementwise"]
        return t + at(e.fixed, "bf16") + e.per_row * s["rows"] + (
            s["rows"] * s["act_bytes_per_row"] / (gpu.hbm_bandwidth * e.memory))
    tc = s["pairs"] * s["flops_per_pair"] / rate
    tm = (s["kv_tokens"] * s["kv_bytes"] + s["rows"] * s["io_bytes_per_row"]) / bw
    return fixed + c.per_row * s["rows"] + np.maximum(tc, tm)


# --------------------------------------------------------------------------- the fit

US, NS = 1e-6, 1e-9   # fitted units of fixed (us) and per_row (ns): well-scaled parameters


def _figures(theta: np.ndarray, precisions: list[str], tile: int, per_precision: bool
             ) -> Figures:
    """theta = compute per precision, memory, fixed (per precision if `per_precision`),
    per_row."""
    n = len(precisions)
    nf = n if per_precision else 1
    compute = {p: float(x) for p, x in zip(precisions, theta[:n])}
    fixed = {p: float(x) * US for p, x in zip(precisions, theta[n + 1:n + 1 + nf])}
    return Figures(compute=compute if n > 1 else float(theta[0]), memory=float(theta[n]),
                   fixed=fixed if nf > 1 else float(theta[n + 1]) * US,
                   per_row=float(theta[n + 1 + nf]) * NS, tile_m=tile)


def fit_class(cls: str, df: pd.DataFrame, gpu: GPU, elementwise: Figures | None = None,
              tiles: tuple[int, ...] | None = None, loss: str = LOSS,
              f_scale: float = F_SCALE, per_precision_fixed: bool = True
              ) -> tuple[Figures, float]:
    """Fit one class on `df` (every row given is used): (figures, RMS of
    log(predicted / measured)). GEMM classes: compute and (`per_precision_fixed`) fixed one
    figure per precision present; attention classes: one of each; tile_m by grid (TILES for
    the GEMM classes, 1 for attention, whose FLOPs count pairs, not padded rows);
    grouped_gemm needs the `elementwise` figures its activation kernel runs at. Each tile is
    fitted from three starts, one of them at low compute (on the full data: the optimum of
    every class the same as from 12 starts, compute 0.01-0.9 x memory 0.3-0.9);
    `loss` / `f_scale` as scipy's least_squares (LOSS, F_SCALE: a robust loss on
    log(predicted / measured), so the few configurations measured 2-3x slower than their
    neighbours do not pull a class's figures; "linear" is plain least squares)."""
    if df.empty:
        raise ValueError(f"no rows to fit {cls} on")
    s = shapes(cls, df)
    lat = df["latency_s"].to_numpy(float)
    y = np.log(lat)
    gemmlike = cls in GEMM_CLASSES
    precisions = [p for p in PRECISIONS if (s["precision"] == p).any()]
    n = len(precisions)
    nf = n if per_precision_fixed and gemmlike else 1
    tiles = tiles or (TILES if gemmlike else (1,))
    # each fixed cost's scale and start: the fastest row of its precision(s)
    floors = (np.array([lat[s["precision"] == p].min() for p in precisions]) if nf > 1
              else np.array([lat.min()])) / US
    lo = np.r_[np.full(n + 1, 1e-3), np.zeros(nf), 0.0]
    hi = np.r_[np.ones(n + 1), np.full(nf, 1e3), 1e4]
    # a start at which no row is compute-bound has no gradient in compute: the low-compute
    # start reaches the optima the others cannot (decode attention: 0.02, not 0.6)
    starts = [np.r_[np.full(n, 0.6), 0.7, 0.5 * floors, 1.0],
              np.r_[np.full(n, 0.9), 0.9, 0.9 * floors, 0.0],
              np.r_[np.full(n, 0.03), 0.7, 0.5 * floors, 1.0]]
    others = figures({"elementwise": elementwise or Figures()})
    best = None
    for tile in tiles:
        for x0 in starts:
            def residual(theta, tile=tile):
                c = _figures(theta, precisions, tile, nf > 1)
                return np.log(predict(cls, s, {**others, cls: c}, gpu)) - y

            r = least_squares(residual, np.clip(x0, lo, hi), bounds=(lo, hi),
                              x_scale=np.r_[np.full(n + 1, 0.1), np.maximum(floors, 1.0),
                                            10.0],
                              loss=loss, f_scale=f_scale)
            if best is None or r.cost < best[0] - 1e-12:
                best = (float(r.cost), _figures(r.x, precisions, tile, nf > 1),
                        float(np.sqrt(np.mean(r.fun ** 2))))
    return best[1], best[2]


def elementwise_class(gemm: Figures) -> Figures:
    """The elementwise class, never measured alone: bandwidth-bound at the GEMMs' memory
    efficiency, no fixed or per-row cost (in the fused MoE its fixed cost cannot be told
    apart from the grouped GEMMs', which carry it)."""
    return Figures(compute=1.0, memory=gemm.memory, fixed=0.0, per_row=0.0, tile_m=1)


def _sig(x: float, zero: float = 1e-15) -> float:
    """3 significant figures; below `zero` (far below any time the engine resolves) 0."""
    return float(f"{x:.3g}") if abs(x) >= zero else 0.0


def _rounded(c: Figures) -> dict:
    """A class as the YAML holds it: efficiencies to 3 decimals, times to 3 significant
    figures (what the engine then uses, and what `evaluate` scores)."""
    def each(v, f):
        return {p: f(x) for p, x in v.items()} if isinstance(v, Mapping) else f(v)
    return {"compute": each(c.compute, lambda x: round(x, 3)), "memory": round(c.memory, 3),
            "fixed": each(c.fixed, _sig), "per_row": _sig(c.per_row), "tile_m": c.tile_m}


TABLES = {"gemm": "gemm_perf", "grouped_gemm": "moe_perf balanced moe_torch_flow_cutlass",
          "attention": "generation_attention_perf torch_flow",
          "attention_prefill": "context_attention_perf torch_flow",
          "mla_attention": "generation_mla_perf", "mla_prefill": "context_mla_perf"}


def fit_generation(root, system: str) -> dict:
    """Fit every class on `system`'s calibration rows: a mapping in the format of
    topologies/kernels/*.yaml (KernelTiming), its `source` naming the data and the fit."""
    gpu = gpu_of(root, system)
    out: dict = {}
    used = []
    for cls in CLASSES:
        df = measured(root, system, cls)
        cal = df[df["split"] == "calibration"]
        if cls == "attention":
            cal = cal[cal["heads"] / cal["kv_heads"] <= GQA_GROUP]
        ew = Figures(**out["elementwise"]) if cls == "grouped_gemm" else None
        out[cls] = _rounded(fit_class(cls, cal, gpu, elementwise=ew)[0])
        if cls == "gemm":
            out["elementwise"] = _rounded(elementwise_class(Figures(**out["gemm"])))
        versions = "/".join(sorted(set(df["version"].astype(str))))
        dtypes = ",".join(sorted(set(df["kv_dtype" if cls in PHASE else "dtype"])))
        what = " KV" if cls in PHASE else ""
        used.append(f"{cls}: {TABLES[cls]} {versions} ({dtypes}{what}) {len(cal)} "
                    f"calibration + {len(df) - len(cal)} held-out rows")
    source = (f"{origin(root)}, system {system}, "
              f"framework {FRAMEWORK}; " + "; ".join(used) + f"; peaks of "
              f"{PRESETS.get(system, system)}; fit: sim.calibration.fit, {LOSS} (scale "
              f"{F_SCALE}) on log(predicted/measured), 80/20 calibration/held-out split by "
              "shape hash, tile_m by grid, GEMM compute and fixed per precision, attention "
              f"per phase and compute per KV precision, decode attention on heads/kv_heads "
              f"<= {GQA_GROUP}; "
              "elementwise not measured: GEMM memory efficiency, no fixed cost")
    ordered = {"source": source, **{k: out[k] for k in KEYS}}
    KernelTiming.model_validate(ordered)
    return ordered


# --------------------------------------------------------------------------- errors


def errors(params, df: pd.DataFrame, cls: str, gpu: GPU) -> np.ndarray:
    """predicted / measured - 1 per row of `df`."""
    return predict(cls, shapes(cls, df), params, gpu) / df["latency_s"].to_numpy(float) - 1


def _summary(e: np.ndarray) -> dict:
    a = np.abs(e)
    if not len(a):
        return {"rows": 0, "median": np.nan, "p90": np.nan, "bias": np.nan}
    return {"rows": len(a), "median": float(np.median(a)), "p90": float(np.quantile(a, 0.9)),
            "bias": float(np.median(e))}


def subsets(cls: str, df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """What the error tables break a class's rows down by: GEMM classes by dtype (the
    unfitted ones marked); decode attention by KV dtype and by query heads per KV head (up
    to / above GQA_GROUP); the other attention classes by KV dtype."""
    if cls in GEMM_CLASSES:
        return [(f"{k} (not fitted)" if k in UNFITTED else str(k), x)
                for k, x in df.groupby("dtype")]
    out = [(f"{k} KV", x) for k, x in df.groupby("kv_dtype")]
    if cls == "attention":
        wide = df["heads"] / df["kv_heads"] > GQA_GROUP
        out += [(f"heads/kv_heads <= {GQA_GROUP}", df[~wide]),
                (f"heads/kv_heads > {GQA_GROUP}", df[wide])]
    return out


def evaluate(params, root, system: str) -> pd.DataFrame:
    """Errors of `params` (a KernelTiming or its mapping) on `system`'s rows, scaled by the
    system's own peaks: per class and subset (`all`, then `subsets`; gemm also the unfitted
    fp8_block, marked), calibration and held-out rows, the median and 90th percentile of
    |predicted / measured - 1| and the median signed error (bias)."""
    gpu = gpu_of(root, system)
    f = figures(params)
    rows = []
    for cls in CLASSES:
        df = measured(root, system, cls, unfitted=True)
        df = df.assign(error=errors(f, df, cls, gpu))
        fitted = df[~df["dtype"].isin(UNFITTED)] if cls in GEMM_CLASSES else df
        for name, x in [("all", fitted), *subsets(cls, df)]:
            row = {"system": system, "class": cls, "subset": name}
            for split, prefix in (("calibration", "cal"), ("held_out", "held")):
                for k, v in _summary(x.loc[x["split"] == split, "error"].to_numpy()).items():
                    row[f"{prefix}_{k}"] = v
            rows.append(row)
    return pd.DataFrame(rows)


def diagnostics(root, system: str, params) -> pd.DataFrame:
    """What one parameter set per class gives up: each class refitted on each of its
    `subsets` alone (GEMM classes per precision, with its own compute and fixed; attention
    per KV dtype, decode also per heads / kv_heads), with the subset fit's parameters and
    its held-out median |error| on its own subset and on the class's other subsets."""
    gpu = gpu_of(root, system)
    f = figures(params)
    out = []
    for cls in CLASSES:
        df = measured(root, system, cls, unfitted=True)
        parts = subsets(cls, df)
        for name, x in parts:
            c, _ = fit_class(cls, x[x["split"] == "calibration"], gpu,
                             elementwise=f["elementwise"])
            t = {**f, cls: c}
            row = {"system": system, "class": cls, "fitted on": name, **_rounded(c)}
            for other, y in parts:
                h = y[y["split"] == "held_out"]
                row[f"held median on {other}"] = _summary(errors(t, h, cls, gpu))["median"]
            out.append(row)
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- outputs


def sample(root, system: str, held_out: int = 250, calibration: int = 100,
           unfitted: int = 25) -> dict[str, pd.DataFrame]:
    """A deterministic sample of each class's rows for validation/kernels/: per split, that
    many rows of the fitted dtypes (and `unfitted` of UNFITTED dtypes) of lowest hash of their
    full key, a pseudo-random draw proportional to the data."""
    out = {}
    for cls in CLASSES:
        df = measured(root, system, cls, unfitted=True)
        h = pd.Series(_hashes(df, [c for c in df.columns
                                   if c not in ("latency_s", "flops", "bytes")]), df.index)
        other = df["dtype"].isin(UNFITTED)
        parts = [h[(df["split"] == sp) & (other == u)].sort_values().index[:n]
                 for sp, n_fit in (("calibration", calibration), ("held_out", held_out))
                 for u, n in ((False, n_fit), (True, unfitted))]
        out[cls] = df.loc[sorted(np.concatenate(parts))].reset_index(drop=True)
    return out


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _num(x: float) -> str:
    """A number as YAML 1.1 (PyYAML) reads back as a float: 1e-05 would be a string."""
    s = repr(float(x))
    if "e" in s and "." not in s.split("e")[0]:
        s = s.replace("e", ".0e")
    return s


WHAT = {
    "gemm": "dense GEMM (a TRT-LLM Linear; fp8 and nvfp4 include quantizing the input)",
    "grouped_gemm": "routed experts: each of the 2 grouped GEMMs of a fused MoE layer "
                    "(routing, permute, finalize ride on fixed and per_row)",
    "attention": "GQA/MHA decode attention op (XQA): one query token per sequence",
    "attention_prefill": "GQA/MHA context attention op (FMHA): a step's prompt tokens",
    "elementwise": "norms, activations: not measured alone, an assumption",
    "mla_attention": "DeepSeek-V3 MLA decode attention op (absorbed)",
    "mla_prefill": "DeepSeek-V3 MLA context attention op (up-projected)",
}
_GEMM_NOTES = {
    "compute": "achieved / peak FLOP/s at each precision",
    "memory": "achieved / peak HBM bandwidth",
    "fixed": "seconds per kernel at each precision",
    "per_row": "seconds per row of M",
    "tile_m": "M is computed in tiles of this many rows",
}
_DECODE_NOTES = {
    "compute": "achieved / peak FLOP/s at the KV cache's precision",
    "memory": "achieved / peak HBM bandwidth (KV read)",
    "fixed": "seconds per kernel",
    "per_row": "seconds per sequence",
    "tile_m": "unused: attention FLOPs count pairs, not padded rows",
}
NOTES = {
    "gemm": _GEMM_NOTES,
    "grouped_gemm": {**_GEMM_NOTES,
                     "fixed": "seconds per grouped GEMM at each precision (2 per MoE layer)",
                     "per_row": "seconds per routed token copy, per grouped GEMM",
                     "tile_m": "each expert's tokens are computed in tiles of this many"},
    "attention": _DECODE_NOTES,
    "attention_prefill": {**_DECODE_NOTES, "per_row": "seconds per prompt token"},
    "elementwise": {"compute": "unused: no FLOPs", "memory": "assumption: the GEMMs'",
                    "fixed": "assumption: none (not identifiable in the fused MoE)",
                    "per_row": "assumption: none", "tile_m": "unused"},
    "mla_attention": _DECODE_NOTES,
    "mla_prefill": {**_DECODE_NOTES, "per_row": "seconds per prompt token"},
}


def kernel_yaml(generation: str, params: Mapping, tables: Mapping[str, pd.DataFrame]) -> str:
    """topologies/kernels/<generation>.yaml: a header with the held-out errors per system
    (`tables`: evaluate's, the fit's own system first), then each class, every figure
    commented."""
    import yaml

    system = GENERATIONS[generation]
    roles = {system: "fitted", **CHECKS[generation]}
    lines = [f"# {generation.capitalize()} kernel timing: the per-kernel model of "
             f"sim/engine/kernels.py fitted on {system}",
             "# (`python -m sim.calibration.fit ROOT --write`; docs/kernel-model.md). "
             "Efficiencies are fractions",
             "# of the hardware file's peaks; times in seconds. attention and mla_attention "
             "are decode kernels",
             "# (rows: sequences), attention_prefill and mla_prefill context kernels (rows: "
             "prompt tokens).", "#",
             "# Held-out |predicted/measured - 1| per class, median/p90, each system at its "
             "own peaks:"]
    for s, t in tables.items():
        a = t[t["subset"] == "all"].set_index("class")
        cells = " ".join(f"{c} {_fmt(a.loc[c, 'held_median'])}/{_fmt(a.loc[c, 'held_p90'])}"
                         for c in CLASSES)
        lines.append(f"#   {s} ({roles[s]}): {cells}")
    own = tables[system]
    lines.append(f"# Held-out median (signed) by subset on {system}:")
    for cls in CLASSES:
        x = own[(own["class"] == cls) & (own["subset"] != "all")]
        lines.append(f"#   {cls}: " + ", ".join(
            f"{r.subset} {_fmt(r.held_median)} ({r.held_bias:+.2f})" for r in x.itertuples()))
    lines.append("source: " + yaml.safe_dump(params["source"], width=10 ** 6,
                                             default_style='"').strip())
    body = []
    for cls in KEYS:
        body.append((f"{cls}:", WHAT[cls]))
        for k, v in params[cls].items():
            if isinstance(v, Mapping):
                v = "{" + ", ".join(f"{p}: {_num(x) if k == 'fixed' else x}"
                                    for p, x in v.items()) + "}"
            elif k in ("fixed", "per_row"):
                v = _num(v)
            body.append((f"  {k}: {v}", NOTES[cls][k]))
    width = max(len(text) for text, _ in body) + 2
    lines += [f"{text:<{width}}# {note}" for text, note in body]
    text = "\n".join(lines) + "\n"
    back = yaml.safe_load(text)
    if {k: back[k] for k in KEYS} != {k: params[k] for k in KEYS}:
        raise AssertionError("the YAML does not read back as the fitted figures")
    return text


def main(argv: list[str] | None = None) -> None:
    """`python -m sim.calibration.fit [ROOT] [--write] [--sample] [--against DIR]
    [--generation hopper|blackwell]`."""
    import sys

    import yaml

    args = sys.argv[1:] if argv is None else argv
    write, make_sample = "--write" in args, "--sample" in args
    against = None
    if "--against" in args:
        i = args.index("--against")
        against = Path(args[i + 1])
        args = args[:i] + args[i + 2:]
    only = None
    if "--generation" in args:
        i = args.index("--generation")
        only = args[i + 1]
        args = args[:i] + args[i + 2:]
    paths = [a for a in args if not a.startswith("--")]
    root = paths[0] if paths else None
    pd.set_option("display.width", 250, "display.max_columns", 30, "display.precision", 3)
    if (write or make_sample) and is_sample(root):
        raise SystemExit("--write and --sample read the package, not the committed sample")
    for gen, system in GENERATIONS.items():
        if only is not None and gen != only:
            continue
        params = fit_generation(root, system)
        print(f"\n## {gen} (fitted on {system})\n")
        print(yaml.safe_dump(params, sort_keys=False, width=100))
        tables = {s: evaluate(params, root, s) for s in (system, *CHECKS[gen])}
        for s, t in tables.items():
            print(f"\n### {gen} on {s}\n")
            print(t.drop(columns=["system"]).to_string(index=False))
            if against is not None:
                old = yaml.safe_load((against / f"{gen}.yaml").read_text())
                print(f"\n### {against / gen}.yaml on {s}\n")
                print(evaluate(old, root, s).drop(columns=["system"]).to_string(index=False))
        print(f"\n### {gen}: one class refitted per subset, on {system}\n")
        print(diagnostics(root, system, params).to_string(index=False))
        if write:
            (KERNELS_DIR / f"{gen}.yaml").write_text(kernel_yaml(gen, params, tables))
    if make_sample:
        for system in dict.fromkeys(s for g, s0 in GENERATIONS.items()
                                    for s in (s0, *CHECKS[g])):
            d = SAMPLE_DIR / system
            d.mkdir(parents=True, exist_ok=True)
            for cls, df in sample(root, system).items():
                df.to_csv(d / f"{cls}.csv", index=False, float_format="%.6g")


if __name__ == "__main__":
    main()
