"""Measured kernel latencies from NVIDIA's aiconfigurator-core package, as tidy tables in SI
units, each row with the kernel's analytical FLOPs and bytes (docs/kernel-data.md).

The package (PyPI `aiconfigurator-core`, Apache-2.0) ships, per GPU system, parquet tables of
single-GPU kernel latencies measured under CUDA graphs:

    <root>/systems/<system>.yaml                                    GPU peaks (mem_bw, *_tc_flops)
    <root>/systems/data/<system>/<family>/<framework>/<version>/<table>.parquet

`root` is the unpacked `aiconfigurator_core` package folder (the one holding `systems/`) or
its parent; with `root=None` the installed module is used
(`importlib.util.find_spec("aiconfigurator_core")`).

Every table function returns one row per measurement with the same leading columns

    system, framework, version, kernel_source, dtype, ..., flops, bytes, latency_s

`latency_s` is the measured time in seconds (the files hold milliseconds: CUDA-event
`elapsed_time`, or nccl-tests microseconds / 1e3). `flops` and `bytes` are the kernel's
analytical work: FLOPs of its matrix products (multiply-add = 2) and the minimal HBM traffic
(every operand read once, every result written once); each function's docstring gives the
formulas. `framework` and `version` are the folder names (`trtllm`, `sglang`, `vllm`,
`nccl`); the files' own `framework` column (always "TRTLLM" for NCCL rows) is dropped.

Version choice (`version=`): "current" (default) is the version aiconfigurator itself
serves as complete for the system and framework (`systems/query_versions.yaml`), or, if it
names none holding the table, the newest version that does; "newest" is the newest version
folder holding the table (a newer folder may hold only some shapes: trtllm 1.3.0rc23 `moe`
holds only the shapes added for new models); "all" concatenates every version; any other
string is that version. `framework=None` takes every framework present.

`roofline` adds each row's roofline time and efficiency against a system's peaks
(`system_peaks`); `efficiency_evidence` and `latency_floors` compute the evidence tables of
docs/kernel-data.md, printed by `python -m sim.calibration.aic_data [ROOT]`.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

SYSTEMS = ("h100_sxm", "h200_sxm", "b200_sxm", "b300_sxm", "gb200", "gb300")

ACT_BYTES = 2.0   # activations enter and leave every kernel as BF16

# Bytes per stored weight element, block scales included (per-element constants, exact when
# the scaled dimensions are multiples of the block):
#   fp8: per-tensor scale; fp8_block: one FP32 scale per 128 x 128 block;
#   nvfp4: one FP8 (E4M3) scale per 16 elements; mxfp4 (w4a16_mxfp4, w4a8_mxfp4_mxfp8): one
#   UE8M0 scale per 32; int4_wo: one BF16 scale per group of 128; int8_wo: per-channel scale
#   (neglected).
WEIGHT_BYTES: dict[str, float] = {
    "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0, "fp8_block": 1.0 + 4.0 / (128 * 128),
    "nvfp4": 0.5 + 1.0 / 16, "w4a16_mxfp4": 0.5 + 1.0 / 32, "w4a8_mxfp4_mxfp8": 0.5 + 1.0 / 32,
    "int4_wo": 0.5 + 2.0 / 128, "int8_wo": 1.0,
}

# KV cache / collective element sizes.
ELEMENT_BYTES: dict[str, float] = {
    "bfloat16": 2.0, "float16": 2.0, "half": 2.0, "fp8": 1.0, "int8": 1.0,
}

# DeepSeek-V3 MLA dimensions (the only MLA shape measured).
MLA_KV_LORA = 512
MLA_QK_NOPE = 128
MLA_QK_ROPE = 64
MLA_V_HEAD = 128

# nccl-tests bus factors: bytes each GPU sends (and receives) per message byte.
BUS_FACTOR = {
    "all_reduce": lambda n: 2.0 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "alltoall": lambda n: (n - 1) / n,
}

LEAD = ["system", "framework", "version", "kernel_source", "dtype"]
TAIL = ["flops", "bytes", "latency_s"]


# --------------------------------------------------------------------------- files


def package_root(root: str | Path | None = None) -> Path:
    """The `aiconfigurator_core` folder (the one holding `systems/`)."""
    if root is None:
        spec = importlib.util.find_spec("aiconfigurator_core")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "aiconfigurator_core is not installed; pass the path of an unpacked "
                "aiconfigurator-core wheel (the folder holding systems/)")
        root = next(iter(spec.submodule_search_locations))
    root = Path(root)
    for cand in (root, root / "aiconfigurator_core"):
        if (cand / "systems" / "data").is_dir():
            return cand
    raise FileNotFoundError(f"{root}: no systems/data folder here or in aiconfigurator_core/")


_VERSION = re.compile(r"^(\d+(?:\.\d+)*)(?:\.?(dev|a|b|rc|post)(\d+))?$")
_STAGE = {"dev": 0, "a": 1, "b": 2, "rc": 3, None: 4, "post": 5}


def version_key(v: str) -> tuple:
    """Sort key for version folder names: 1.3.0rc9 < 1.3.0rc10 < 1.3.0 < 1.3.0.post1."""
    m = _VERSION.match(str(v))
    if not m:
        return ((-1,), 0, 0, str(v))
    release = tuple(int(x) for x in m.group(1).split("."))
    release = release + (0,) * (4 - len(release))
    return (release, _STAGE[m.group(2)], int(m.group(3) or 0), "")


def _data(root: Path, system: str) -> Path:
    d = root / "systems" / "data" / system
    if not d.is_dir():
        have = sorted(p.name for p in (root / "systems" / "data").iterdir() if p.is_dir())
        raise FileNotFoundError(f"no data for system {system!r}; present: {', '.join(have)}")
    return d


def available_versions(root, system: str, family: str, framework: str, table: str) -> list[str]:
    """Version folders (oldest first) of `family/framework` that hold `table`.parquet."""
    d = _data(package_root(root), system) / family / framework
    if not d.is_dir():
        return []
    vs = [p.name for p in d.iterdir() if (p / f"{table}.parquet").is_file()]
    return sorted(vs, key=version_key)


def _current(root: Path, system: str, framework: str) -> str | None:
    f = root / "systems" / "query_versions.yaml"
    if not f.is_file():
        return None
    q = yaml.safe_load(f.read_text()) or {}
    slot = ((q.get("overrides") or {}).get(system) or {}).get(framework) \
        or (q.get("defaults") or {}).get(framework) or {}
    return slot.get("current")


def _select(root: Path, system: str, framework: str, family: str, table: str,
            version: str | None) -> list[str]:
    have = available_versions(root, system, family, framework, table)
    if not have:
        return []
    if version in (None, "current"):
        cur = _current(root, system, framework)
        return [cur] if cur in have else [have[-1]]
    if version == "newest":
        return [have[-1]]
    if version == "all":
        return have
    return [version] if version in have else []


def _frameworks(root: Path, system: str, family: str, framework: str | None) -> list[str]:
    if framework is not None:
        return [framework]
    d = _data(root, system) / family
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def _systems(root: Path, system) -> list[str]:
    if system is None:
        return [s for s in SYSTEMS if (root / "systems" / "data" / s).is_dir()]
    return [system] if isinstance(system, str) else list(system)


def read_raw(root, system, family: str, tables: Iterable[str], framework: str | None = None,
             version: str | None = None) -> pd.DataFrame:
    """The measurement files of one family, concatenated, as stored (latency in ms), with
    `system`, `framework`, `version` set from the folder names and `table` naming the file."""
    root = package_root(root)
    parts = []
    for s in _systems(root, system):
        for fw in _frameworks(root, s, family, framework):
            for t in tables:
                for v in _select(root, s, fw, family, t, version):
                    df = pd.read_parquet(_data(root, s) / family / fw / v / f"{t}.parquet")
                    df = df.drop(columns=[c for c in ("framework", "version", "system")
                                          if c in df.columns])
                    df.insert(0, "table", t)
                    df.insert(0, "version", v)
                    df.insert(0, "framework", fw)
                    df.insert(0, "system", s)
                    parts.append(df)
    if not parts:
        raise FileNotFoundError(
            f"no {family} tables {list(tables)} for system={system!r} framework={framework!r} "
            f"version={version!r} under {root}")
    out = pd.concat(parts, ignore_index=True)
    for c in out.columns:
        if out[c].dtype != object and pd.api.types.is_string_dtype(out[c]):
            out[c] = out[c].astype(object)
    return out


def system_peaks(root, system: str) -> dict[str, float]:
    """Peaks of one system from systems/<system>.yaml, SI: `mem_bw` (bytes/s), `mem_capacity`
    (bytes), and dense tensor-core FLOP/s per precision (`bfloat16`, `fp8`, `int8`, `fp4`
    when listed), plus `intra_node_bw` (bytes/s per GPU, one direction)."""
    root = package_root(root)
    y = yaml.safe_load((root / "systems" / f"{system}.yaml").read_text())
    gpu, node = y["gpu"], y.get("node") or {}
    out = {"mem_bw": float(gpu["mem_bw"]), "mem_capacity": float(gpu["mem_capacity"])}
    for key, name in (("bfloat16_tc_flops", "bfloat16"), ("fp8_tc_flops", "fp8"),
                      ("int8_tc_flops", "int8"), ("fp4_tc_flops", "fp4")):
        if key in gpu:
            out[name] = float(gpu[key])
    if "intra_node_bw" in node:
        out["intra_node_bw"] = float(node["intra_node_bw"])
    return out


def _finish(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    df["latency_s"] = df["latency"].astype(float) * 1e-3
    return df[LEAD + cols + TAIL].reset_index(drop=True)


def _weight_bytes(dtypes: pd.Series) -> np.ndarray:
    unknown = set(dtypes.unique()) - WEIGHT_BYTES.keys()
    if unknown:
        raise ValueError(f"unknown weight dtype(s) {sorted(unknown)}; add them to WEIGHT_BYTES")
    return dtypes.map(WEIGHT_BYTES).to_numpy(float)


def _element_bytes(dtypes: pd.Series) -> np.ndarray:
    unknown = set(dtypes.unique()) - ELEMENT_BYTES.keys()
    if unknown:
        raise ValueError(f"unknown element dtype(s) {sorted(unknown)}; add them to ELEMENT_BYTES")
    return dtypes.map(ELEMENT_BYTES).to_numpy(float)


# --------------------------------------------------------------------------- GEMM


def gemm_table(root, system, framework: str | None = None,
               version: str | None = None) -> pd.DataFrame:
    """Dense GEMMs y[m, n] = x[m, k] @ W[n, k]^T (one `Linear` forward: for quantized dtypes
    the activation quantization kernel is inside the measured time).

    Columns: system, framework, version, kernel_source, dtype (bfloat16, fp8 = per-tensor FP8,
    fp8_block = 128 x 128 block-scaled FP8, nvfp4; sglang 0.5.6 also int8_wo), m, n, k,
    flops, bytes, latency_s.

        flops = 2 m n k
        bytes = 2 m k            (x, BF16)
              + w(dtype) n k     (W, WEIGHT_BYTES: 2, 1, 1 + 4/128^2, 0.5 + 1/16)
              + 2 m n            (y, BF16)
    """
    raw = read_raw(root, system, "gemm", ["gemm_perf"], framework, version)
    df = raw.rename(columns={"gemm_dtype": "dtype"})
    m, n, k = (df[c].to_numpy(float) for c in ("m", "n", "k"))
    df["flops"] = 2.0 * m * n * k
    df["bytes"] = ACT_BYTES * m * k + _weight_bytes(df["dtype"]) * n * k + ACT_BYTES * m * n
    return _finish(df, ["m", "n", "k"])


# --------------------------------------------------------------------------- attention


def causal_pairs(q_len, kv_len, window=0):
    """(query, key) pairs a causal attention computes per sequence and head: the q_len
    queries are the last q_len of kv_len positions; the query at position p (0-based) sees
    min(p + 1, W) keys, W = window (0 = unlimited). Closed form: S(kv_len) - S(kv_len - q_len)
    with S(x) = x (x + 1) / 2 for x <= W, else W (W + 1) / 2 + (x - W) W."""
    q = np.asarray(q_len, dtype=float)
    kv = np.asarray(kv_len, dtype=float)
    w = np.asarray(window, dtype=float)
    w = np.where(w > 0, w, np.inf)

    def s(x):
        wf = np.where(np.isfinite(w), w, 0.0)
        return np.where(x <= w, x * (x + 1) / 2, wf * (wf + 1) / 2 + (x - wf) * wf)

    return s(kv) - s(kv - q)


def keys_touched(q_len, kv_len, window=0):
    """Distinct key positions the q_len last queries see: min(kv_len, q_len + W - 1)."""
    q = np.asarray(q_len, dtype=float)
    kv = np.asarray(kv_len, dtype=float)
    w = np.asarray(window, dtype=float)
    return np.where(w > 0, np.minimum(kv, q + w - 1), kv)


def attention_table(root, system, framework: str | None = None, version: str | None = None,
                    phase: str | None = None) -> pd.DataFrame:
    """Multi-head / grouped-query attention, one layer (TRT-LLM: the attention op, i.e. QKV
    preprocessing with RoPE and KV-cache append, then FMHA (context) or XQA/MMHA decode).

    Columns: system, framework, version, kernel_source, dtype (attention compute dtype:
    bfloat16, or fp8 context FMHA), phase ("context" | "generation"), kv_dtype (KV cache:
    bfloat16 | fp8), batch, q_len, kv_len, heads, kv_heads, head_dim, window, flops, bytes,
    latency_s.

    Shapes: q_len = isl, kv_len = isl + step (context: step = 0, q_len = kv_len = prompt;
    generation: isl = 1 new token after step cached ones). window = sliding window (0 =
    none). With P = causal_pairs(q_len, kv_len, window) and K = keys_touched(...):

        flops = 4 batch heads head_dim P                  (QK^T and PV, 2 d each per pair)
        bytes = batch q_len heads head_dim (2 + o)         (Q in BF16, O out: o = 1 if dtype
                                                             is fp8 else 2)
              + batch K 2 kv_heads head_dim kv             (K and V read once, kv = KV bytes)
              + batch q_len 2 kv_heads head_dim kv         (new K and V written to the cache)
    """
    tables = {"context": ["context_attention_perf"], "generation": ["generation_attention_perf"],
              None: ["context_attention_perf", "generation_attention_perf"]}[phase]
    raw = read_raw(root, system, "attention", tables, framework, version)
    df = raw.rename(columns={"attn_dtype": "dtype", "kv_cache_dtype": "kv_dtype",
                             "batch_size": "batch", "num_heads": "heads",
                             "num_key_value_heads": "kv_heads", "window_size": "window"})
    df["phase"] = np.where(df["table"].str.startswith("context"), "context", "generation")
    df["q_len"] = df["isl"]
    df["kv_len"] = df["isl"] + df["step"]
    b, h, hkv, d = (df[c].to_numpy(float) for c in ("batch", "heads", "kv_heads", "head_dim"))
    q, kv, w = (df[c].to_numpy(float) for c in ("q_len", "kv_len", "window"))
    kvb = _element_bytes(df["kv_dtype"])
    ob = np.where(df["dtype"].to_numpy() == "fp8", 1.0, ACT_BYTES)
    df["flops"] = 4.0 * b * h * d * causal_pairs(q, kv, w)
    df["bytes"] = (b * q * h * d * (ACT_BYTES + ob)
                   + b * keys_touched(q, kv, w) * 2 * hkv * d * kvb
                   + b * q * 2 * hkv * d * kvb)
    return _finish(df, ["phase", "kv_dtype", "batch", "q_len", "kv_len", "heads", "kv_heads",
                        "head_dim", "window"])


# --------------------------------------------------------------------------- MLA


def mla_table(root, system, framework: str | None = None, version: str | None = None,
              phase: str | None = None) -> pd.DataFrame:
    """DeepSeek-V3 multi-head latent attention kernels (the attention op alone, without the
    projection GEMMs; kv_lora_rank 512, qk_nope 128, qk_rope 64, v_head 128).

    Columns: system, framework, version, kernel_source, dtype (mla_dtype), phase, kv_dtype,
    batch, q_len, kv_len, heads (heads on this GPU), tp_size (the model's 128 or 64 heads
    split tp_size ways: heads x tp_size = 64, or 128 at tp 1), flops, bytes, latency_s.

    q_len = isl, kv_len = isl + step as for attention, causal, no window; P = causal_pairs.

    context (K and V up-projected per head: q/k dim 192, v dim 128, all BF16 from the input):
        flops = batch heads P (2 * 192 + 2 * 128)
        bytes = 2 batch heads (q_len 192 + kv_len (192 + 128) + q_len 128)
              + batch q_len 576 kv                   (latent cache append, kv = KV bytes)
    generation (weights absorbed: one shared latent head of 576 = 512 + 64, values 512):
        flops = batch heads P (2 * 576 + 2 * 512)
        bytes = batch kv_len 576 kv                  (latent cache read once for all heads)
              + 2 batch q_len heads (576 + 512)      (Q in, O out, BF16)
              + batch q_len 576 kv                   (latent cache append)
    """
    tables = {"context": ["context_mla_perf"], "generation": ["generation_mla_perf"],
              None: ["context_mla_perf", "generation_mla_perf"]}[phase]
    raw = read_raw(root, system, "mla", tables, framework, version)
    df = raw.rename(columns={"mla_dtype": "dtype", "kv_cache_dtype": "kv_dtype",
                             "batch_size": "batch", "num_heads": "heads"})
    df["phase"] = np.where(df["table"].str.startswith("context"), "context", "generation")
    df["q_len"] = df["isl"]
    df["kv_len"] = df["isl"] + df["step"]
    b, h, q, kv = (df[c].to_numpy(float) for c in ("batch", "heads", "q_len", "kv_len"))
    kvb = _element_bytes(df["kv_dtype"])
    pairs = causal_pairs(q, kv)
    latent = MLA_KV_LORA + MLA_QK_ROPE
    qk = MLA_QK_NOPE + MLA_QK_ROPE
    ctx = df["phase"].to_numpy() == "context"
    df["flops"] = np.where(ctx, b * h * pairs * (2 * qk + 2 * MLA_V_HEAD),
                           b * h * pairs * (2 * latent + 2 * MLA_KV_LORA))
    df["bytes"] = np.where(
        ctx,
        ACT_BYTES * b * h * (q * qk + kv * (qk + MLA_V_HEAD) + q * MLA_V_HEAD),
        b * kv * latent * kvb + ACT_BYTES * b * q * h * (latent + MLA_KV_LORA),
    ) + b * q * latent * kvb
    return _finish(df, ["phase", "kv_dtype", "batch", "q_len", "kv_len", "heads", "tp_size"])


# --------------------------------------------------------------------------- MoE


@lru_cache(maxsize=None)
def balanced_local_load(tokens: int, experts: int, topk: int, ep: int) -> tuple[int, int]:
    """(token copies, distinct experts hit) on EP rank 0 (experts [0, experts / ep)) under
    the collector's `balanced_logits` routing: token t takes experts
    (t + j s) mod E for j < topk, s = ceil(E / topk), when t >= s tokens; with fewer tokens,
    floor((t s / T + j s) mod E) (float32, as torch computes it)."""
    s = math.ceil(experts / topk)
    t = np.arange(tokens, dtype=np.int64)[:, None]
    j = np.arange(topk, dtype=np.int64)[None, :]
    if tokens >= s:
        sel = (t + j * s) % experts
    else:
        x = (t * s).astype(np.float32) / np.float32(tokens) + (j * s).astype(np.float32)
        sel = np.remainder(x, np.float32(experts)).astype(np.int64)
    local = sel[sel < experts // ep]
    return int(local.size), int(np.unique(local).size)


def moe_table(root, system, framework: str | None = None,
              version: str | None = None) -> pd.DataFrame:
    """Fused MoE layer on one GPU (routing, permute, grouped GEMM FC1, activation, grouped
    GEMM FC2, unpermute and reduce; no all-to-all). The GPU holds experts [0, E / ep) of E,
    each with its inter / tp slice; all `tokens` tokens enter and are routed over all E.

    Columns: system, framework, version, kernel_source, dtype (weight format: bfloat16, fp8,
    fp8_block, nvfp4, w4a16_mxfp4, w4a8_mxfp4_mxfp8, int4_wo), distribution (balanced |
    power_law_<alpha>), tokens, hidden, inter, topk, experts, tp, ep, local_experts (E / ep),
    inter_local (inter / tp), gated, copies (token copies routed to this GPU), active (its
    experts hit), flops, bytes, latency_s.

    copies and active follow the balanced routing exactly (balanced_local_load). power_law
    rows put the hottest experts on the measured GPU (random draws, not reproducible), so for
    them the columns are the balanced figures, a lower bound on the work measured. gated is
    False for kernel_source moe_torch_flow_nongated (relu2 MLP, FC1 of width inter_local),
    else SwiGLU (FC1 of width 2 inter_local). With g = 3 if gated else 2:

        flops = 2 copies hidden inter_local g
        bytes = active hidden inter_local g w(dtype)    (each hit expert's weights, once)
              + 2 tokens hidden 2                       (BF16 input read, output written)
    """
    raw = read_raw(root, system, "moe", ["moe_perf"], framework, version)
    df = raw.rename(columns={"moe_dtype": "dtype", "num_tokens": "tokens",
                             "hidden_size": "hidden", "inter_size": "inter",
                             "num_experts": "experts", "moe_tp_size": "tp", "moe_ep_size": "ep"})
    df["local_experts"] = df["experts"] // df["ep"]
    df["inter_local"] = df["inter"] // df["tp"]
    df["gated"] = ~df["kernel_source"].astype(str).str.endswith("nongated")
    keys = df[["tokens", "experts", "topk", "ep"]].drop_duplicates()
    load = {tuple(r): balanced_local_load(*map(int, r)) for r in keys.itertuples(index=False)}
    both = [load[r] for r in df[["tokens", "experts", "topk", "ep"]].itertuples(index=False)]
    df["copies"] = np.array([c for c, _ in both], dtype=np.int64)
    df["active"] = np.array([a for _, a in both], dtype=np.int64)
    g = np.where(df["gated"].to_numpy(), 3.0, 2.0)
    hid, il, t = (df[c].to_numpy(float) for c in ("hidden", "inter_local", "tokens"))
    df["flops"] = 2.0 * df["copies"].to_numpy(float) * hid * il * g
    df["bytes"] = (df["active"].to_numpy(float) * hid * il * g * _weight_bytes(df["dtype"])
                   + 2.0 * t * hid * ACT_BYTES)
    return _finish(df, ["distribution", "tokens", "hidden", "inter", "topk", "experts", "tp",
                        "ep", "local_experts", "inter_local", "gated", "copies", "active"])


# --------------------------------------------------------------------------- collectives


def comm_table(root, system, framework: str | None = None,
               version: str | None = None) -> pd.DataFrame:
    """Collectives inside one node: NCCL (nccl-tests binaries, folder `comm/nccl`: all_reduce,
    all_gather, reduce_scatter, alltoall) and the frameworks' custom all-reduce kernels
    (`comm/<framework>/*/custom_allreduce_perf`, all_reduce only, BF16).

    Columns: system, framework, version, kernel_source, dtype (half | int8 | bfloat16), op,
    num_gpus, elements (the file's message_size: elements, not bytes; for all_gather and
    reduce_scatter the whole gathered buffer), message_bytes (elements x element bytes),
    flops, bytes, latency_s.

        bytes = message_bytes x bus factor   (per GPU sent, as nccl-tests' busbw:
                                              all_reduce 2 (n - 1) / n, the others (n - 1) / n)
        flops = elements (n - 1) / n for all_reduce and reduce_scatter (the additions), else 0

    so bytes / latency_s is nccl-tests' bus bandwidth.
    """
    parts = []
    if framework in (None, "nccl"):          # nccl-tests rows live only under comm/nccl
        parts.append(_maybe(root, system, "comm", "nccl_perf", "nccl", version))
    if framework != "nccl":
        parts.append(_maybe(root, system, "comm", "custom_allreduce_perf", framework, version))
    parts = [x for x in parts if x is not None]
    if not parts:
        raise FileNotFoundError(f"no collective tables for system={system!r} "
                                f"framework={framework!r} version={version!r}")
    raw = pd.concat(parts, ignore_index=True)
    dtype = raw["nccl_dtype"] if "nccl_dtype" in raw else pd.Series(np.nan, index=raw.index)
    if "allreduce_dtype" in raw:
        dtype = dtype.fillna(raw["allreduce_dtype"])
    df = raw.assign(dtype=dtype).rename(columns={"op_name": "op", "message_size": "elements"})
    n = df["num_gpus"].to_numpy(float)
    unknown = set(df["op"].unique()) - BUS_FACTOR.keys()
    if unknown:
        raise ValueError(f"unknown collective(s) {sorted(unknown)}")
    factor = np.array([BUS_FACTOR[o](k) for o, k in zip(df["op"], n)])
    df["message_bytes"] = df["elements"].to_numpy(float) * _element_bytes(df["dtype"])
    df["bytes"] = df["message_bytes"] * factor
    reduces = df["op"].isin(["all_reduce", "reduce_scatter"]).to_numpy()
    df["flops"] = np.where(reduces, df["elements"].to_numpy(float) * (n - 1) / n, 0.0)
    return _finish(df, ["op", "num_gpus", "elements", "message_bytes"])


def _maybe(root, system, family, table, framework, version):
    try:
        return read_raw(root, system, family, [table], framework, version)
    except FileNotFoundError:
        return None


def allreduce_table(root, system, framework: str | None = None,
                    version: str | None = None) -> pd.DataFrame:
    """The all_reduce rows of `comm_table` (NCCL and the custom all-reduce kernels)."""
    df = comm_table(root, system, framework, version)
    return df[df["op"] == "all_reduce"].reset_index(drop=True)


# --------------------------------------------------------------------------- evidence

# Tensor-core peak each dtype computes at (systems/<system>.yaml key, see system_peaks):
# weight-only and mixed formats run their matrix products at the activation precision.
COMPUTE_PEAK: dict[str, str] = {
    "bfloat16": "bfloat16", "float16": "bfloat16", "fp8": "fp8", "fp8_block": "fp8",
    "nvfp4": "fp4", "w4a16_mxfp4": "bfloat16", "w4a8_mxfp4_mxfp8": "fp8",
    "int4_wo": "bfloat16", "int8_wo": "bfloat16",
}


def roofline(df: pd.DataFrame, peaks: dict[str, float]) -> pd.DataFrame:
    """`df` (one system's table) with the roofline of each row: t_compute = flops / peak at
    the dtype's precision (COMPUTE_PEAK), t_memory = bytes / HBM bandwidth, bound (the larger),
    and efficiency = max(t_compute, t_memory) / latency_s (1 = at the roofline)."""
    peak = df["dtype"].map(lambda d: peaks.get(COMPUTE_PEAK.get(d, ""), np.nan)).astype(float)
    out = df.copy()
    out["t_compute"] = df["flops"] / peak
    out["t_memory"] = df["bytes"] / peaks["mem_bw"]
    out["bound"] = np.where(out["t_compute"] >= out["t_memory"], "compute", "memory")
    out["efficiency"] = np.maximum(out["t_compute"], out["t_memory"]) / df["latency_s"]
    return out


def _pick(df: pd.DataFrame, **eq) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for k, v in eq.items():
        mask &= (df[k] == v).to_numpy()
    return df[mask]


def _row(system, regime, shape, r, peaks, kind="roofline"):
    """One evidence row from one measured row `r` (with roofline columns)."""
    lat = float(r["latency_s"])
    if kind == "bus":
        achieved, peak, eff, bound = (r["bytes"] / lat / 1e12, peaks["intra_node_bw"] / 1e12,
                                      r["bytes"] / lat / peaks["intra_node_bw"], "link")
    elif r["bound"] == "compute":
        p = peaks[COMPUTE_PEAK[r["dtype"]]]
        achieved, peak, eff, bound = r["flops"] / lat / 1e12, p / 1e12, r["efficiency"], "compute"
    else:
        achieved, peak, eff, bound = (r["bytes"] / lat / 1e12, peaks["mem_bw"] / 1e12,
                                      r["efficiency"], "memory")
    return {"system": system, "regime": regime, "dtype": r["dtype"], "shape": shape,
            "latency_us": lat * 1e6, "bound": bound, "achieved": achieved, "peak": peak,
            "efficiency": eff}


def efficiency_evidence(root=None, systems=None, framework: str = "trtllm") -> pd.DataFrame:
    """The regimes of docs/kernel-data.md, per system (`framework`'s current version; NCCL's
    newest): one row per measured point with latency_us, bound, achieved (TFLOP/s when
    compute bound, TB/s otherwise), peak (same unit) and efficiency = roofline time /
    measured time (for collectives: bus bandwidth / intra_node_bw). Points a system lacks
    are left out.

    gemm_compute: m = n = k = 8192, each dtype.  gemm_decode: m = 1 and 16 at n = k = 8192,
    16384 and the largest n k measured.  attn_decode / attn_context: 32 query heads, 8 KV
    heads, head_dim 128, no window, the main backend (the kernel_source with most rows).  mla_decode / mla_context: 128 heads on the GPU.
    moe: DeepSeek-V3 experts (hidden 7168, inter 2048, 256 experts, top 8), tp 1, ep 8,
    balanced routing.  allreduce: all_reduce on the most GPUs measured (NCCL BF16/FP16 and
    the framework's custom kernel)."""
    root = package_root(root)
    rows = []
    for s in _systems(root, systems):
        peaks = system_peaks(root, s)
        g = roofline(gemm_table(root, s, framework), peaks)
        for d in g["dtype"].unique():
            for r in _pick(g, dtype=d, m=8192, n=8192, k=8192).to_dict("records"):
                rows.append(_row(s, "gemm_compute", "m=n=k=8192", r, peaks))
            for m in (1, 16):
                x = _pick(g, dtype=d, m=m)
                if x.empty:
                    continue
                big = x.loc[(x["n"] * x["k"]).idxmax()]
                largest = (int(big["n"]), int(big["k"]))
                for n, k in dict.fromkeys(((8192, 8192), (16384, 16384), largest)):
                    for r in _pick(x, n=n, k=k).to_dict("records")[:1]:
                        size = "largest" if (n, k) == largest else ""
                        rows.append(_row(s, "gemm_decode", f"m={m} n={n} k={k} {size}".strip(),
                                         r, peaks))
        a = roofline(attention_table(root, s, framework), peaks)
        a = a[(a["heads"] == 32) & (a["kv_heads"] == 8) & (a["head_dim"] == 128)
              & (a["window"] == 0) & (a["kernel_source"] == a["kernel_source"].mode()[0])]
        for kvd in ("bfloat16", "fp8"):
            for b, kv in ((1, 16384), (8, 4096), (8, 32768), (64, 8192), (256, 1024),
                          (1024, 128)):
                for r in _pick(a, phase="generation", kv_dtype=kvd, batch=b,
                               kv_len=kv).to_dict("records"):
                    rows.append(_row(s, "attn_decode", f"kv={kvd} b={b} ctx={kv}", r, peaks))
        for d, kvd in (("bfloat16", "bfloat16"), ("fp8", "fp8")):
            for b, q in ((1, 8192), (16, 1024)):
                for r in _pick(a, phase="context", dtype=d, kv_dtype=kvd, batch=b,
                               q_len=q).to_dict("records"):
                    rows.append(_row(s, "attn_context", f"kv={kvd} b={b} isl={q}", r, peaks))
        ml = roofline(mla_table(root, s, framework), peaks)
        for kvd in ("bfloat16", "fp8"):
            for b, kv in ((1, 16384), (64, 4096), (256, 4096)):
                for r in _pick(ml, phase="generation", heads=128, kv_dtype=kvd, batch=b,
                               kv_len=kv).to_dict("records"):
                    rows.append(_row(s, "mla_decode", f"kv={kvd} b={b} ctx={kv}", r, peaks))
            for r in _pick(ml, phase="context", heads=128, kv_dtype=kvd, batch=1,
                           q_len=8192).to_dict("records"):
                rows.append(_row(s, "mla_context", f"kv={kvd} b=1 isl=8192", r, peaks))
        mo = roofline(moe_table(root, s, framework), peaks)
        mo = _pick(mo, hidden=7168, inter=2048, experts=256, topk=8, tp=1, ep=8,
                   distribution="balanced")
        for (d, ks), x in mo.groupby(["dtype", "kernel_source"]):
            if ks.endswith("min_latency"):
                continue
            for t in (1, 16, 128, 1024, 8192):
                for r in _pick(x, tokens=t).to_dict("records"):
                    shape = (f"T={t} per-expert={r['copies'] / max(r['active'], 1):.3g} "
                             f"({ks})")
                    rows.append(_row(s, "moe", shape, r, peaks))
        c = comm_table(root, s)
        c = c[c["op"] == "all_reduce"]
        for fw, dt in (("nccl", "half"), (framework, "bfloat16")):
            x = _pick(c, framework=fw, dtype=dt)
            if x.empty:
                continue
            n = int(x["num_gpus"].max())
            for e in (2 ** 18, 2 ** 28):
                for r in _pick(x, num_gpus=n, elements=e).to_dict("records")[:1]:
                    rows.append(_row(s, "allreduce",
                                     f"{fw} n={n} {r['message_bytes'] / 2 ** 20:g} MiB", r,
                                     peaks, kind="bus"))
    return pd.DataFrame(rows)


def latency_floors(root=None, systems=None, framework: str = "trtllm") -> pd.DataFrame:
    """The smallest latency measured per system and kernel family (and per dtype or
    collective): the per-kernel fixed cost visible in tiny shapes. Columns: system, family,
    kind (dtype, phase and KV dtype, kernel source, or framework, collective and GPUs),
    latency_us, shape (of the fastest row)."""
    root = package_root(root)
    rows = []

    def add(s, family, df, by, shape_cols):
        for key, x in df.groupby(by):
            r = x.loc[x["latency_s"].idxmin()]
            rows.append({"system": s, "family": family,
                         "kind": key if isinstance(key, str) else " ".join(map(str, key)),
                         "latency_us": float(r["latency_s"]) * 1e6,
                         "shape": " ".join(f"{c}={r[c]}" for c in shape_cols)})

    for s in _systems(root, systems):
        add(s, "gemm", gemm_table(root, s, framework), "dtype", ["m", "n", "k"])
        a = attention_table(root, s, framework)
        add(s, "attention", a, ["phase", "kv_dtype"],
            ["batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim"])
        add(s, "mla", mla_table(root, s, framework), ["phase", "kv_dtype"],
            ["batch", "q_len", "kv_len", "heads"])
        mo = moe_table(root, s, framework)
        add(s, "moe", mo, ["dtype", "kernel_source"], ["tokens", "hidden", "inter", "experts",
                                                       "topk", "tp", "ep"])
        c = comm_table(root, s)
        c = c[c["framework"].isin(["nccl", framework])]
        add(s, "comm", c, ["framework", "op", "num_gpus"], ["elements", "dtype"])
    return pd.DataFrame(rows)


def _markdown(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [("" if math.isnan(v) else f"{v:.3g}") if isinstance(v, float)
                 else ("" if v is None else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """`python -m sim.calibration.aic_data [ROOT]`: the evidence and floor tables of
    docs/kernel-data.md as markdown (cells: efficiency, then the measured latency in us)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    root = package_root(args[0] if args else None)
    ev = efficiency_evidence(root)
    ev["cell"] = [f"{e:.3f} {b[0]} ({t:.0f})" if t >= 100 else f"{e:.3f} {b[0]} ({t:.3g})"
                  for e, b, t in zip(ev["efficiency"], ev["bound"], ev["latency_us"])]
    order = [s for s in SYSTEMS if s in set(ev["system"])]
    for regime, x in ev.groupby("regime", sort=False):
        piv = x.pivot_table(index=["dtype", "shape"], columns="system", values="cell",
                            aggfunc="first", sort=False)
        print(f"\n### {regime}: efficiency, bound (c compute, m memory, l link), "
              "latency in us\n")
        print(_markdown(piv.reindex(columns=[c for c in order if c in piv.columns])
                        .reset_index().fillna("")))
    fl = latency_floors(root)
    piv = fl.pivot_table(index=["family", "kind"], columns="system", values="latency_us",
                         sort=False)
    print("\n### floors: smallest latency measured (us)\n")
    print(_markdown(piv.reindex(columns=[c for c in order if c in piv.columns]).reset_index()))


if __name__ == "__main__":
    main()
