"""The measured op-timing back end (`engine.op_timing: measured`): each kernel of a layer
timed from NVIDIA's measured kernel latencies for the GPU, where they cover it (issue 19).

Data: aiconfigurator-core's tables (sim/calibration/aic_data.py), TensorRT-LLM's current
version, for the hardware files of systems it measured (SYSTEMS). They are read from the
installed package (`pip install 'racksim[calibrate]'`) or from the unpacked package folder
named by the environment variable RACKSIM_KERNEL_DATA.

How a kernel is timed: the analytical kernel model (kernels.py, the hardware file's fitted
`efficiency.kernels`) times it, and a correction measured on the same kind of kernel scales
it: exp(c), with c = log(measured / analytical) on the table's rows nearest the kernel's shape,
interpolated (linearly in the logarithms) over the shape variables a step changes:

- GEMM (y = x W): over M (tokens), on the measured (n, k) nearest the kernel's in log space,
  at its weight precision (fp8 also takes block-scaled rows when per-tensor ones are absent);
- decode attention (GQA, MLA): over (sequences, mean context), on the measured heads and KV
  heads per GPU nearest the kernel's, at the KV precision;
- context attention: over (sequences, prompt length), the step's prompt tokens P and pairs Q
  read as P / L sequences of L = 2 Q / P tokens;
- routed experts (the fused MoE, balanced routing): over the tokens entering the EP group,
  for the model's exact MoE shape (hidden, expert width, top-k, experts, EP, TP); each rank's
  token copies c stand for c x EP / top-k tokens.

At a measured shape the kernel takes its measured time (the correction undoes the model);
between measured shapes the model interpolates; beyond the measured range the correction of
the nearest edge holds. A kernel with no measured kind (norms and activations, which no table
measures alone; an MoE shape not measured) keeps its analytical time, and the run says so
(summary.json `warnings`); so does a GPU the data do not cover, which runs analytical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from ..spec.hardware import Hardware
from ..spec.model import Model
from . import kernels as kn

# racksim hardware file -> aiconfigurator system (the one map; calibration.fit.PRESETS is it
# turned round)
SYSTEMS = {"hgx-h100": "h100_sxm", "hgx-h200": "h200_sxm", "hgx-b200": "b200_sxm",
           "gb200-nvl72": "gb200", "gb300-nvl72": "gb300"}
# racksim weight precision -> table dtypes, in order of preference
WEIGHT_DTYPES = {"bf16": ("bfloat16",), "fp16": ("bfloat16",), "fp8": ("fp8", "fp8_block"),
                 "fp4": ("nvfp4",)}
KV_DTYPES = {1.0: "fp8", 2.0: "bfloat16"}
FRAMEWORK, VERSION = "trtllm", "current"
ENV = "RACKSIM_KERNEL_DATA"


@dataclass
class Curve:
    """A correction log(measured / analytical) over one or two log shape variables: values
    on a grid (`axes`, each ascending), linear between, held beyond."""

    axes: tuple
    values: np.ndarray

    def __post_init__(self):
        self._grid = None
        if len(self.axes) > 1:   # built once: a step calls it for every attention kernel
            from scipy.interpolate import RegularGridInterpolator   # noqa: PLC0415
            self._grid = RegularGridInterpolator(self.axes, self.values)

    def __call__(self, *x) -> np.ndarray:
        pts = [np.clip(np.log(np.maximum(np.asarray(v, float), 1e-9)), a[0], a[-1])
               for v, a in zip(x, self.axes)]
        if self._grid is None:
            return np.interp(pts[0], self.axes[0], self.values)
        return self._grid(np.stack(np.broadcast_arrays(*pts), axis=-1))


def _grid_curve(keys: list[np.ndarray], corr: np.ndarray) -> Curve:
    """A Curve from scattered (log key..., correction) points: the grid of their distinct
    keys, each grid cell the mean correction measured there, empty cells the nearest
    measured cell's."""
    axes = tuple(np.unique(k) for k in keys)
    idx = tuple(np.searchsorted(a, k) for a, k in zip(axes, keys))
    total = np.zeros([len(a) for a in axes])
    count = np.zeros_like(total)
    np.add.at(total, idx, corr)
    np.add.at(count, idx, 1.0)
    have = count > 0
    values = np.where(have, total / np.maximum(count, 1.0), np.nan)
    if not have.all():
        filled = np.argwhere(have)
        for cell in np.argwhere(~have):
            near = filled[np.argmin(np.abs(filled - cell).sum(axis=1))]
            values[tuple(cell)] = values[tuple(near)]
    return Curve(axes, values)


