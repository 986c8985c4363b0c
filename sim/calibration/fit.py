"""Fit the per-kernel timing model of sim/engine/kernels.py per GPU generation on measured
kernel latencies, reproducibly, with calibration rows kept apart from held-out rows (issue 19;
docs/kernel-model.md).

The data are NVIDIA's aiconfigurator-core measurements as `aic_data` extracts them (TensorRT-
LLM, the version aiconfigurator serves as current), or the committed sample of them in
validation/kernels/ (`root` may be either: see `measured`). The model is the engine's, term
for term (kernels.py):

    t = fixed + per_row x rows + max(FLOPs / (peak[precision] x compute[precision]),
                                     bytes / (HBM bandwidth x memory))

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
- attention (`attention_table`, the torch_flow backend) and mla_attention (`mla_table`):
  rows = query tokens, FLOPs = pairs x FLOPs per pair, bytes = context tokens read x KV
  bytes per token + rows x (Q in, O out), at the bf16 peak (the engine's attention precision:
  the KV precision, at least BF16).

Peaks are the racksim hardware file of the system when there is one (PRESETS; the engine
multiplies the fitted efficiencies by these), else aiconfigurator's systems/<system>.yaml.

Fit: least squares on log(predicted / measured) over the calibration rows (bounded: every
efficiency in (0, 1], fixed and per-row costs >= 0; tile_m by grid over TILES). Rows are split
80 / 20 into calibration and held-out by a hash of the shape (not of the precision, so one
shape is in the same split at every precision and on every system).

    python -m sim.calibration.fit [ROOT] [--write] [--sample]

prints the fitted parameters of each generation and their errors per class on the fit's own
system, a second GPU of the generation and the other generation; `--write` writes
topologies/kernels/<generation>.yaml, `--sample` the committed rows in validation/kernels/.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from ..spec import load_hardware
from ..spec.hardware import GPU, KernelClass, KernelTiming
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
ATTENTION_PRECISION = "bf16"               # costs.py: KV precision, at least BF16

CLASSES = ("gemm", "grouped_gemm", "attention", "mla_attention")
TILES = (1, 8, 16, 32, 64, 128)
HELD_OUT_PERCENT = 20

# the shape a row measures (the split's key): every column but the precisions
SHAPE = {
    "gemm": ("m", "n", "k"),
    "grouped_gemm": ("tokens", "hidden", "inter", "topk", "experts", "tp", "ep"),
    "attention": ("phase", "batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim",
                  "window"),
    "mla_attention": ("phase", "batch", "q_len", "kv_len", "heads"),
}
# what the error tables break each class down by
SUBSET = {"gemm": "dtype", "grouped_gemm": "dtype", "attention": "phase",
          "mla_attention": "phase"}

GENERATIONS = {"hopper": "h100_sxm", "blackwell": "b200_sxm"}
# systems each generation's fit is checked on, at their own peaks
CHECKS = {"hopper": {"h200_sxm": "leave one GPU out", "b200_sxm": "leave one generation out"},
          "blackwell": {"gb200": "leave one GPU out"}}
# aiconfigurator system -> racksim hardware file whose peaks the engine uses
PRESETS = {"h100_sxm": "hgx-h100", "h200_sxm": "hgx-h200", "b200_sxm": "hgx-b200",
           "gb200": "gb200-nvl72", "gb300": "gb300-nvl72"}

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO / "validation" / "kernels"
KERNELS_DIR = REPO / "topologies" / "kernels"


# --------------------------------------------------------------------------- data


def is_sample(root) -> bool:
    """True when `root` is a folder of committed rows (<root>/<system>/<class>.csv)."""
    return root is not None and any(Path(root).glob("*/gemm.csv"))


def shape_split(cls: str, df: pd.DataFrame) -> np.ndarray:
    """'calibration' or 'held_out' per row, from a hash of the row's shape (SHAPE[cls]):
    deterministic, the same on every system and precision, HELD_OUT_PERCENT held out."""
    buckets = _hashes(df, SHAPE[cls], f"{cls}:") % 100
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
    of the torch_flow backend; every MLA row. From a sample folder (`is_sample`): its
    <system>/<cls>.csv as committed."""
    if is_sample(root):
        f = Path(root) / system / f"{cls}.csv"
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no committed {cls} rows for {system}")
        df = pd.read_csv(f)
        if not unfitted and "dtype" in df and cls in ("gemm", "grouped_gemm"):
            df = df[df["dtype"].isin(PRECISIONS.values())]
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
    elif cls == "attention":
        df = aic_data.attention_table(root, system, FRAMEWORK, VERSION)
        df = df[df["kernel_source"] == "torch_flow"]
    elif cls == "mla_attention":
        df = aic_data.mla_table(root, system, FRAMEWORK, VERSION)
    else:
        raise ValueError(f"unknown kernel class {cls!r}; one of {', '.join(CLASSES)}")
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