def _nearest(df: pd.DataFrame, want: dict) -> pd.DataFrame:
    """The rows of `df` at the measured value of each `want` column nearest (in log) the
    wanted one, all columns together."""
    combos = df[list(want)].drop_duplicates()
    dist = sum(np.abs(np.log(combos[c].to_numpy(float)) - np.log(float(v)))
               for c, v in want.items())
    best = combos.iloc[int(np.argmin(dist))]
    mask = np.ones(len(df), dtype=bool)
    for c in want:
        mask &= (df[c] == best[c]).to_numpy()
    return df[mask]


@lru_cache(maxsize=8)
def _tables(root: str | None, system: str) -> dict[str, pd.DataFrame]:
    from ..calibration import aic_data   # noqa: PLC0415  (pandas/pyarrow only when used)
    return {
        "gemm": aic_data.gemm_table(root, system, FRAMEWORK, VERSION),
        "attention": aic_data.attention_table(root, system, FRAMEWORK, VERSION),
        "mla": aic_data.mla_table(root, system, FRAMEWORK, VERSION),
        "moe": aic_data.moe_table(root, system, FRAMEWORK, VERSION),
    }


def data_root() -> str | None:
    """RACKSIM_KERNEL_DATA, else None (the installed package)."""
    return os.environ.get(ENV) or None


def available(root: str | None = None) -> str | None:
    """None if the measured tables can be read, else why not (one sentence)."""
    from ..calibration import aic_data   # noqa: PLC0415
    try:
        aic_data.package_root(root)
    except FileNotFoundError:
        where = f"{ENV}={root} holds no aiconfigurator-core data" if root else \
            "aiconfigurator-core is not installed"
        return (f"no measured kernel data: {where} (pip install 'racksim[calibrate]', or set "
                f"{ENV} to an unpacked aiconfigurator-core wheel)")
    return None


@dataclass
class MeasuredLayer:
    """Corrections for the kernels of one layer, in the order of LayerCosts' dense table
    (a Curve, or None: analytical), for its routed experts, and what fell back."""

    system: str
    dense: list = field(default_factory=list)
    singles: list = field(default_factory=list)   # each dense kernel as a table of one
    experts: Curve | None = None
    tokens_per_copy: float = 1.0   # tokens entering the EP group per copy on a rank: EP / k
    fallback: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        if not self.fallback:
            return []
        return [f"engine.op_timing measured ({self.system}): no measured kernel for "
                f"{', '.join(self.fallback)}; their analytical time is used"]


def build(model: Model, hardware: Hardware, dense: list[kn.Kernel], table: kn.KernelTable,
          experts: list[kn.Kernel], ep: int, tp: int, root: str | None = None
          ) -> MeasuredLayer:
    """The corrections of a layer's kernels (`dense`, and `table`, their KernelTable) on
    `hardware` (SYSTEMS names it and `available` holds)."""
    from ..calibration import fit   # noqa: PLC0415
    system = SYSTEMS[hardware.name]
    t = _tables(root, system)
    params, gpu = hardware.efficiency.kernels, hardware.gpu
    out = MeasuredLayer(system=system, singles=[table.subset(i) for i in range(len(dense))])
    kv_dtype = KV_DTYPES.get(float(model.kv_bytes_per_element), "bfloat16")
    for k in dense:
        curve = None
        if k.cls == kn.GEMM and k.shape:
            curve = _gemm_curve(t["gemm"], k, params, gpu, fit)
        elif k.cls in ATTENTION_CLASSES and k.shape:
            curve = _attention_curve(t, k, model, kv_dtype, params, gpu, fit)
        if curve is None and k.cls != kn.ELEMENTWISE:
            out.fallback.append(k.name)
        out.dense.append(curve)
    arch = model.architecture
    if experts and arch is not None and arch.moe is not None:
        out.experts = _moe_curve(t["moe"], model, experts[0].precision, ep, tp, params, gpu,
                                 fit)
        out.tokens_per_copy = ep / arch.moe.top_k
        if out.experts is None:
            out.fallback.append("routed experts")
    return out


ATTENTION_CLASSES = {kn.ATTENTION: "attention", kn.ATTENTION_PREFILL: "attention_prefill",
                     kn.MLA_ATTENTION: "mla_attention", kn.MLA_PREFILL: "mla_prefill"}


def _correction(cls: str, rows: pd.DataFrame, params, gpu, fit) -> np.ndarray:
    """log(measured / analytical) per row: the analytical time is the engine's own model of
    that row's kernel (fit.predict, tested equal to kernels.py)."""
    return np.log(rows["latency_s"].to_numpy(float)) - np.log(
        fit.predict(cls, fit.shapes(cls, rows), params, gpu))


def _gemm_curve(df, k: kn.Kernel, params, gpu, fit) -> Curve | None:
    n, kk = k.shape
    for dtype in WEIGHT_DTYPES.get(k.precision, ()):
        d = df[df["dtype"] == dtype]
        if d.empty:
            continue
        rows = _nearest(d, {"n": n, "k": kk})
        return _grid_curve([np.log(rows["m"].to_numpy(float))],
                           _correction("gemm", rows, params, gpu, fit))
    return None


def _attention_curve(t, k: kn.Kernel, model: Model, kv_dtype: str, params, gpu, fit
                     ) -> Curve | None:
    cls = ATTENTION_CLASSES[k.cls]
    decode = cls in ("attention", "mla_attention")
    heads, kv_heads = k.shape
    if cls.startswith("mla"):
        d = t["mla"]
        d = d[(d["phase"] == fit.PHASE[cls]) & (d["kv_dtype"] == kv_dtype)]
        if d.empty:
            return None
        d = _nearest(d, {"heads": heads})
    else:
        d = t["attention"]
        d = d[(d["phase"] == fit.PHASE[cls]) & (d["kv_dtype"] == kv_dtype)
              & (d["window"] == 0) & (d["kernel_source"] == "torch_flow")]
        head_dim = model.architecture.attention.head_dim
        if (d["head_dim"] == head_dim).any():
            d = d[d["head_dim"] == head_dim]
        if d.empty:
            return None
        d = _nearest(d, {"heads": heads, "kv_heads": kv_heads})
    length = d["kv_len"] if decode else d["q_len"]
    return _grid_curve([np.log(d["batch"].to_numpy(float)), np.log(length.to_numpy(float))],
                       _correction(cls, d, params, gpu, fit))


def _moe_curve(df, model: Model, precision: str, ep: int, tp: int, params, gpu, fit
               ) -> Curve | None:
    arch = model.architecture
    m = arch.moe
    for dtype in WEIGHT_DTYPES.get(precision, ()):
        d = df[(df["dtype"] == dtype) & (df["distribution"] == "balanced")
               & (df["kernel_source"] == "moe_torch_flow_cutlass")
               & (df["hidden"] == arch.hidden) & (df["inter"] == m.expert_ffn_hidden)
               & (df["topk"] == m.top_k) & (df["experts"] == m.experts)
               & (df["ep"] == ep) & (df["tp"] == tp)]
        if d.empty:
            continue
        return _grid_curve([np.log(d["tokens"].to_numpy(float))],
                           _correction("grouped_gemm", d, params, gpu, fit))
    return None


def for_layer(model: Model, hardware: Hardware, dense: list[kn.Kernel],
              table: kn.KernelTable, experts: list[kn.Kernel], layout
              ) -> tuple[MeasuredLayer | None, list[str]]:
    """The layer's corrections when the data cover `hardware`, else None; and the warnings
    that say what runs analytical instead."""
    why = uncovered(hardware)
    if why is not None:
        return None, [f"engine.op_timing measured: {why}; the analytical kernel model times "
                      "this run"]
    layer = build(model, hardware, dense, table, experts, layout.expert_parallel,
                  layout.tensor_parallel, data_root())
    return layer, layer.warnings()


def uncovered(hardware: Hardware) -> str | None:
    """None when the measured tables cover `hardware`, else why not (one clause)."""
    if hardware.name not in SYSTEMS:
        return (f"no measured kernels for hardware {hardware.name!r} (measured: "
                f"{', '.join(SYSTEMS)})")
    if hardware.efficiency.kernels is None:
        return f"hardware {hardware.name!r} names no efficiency.kernels to correct"
    return available(data_root())


def dense_time(work: kn.StepWork, layer: MeasuredLayer):
    """The dense part's kernels on each GPU (as kernels.layer_time), each analytical time
    scaled by its measured correction at the step's shape: (time, compute-bound share)."""
    w = kn.StepWork(*(np.asarray(x, dtype=float) for x in work))
    total = np.zeros(len(w.tokens))
    comp = np.zeros(len(w.tokens))
    for one, curve in zip(layer.singles, layer.dense):
        t, share = kn.layer_time(w, one)
        if curve is not None:
            c = int(one.cls[0])
            if c == kn.GEMM:
                x = (w.tokens,)
            elif c in (kn.ATTENTION, kn.MLA_ATTENTION):
                x = (w.decode, w.decode_kv / np.maximum(w.decode, 1.0))
            else:   # context: P prompt tokens, Q pairs as P / L sequences of L = 2 Q / P
                length = 2.0 * w.prefill_pairs / np.maximum(w.prefill, 1.0)
                x = (w.prefill / np.maximum(length, 1.0), length)
            t = np.where(t > 0, t * np.exp(curve(*x)), 0.0)
        total += t
        comp += t * share
    return total, np.divide(comp, total, out=np.zeros_like(total), where=total > 0)