def shapes(cls: str, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each row as the engine's kernel inputs (kernels.py): rows, FLOPs and bytes terms and
    the racksim precision the kernel runs at."""
    col = {c: df[c].to_numpy(float) for c in df.columns
           if c not in ("system", "framework", "version", "kernel_source", "dtype", "phase",
                        "kv_dtype", "distribution", "split", "gated")}
    s: dict[str, np.ndarray] = {}
    if cls in ("gemm", "grouped_gemm"):
        if not df["dtype"].isin(list(DTYPE_PRECISION)).all():
            raise ValueError(f"dtypes without a racksim precision: {set(df['dtype'])}")
        s["precision"] = df["dtype"].map(DTYPE_PRECISION).to_numpy(object)
        w = np.array([BYTES_PER_ELEMENT[p] for p in s["precision"]])
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
    elif cls == "attention":
        b, q, kv, w_ = col["batch"], col["q_len"], col["kv_len"], col["window"]
        h, hkv, d = col["heads"], col["kv_heads"], col["head_dim"]
        kvb = df["kv_dtype"].map(aic_data.ELEMENT_BYTES).to_numpy(float)
        s.update(rows=b * q, kv_tokens=b * aic_data.keys_touched(q, kv, w_),
                 pairs=b * aic_data.causal_pairs(q, kv, w_), kv_bytes=2 * hkv * d * kvb,
                 flops_per_pair=4 * h * d, io_bytes_per_row=2 * h * d * ACT)
    elif cls == "mla_attention":
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


def _rates(c: KernelClass, precision: np.ndarray, gpu: GPU) -> np.ndarray:
    """Achieved FLOP/s per row: peak at the row's precision x the class's compute there, as
    kernels.table computes it."""
    out = np.empty(len(precision))
    for p in set(precision):
        used, peak = gpu.flops_at(p)
        out[precision == p] = peak * c.compute_at(used or p)
    return out


def _padded(rows_per: np.ndarray, extra: np.ndarray, used: np.ndarray, tile: int):
    """Rows computed when `extra` experts take rows_per + 1 tokens and the other
    used - extra take rows_per, each padded up to the tile."""
    def pad(x):
        return np.ceil(x / tile) * tile
    return extra * pad(rows_per + 1) + (used - extra) * pad(rows_per)


def predict(cls: str, s: Mapping[str, np.ndarray], params: KernelTiming, gpu: GPU
            ) -> np.ndarray:
    """Predicted seconds per row (the engine's kernel_time / grouped_time, vectorised)."""
    c = getattr(params, cls) if cls != "mla_attention" else (params.mla_attention
                                                            or params.attention)
    bw = gpu.hbm_bandwidth * c.memory
    if cls == "gemm":
        padded = np.ceil(s["rows"] / c.tile_m) * c.tile_m
        tc = padded * s["flops_per_row"] / _rates(c, s["precision"], gpu)
        tm = (s["weight_bytes"] + s["rows"] * s["io_bytes_per_row"]) / bw
        return c.fixed + c.per_row * s["rows"] + np.maximum(tc, tm)
    if cls == "grouped_gemm":
        rate = _rates(c, s["precision"], gpu)
        padded = _padded(s["per_expert"], s["extra"], s["used"], c.tile_m)
        t = np.zeros(len(rate))
        for n, k in zip(s["gemm_n"], s["gemm_k"]):
            tc = padded * 2 * n * k / rate
            tm = (s["used"] * n * k * s["w"] + s["rows"] * (n + k) * ACT) / bw
            t += c.fixed + c.per_row * s["rows"] + np.maximum(tc, tm)
        e = params.elementwise
        return t + e.fixed + e.per_row * s["rows"] + (
            s["rows"] * s["act_bytes_per_row"] / (gpu.hbm_bandwidth * e.memory))
    used, peak = gpu.flops_at(ATTENTION_PRECISION)
    tc = s["pairs"] * s["flops_per_pair"] / (peak * c.compute_at(used or ATTENTION_PRECISION))
    tm = (s["kv_tokens"] * s["kv_bytes"] + s["rows"] * s["io_bytes_per_row"]) / bw
    return c.fixed + c.per_row * s["rows"] + np.maximum(tc, tm)


# --------------------------------------------------------------------------- the fit

US, NS = 1e-6, 1e-9   # fitted units of fixed (us) and per_row (ns): well-scaled parameters


def _class(theta: np.ndarray, precisions: list[str], tile: int) -> KernelClass:
    n = len(precisions)
    compute = {p: float(x) for p, x in zip(precisions, theta[:n])}
    return KernelClass(compute=compute if n > 1 else float(theta[0]), memory=float(theta[n]),
                       fixed=float(theta[n + 1]) * US, per_row=float(theta[n + 2]) * NS,
                       tile_m=tile)


def fit_class(cls: str, df: pd.DataFrame, gpu: GPU, elementwise: KernelClass | None = None,
              tiles: tuple[int, ...] | None = None, loss: str = "linear",
              f_scale: float = 1.0) -> tuple[KernelClass, float]:
    """Fit one class on `df` (every row given is used): (parameters, RMS of
    log(predicted / measured)). compute is one figure per precision present (GEMM classes),
    one for attention; tile_m by grid (TILES for the GEMM classes, 1 for attention, whose
    FLOPs count pairs, not padded rows); grouped_gemm needs the `elementwise` class its
    activation kernel runs at. Each tile is fitted from two starts (the optimum found was the
    same from 54 starts on the full data); `loss` / `f_scale` as scipy's least_squares
    ("linear": least squares, the fit used; "soft_l1" a robust variant, for comparison)."""
    if df.empty:
        raise ValueError(f"no rows to fit {cls} on")
    s = shapes(cls, df)
    y = np.log(df["latency_s"].to_numpy(float))
    gemmlike = cls in ("gemm", "grouped_gemm")
    precisions = [p for p in PRECISIONS if gemmlike and (s["precision"] == p).any()] or [
        ATTENTION_PRECISION]
    n = len(precisions)
    tiles = tiles or (TILES if gemmlike else (1,))
    floor = float(np.exp(y.min())) / US
    lo = np.r_[np.full(n + 1, 1e-3), 0.0, 0.0]
    hi = np.r_[np.ones(n + 1), 1e3, 1e4]
    starts = [np.r_[np.full(n, 0.6), 0.7, 0.5 * floor, 1.0],
              np.r_[np.full(n, 0.9), 0.9, 0.9 * floor, 0.0]]
    best = None
    for tile in tiles:
        for x0 in starts:
            def residual(theta, tile=tile):
                c = _class(theta, precisions, tile)
                timing = _timing(cls, c, elementwise)
                return np.log(predict(cls, s, timing, gpu)) - y

            r = least_squares(residual, np.clip(x0, lo, hi), bounds=(lo, hi),
                              x_scale=np.r_[np.full(n + 1, 0.1), max(floor, 1.0), 10.0],
                              loss=loss, f_scale=f_scale)
            if best is None or r.cost < best[0] - 1e-12:
                best = (float(r.cost), _class(r.x, precisions, tile),
                        float(np.sqrt(np.mean(r.fun ** 2))))
    return best[1], best[2]


def _timing(cls: str, c: KernelClass, elementwise: KernelClass | None = None) -> KernelTiming:
    return KernelTiming(**{cls: c}, elementwise=elementwise or KernelClass())


def elementwise_class(gemm: KernelClass) -> KernelClass:
    """The elementwise class, never measured alone: bandwidth-bound at the GEMMs' memory
    efficiency, no fixed or per-row cost (in the fused MoE its fixed cost cannot be told
    apart from the grouped GEMMs', which carry it)."""
    return KernelClass(compute=1.0, memory=gemm.memory, fixed=0.0, per_row=0.0, tile_m=1)


def _rounded(c: KernelClass) -> dict:
    """A class as the YAML holds it: efficiencies to 3 decimals, times to 3 significant
    figures (what the engine then uses, and what `evaluate` scores)."""
    def sig(x):
        return float(f"{x:.3g}")
    compute = ({p: round(v, 3) for p, v in c.compute.items()} if isinstance(c.compute, dict)
               else round(c.compute, 3))
    return {"compute": compute, "memory": round(c.memory, 3), "fixed": sig(c.fixed),
            "per_row": sig(c.per_row), "tile_m": c.tile_m}


def fit_generation(root, system: str) -> dict:
    """Fit every class on `system`'s calibration rows: a mapping in the format of
    topologies/kernels/*.yaml (KernelTiming), its `source` naming the data and the fit."""
    gpu = gpu_of(root, system)
    out: dict = {}
    used = []
    tables = {"gemm": "gemm_perf", "grouped_gemm": "moe_perf balanced moe_torch_flow_cutlass",
              "attention": "context/generation_attention_perf torch_flow",
              "mla_attention": "context/generation_mla_perf"}
    for cls in CLASSES:
        df = measured(root, system, cls)
        cal = df[df["split"] == "calibration"]
        ew = KernelClass(**out["elementwise"]) if cls == "grouped_gemm" else None
        out[cls] = _rounded(fit_class(cls, cal, gpu, elementwise=ew)[0])
        if cls == "gemm":
            out["elementwise"] = _rounded(elementwise_class(KernelClass(**out["gemm"])))
        versions = "/".join(sorted(set(df["version"].astype(str))))
        dtypes = ",".join(sorted(set(df["dtype"])))
        used.append(f"{cls}: {tables[cls]} {versions} ({dtypes}) {len(cal)} calibration + "
                    f"{len(df) - len(cal)} held-out rows")
    source = (f"{origin(root)}, system {system}, "
              f"framework {FRAMEWORK}; " + "; ".join(used) + f"; peaks of "
              f"{PRESETS.get(system, system)}; fit: sim.calibration.fit, least squares on "
              "log(predicted/measured), 80/20 calibration/held-out split by shape hash, "
              "tile_m by grid; elementwise not measured: GEMM memory efficiency, no fixed "
              "cost")
    ordered = {"source": source, **{k: out[k] for k in ("gemm", "grouped_gemm", "attention",
                                                          "elementwise", "mla_attention")}}
    KernelTiming.model_validate(ordered)
    return ordered


# --------------------------------------------------------------------------- errors


def errors(params, df: pd.DataFrame, cls: str, gpu: GPU) -> np.ndarray:
    """predicted / measured - 1 per row of `df`."""
    timing = params if isinstance(params, KernelTiming) else KernelTiming.model_validate(
        params)
    return predict(cls, shapes(cls, df), timing, gpu) / df["latency_s"].to_numpy(float) - 1


def _summary(e: np.ndarray) -> dict:
    a = np.abs(e)
    if not len(a):
        return {"rows": 0, "median": np.nan, "p90": np.nan, "bias": np.nan}
    return {"rows": len(a), "median": float(np.median(a)), "p90": float(np.quantile(a, 0.9)),
            "bias": float(np.median(e))}


def evaluate(params, root, system: str) -> pd.DataFrame:
    """Errors of `params` (a KernelTiming or its mapping) on `system`'s rows, scaled by the
    system's own peaks: per class and subset (`all`, then each precision or phase; gemm also
    the unfitted fp8_block, marked), calibration and held-out rows, the median and 90th
    percentile of |predicted / measured - 1| and the median signed error (bias)."""
    gpu = gpu_of(root, system)
    rows = []
    for cls in CLASSES:
        df = measured(root, system, cls, unfitted=True)
        df = df.assign(error=errors(params, df, cls, gpu))
        groups = [("all", df[~df["dtype"].isin(UNFITTED)])] + [
            (f"{k} (not fitted)" if k in UNFITTED else str(k), x)
            for k, x in df.groupby(SUBSET[cls])]
        for name, x in groups:
            row = {"system": system, "class": cls, "subset": name}
            for split, prefix in (("calibration", "cal"), ("held_out", "held")):
                for k, v in _summary(x.loc[x["split"] == split, "error"].to_numpy()).items():
                    row[f"{prefix}_{k}"] = v
            rows.append(row)
    return pd.DataFrame(rows)


def diagnostics(root, system: str, params) -> pd.DataFrame:
    """What one parameter set per class gives up: each class refitted on each subset alone
    (GEMM classes per precision: its own fixed cost; attention classes per phase), with the
    subset fit's parameters and its held-out median |error| on its own subset and on the
    class's other subsets."""
    gpu = gpu_of(root, system)
    timing = KernelTiming.model_validate(params)
    out = []
    for cls in CLASSES:
        df = measured(root, system, cls, unfitted=True)
        ew = timing.elementwise if cls == "grouped_gemm" else None
        for name, x in df.groupby(SUBSET[cls]):
            c, _ = fit_class(cls, x[x["split"] == "calibration"], gpu, elementwise=ew)
            t = KernelTiming(**{**timing.model_dump(), cls: c.model_dump()})
            row = {"system": system, "class": cls, "fitted on": str(name),
                   **{k: v for k, v in _rounded(c).items()}}
            for other, y in df.groupby(SUBSET[cls]):
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
             "# of the hardware file's peaks; times in seconds.", "#",
             "# Held-out |predicted/measured - 1| per class, median/p90, each system at its "
             "own peaks:"]
    for s, t in tables.items():
        a = t[t["subset"] == "all"].set_index("class")
        cells = " ".join(f"{c} {_fmt(a.loc[c, 'held_median'])}/{_fmt(a.loc[c, 'held_p90'])}"
                         for c in CLASSES)
        lines.append(f"#   {s} ({roles[s]}): {cells}")
    own = tables[system]
    parts = []
    for cls in CLASSES:
        x = own[(own["class"] == cls) & (own["subset"] != "all")]
        parts.append(f"{cls} " + ", ".join(f"{r.subset} {_fmt(r.held_median)}"
                                           for r in x.itertuples()))
    lines.append(f"# Held-out median by subset on {system}:")
    lines += [f"#   {p}" for p in parts]
    lines.append("source: " + yaml.safe_dump(params["source"], width=10 ** 6,
                                             default_style='"').strip())
    what = {
        "gemm": "dense GEMM (a TRT-LLM Linear; fp8 and nvfp4 include quantizing the input)",
        "grouped_gemm": "routed experts: each of the 2 grouped GEMMs of a fused MoE layer "
                        "(routing, permute, finalize ride on fixed and per_row)",
        "attention": "GQA/MHA attention op: context (FMHA) and decode (XQA), one set for both",
        "elementwise": "norms, activations: not measured alone, an assumption",
        "mla_attention": "DeepSeek-V3 MLA attention op: context and absorbed decode",
    }
    gemm_notes = {
        "compute": "achieved / peak FLOP/s at each precision",
        "memory": "achieved / peak HBM bandwidth",
        "fixed": "seconds per kernel (one for every precision: docs)",
        "per_row": "seconds per row of M",
        "tile_m": "M is computed in tiles of this many rows",
    }
    attention_notes = {
        "compute": "achieved / BF16 peak FLOP/s (the engine's attention rate)",
        "memory": "achieved / peak HBM bandwidth (KV read)",
        "fixed": "seconds per kernel",
        "per_row": "seconds per query token (decode: per sequence)",
        "tile_m": "unused: attention FLOPs count pairs, not padded rows",
    }
    notes = {
        "gemm": gemm_notes,
        "grouped_gemm": {**gemm_notes, "fixed": "seconds per grouped GEMM (2 per MoE layer)",
                         "per_row": "seconds per routed token copy, per grouped GEMM",
                         "tile_m": "each expert's tokens are computed in tiles of this many"},
        "attention": attention_notes,
        "elementwise": {"compute": "unused: no FLOPs", "memory": "assumption: the GEMMs'",
                        "fixed": "assumption: none (not identifiable in the fused MoE)",
                        "per_row": "assumption: none", "tile_m": "unused"},
        "mla_attention": attention_notes,
    }
    body = []
    for cls in ("gemm", "grouped_gemm", "attention", "elementwise", "mla_attention"):
        body.append((f"{cls}:", what[cls]))
        for k, v in params[cls].items():
            if isinstance(v, dict):
                v = "{" + ", ".join(f"{p}: {x}" for p, x in v.items()) + "}"
            body.append((f"  {k}: {v}", notes[cls][k]))
    width = max(len(text) for text, _ in body) + 2
    lines += [f"{text:<{width}}# {note}" for text, note in body]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """`python -m sim.calibration.fit [ROOT] [--write] [--sample]`."""
    import sys

    import yaml

    args = sys.argv[1:] if argv is None else argv
    write, make_sample = "--write" in args, "--sample" in args
    paths = [a for a in args if not a.startswith("--")]
    root = paths[0] if paths else None
    pd.set_option("display.width", 200, "display.max_columns", 30, "display.precision", 3)
    if (write or make_sample) and is_sample(root):
        raise SystemExit("--write and --sample read the package, not the committed sample")
    for gen, system in GENERATIONS.items():
        params = fit_generation(root, system)
        print(f"\n## {gen} (fitted on {system})\n")
        print(yaml.safe_dump(params, sort_keys=False, width=100))
        tables = {s: evaluate(params, root, s) for s in (system, *CHECKS[gen])}
        for s, t in tables.items():
            print(f"\n### {gen} on {s}\n")
            print(t.drop(columns=["system"]).to_string(index=False))
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
