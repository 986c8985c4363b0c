"""sim.calibration.aic_data on a tiny fake aiconfigurator-core package: units (ms -> s),
the version choice, and every FLOP / byte formula against its closed form."""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sim.calibration import aic_data as A

SYS = "h100_sxm"
H100_YAML = """\
data_dir: data/h100_sxm
gpu:
  mem_bw: 3350000000000
  mem_capacity: 85899345920
  bfloat16_tc_flops: 989000000000000
  int8_tc_flops: 1978000000000000
  fp8_tc_flops: 1978000000000000
node:
  num_gpus_per_node: 8
  intra_node_bw: 450000000000
"""
QUERY_VERSIONS = """\
schema_version: 1
defaults:
  trtllm: {current: "1.3.0rc20", previous: null}
  vllm: {current: "0.24.0", previous: null}
"""


def _meta(fw: str, ver: str, device: str = "NVIDIA H100 80GB HBM3") -> dict:
    return {"framework": fw.upper(), "version": ver, "device": device}


def _write(root, family, fw, ver, table, rows, meta=True):
    d = root / "systems" / "data" / SYS / family / fw / ver
    d.mkdir(parents=True, exist_ok=True)
    if meta:
        rows = [{**_meta(fw, ver), **r} for r in rows]
    pd.DataFrame(rows).to_parquet(d / f"{table}.parquet", index=False)


def _gemm(dtype, m, n, k, ms):
    return {"op_name": "gemm", "kernel_source": "torch_flow", "gemm_dtype": dtype,
            "m": m, "n": n, "k": k, "latency": ms}


def _attn(op, b, isl, step, h, hkv, d, window, dtype, kv, ms, ks="torch_flow"):
    return {"op_name": op, "kernel_source": ks, "batch_size": b, "isl": isl, "num_heads": h,
            "num_key_value_heads": hkv, "head_dim": d, "window_size": window, "beam_width": 1,
            "attn_dtype": dtype, "kv_cache_dtype": kv, "step": step, "latency": ms}


def _mla(op, b, isl, step, heads, tp, kv, ms):
    return {"op_name": op, "kernel_source": "default", "mla_dtype": "bfloat16",
            "kv_cache_dtype": kv, "num_heads": heads, "batch_size": b, "isl": isl,
            "tp_size": tp, "step": step, "latency": ms}


def _moe(dtype, tokens, hidden, inter, topk, experts, tp, ep, dist, ms,
         ks="moe_torch_flow_cutlass"):
    return {"op_name": "moe", "kernel_source": ks, "moe_dtype": dtype, "num_tokens": tokens,
            "hidden_size": hidden, "inter_size": inter, "topk": topk, "num_experts": experts,
            "moe_tp_size": tp, "moe_ep_size": ep, "distribution": dist, "latency": ms}


def _nccl(op, dtype, n, size, ms):
    return {"op_name": op, "kernel_source": "NCCL", "nccl_dtype": dtype, "num_gpus": n,
            "message_size": size, "latency": ms}


@pytest.fixture
def pkg(tmp_path):
    """An unpacked-wheel layout: tmp_path/aiconfigurator_core/systems/..."""
    root = tmp_path / "aiconfigurator_core"
    (root / "systems").mkdir(parents=True)
    (root / "systems" / f"{SYS}.yaml").write_text(H100_YAML)
    (root / "systems" / "query_versions.yaml").write_text(QUERY_VERSIONS)

    _write(root, "gemm", "trtllm", "1.3.0rc20", "gemm_perf", [
        _gemm("bfloat16", 8192, 8192, 8192, 1.4),
        _gemm("bfloat16", 1, 8192, 8192, 0.05),
        _gemm("fp8", 16, 4096, 2048, 0.02),
        _gemm("fp8_block", 3, 1536, 7168, 0.01),
        _gemm("bfloat16", 1, 32, 32, 0.0025),
    ])
    _write(root, "gemm", "trtllm", "1.3.0rc9", "gemm_perf", [_gemm("bfloat16", 1, 32, 32, 0.003)])
    rc23 = root / "systems" / "data" / SYS / "gemm" / "trtllm" / "1.3.0rc23"
    rc23.mkdir(parents=True)
    (rc23 / "reuse.yaml").write_text("schema_version: 1\nreuse: []\n")
    _write(root, "gemm", "vllm", "0.24.0", "gemm_perf", [_gemm("nvfp4", 2, 256, 512, 0.007)])

    _write(root, "attention", "trtllm", "1.3.0rc20", "context_attention_perf", [
        _attn("context_attention", 2, 1000, 0, 8, 2, 128, 0, "bfloat16", "bfloat16", 0.5),
        _attn("context_attention", 1, 10, 0, 4, 4, 64, 4, "fp8", "fp8", 0.02),
        _attn("context_attention", 1, 8192, 0, 32, 8, 128, 0, "bfloat16", "bfloat16", 1.08),
    ])
    _write(root, "attention", "trtllm", "1.3.0rc20", "generation_attention_perf", [
        _attn("generation_attention", 8, 1, 4095, 32, 8, 128, 0, "bfloat16", "fp8", 0.0357),
        _attn("generation_attention", 4, 1, 4095, 16, 1, 64, 128, "bfloat16", "bfloat16", 0.01),
    ])
    _write(root, "mla", "trtllm", "1.3.0rc20", "context_mla_perf", [
        _mla("mla_context", 2, 512, 0, 16, 4, "bfloat16", 0.1)])
    _write(root, "mla", "trtllm", "1.3.0rc20", "generation_mla_perf", [
        _mla("mla_generation", 64, 1, 4095, 128, 1, "fp8", 0.122)])

    _write(root, "moe", "trtllm", "1.3.0rc20", "moe_perf", [
        _moe("fp8_block", 128, 7168, 2048, 8, 256, 1, 8, "balanced", 0.5),
        _moe("nvfp4", 16, 4096, 1536, 8, 128, 2, 4, "power_law_1.2", 0.05),
        _moe("bfloat16", 1, 2688, 1856, 6, 128, 1, 1, "balanced", 0.03,
             ks="moe_torch_flow_nongated"),
    ])
    _write(root, "moe", "trtllm", "1.3.0rc23", "moe_perf", [
        _moe("fp8", 4, 1024, 2688, 22, 512, 2, 128, "balanced", 0.04)])

    _write(root, "comm", "nccl", "2.29.2", "nccl_perf", [
        _nccl("all_reduce", "half", 8, 2 ** 28, 2.111),
        _nccl("all_gather", "int8", 4, 1024, 0.007),
        _nccl("alltoall", "half", 2, 256, 0.006),
        _nccl("reduce_scatter", "half", 8, 2 ** 20, 0.05),
    ])
    # legacy layout: no framework/version/device columns
    _write(root, "comm", "nccl", "2.23", "nccl_perf",
           [_nccl("all_gather", "half", 2, 1024, 0.005)], meta=False)
    _write(root, "comm", "trtllm", "1.3.0rc20", "custom_allreduce_perf", [{
        "op_name": "all_reduce", "kernel_source": "TRTLLM", "allreduce_dtype": "bfloat16",
        "num_gpus": 8, "message_size": 4096, "latency": 0.0035, "implementation": "trtllm"}])
    # NCCL rows stored under a framework folder are not read
    _write(root, "comm", "trtllm", "1.3.0rc10", "nccl_perf",
           [_nccl("all_reduce", "half", 8, 256, 0.025)])
    return root


# --------------------------------------------------------------------------- files


def test_package_root_accepts_package_or_parent(pkg):
    assert A.package_root(pkg) == pkg
    assert A.package_root(pkg.parent) == pkg
    with pytest.raises(FileNotFoundError):
        A.package_root(pkg / "systems")


def test_package_root_from_installed_module(pkg, monkeypatch):
    spec = SimpleNamespace(submodule_search_locations=[str(pkg)])
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: spec if name == "aiconfigurator_core" else None)
    assert A.package_root(None) == pkg
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="not installed"):
        A.package_root(None)


def test_version_order():
    vs = ["1.3.0", "1.3.0rc20", "1.3.0rc9", "1.2.0rc5", "1.3.0.post1", "0.5.14",
          "0.5.6.post2", "0.1.dev19262", "2.27", "2.27.3"]
    assert sorted(vs, key=A.version_key) == [
        "0.1.dev19262", "0.5.6.post2", "0.5.14", "1.2.0rc5", "1.3.0rc9", "1.3.0rc20",
        "1.3.0", "1.3.0.post1", "2.27", "2.27.3"]


def test_version_choice(pkg):
    assert A.available_versions(pkg, SYS, "gemm", "trtllm", "gemm_perf") == [
        "1.3.0rc9", "1.3.0rc20"]             # rc23 holds only reuse.yaml
    assert set(A.gemm_table(pkg, SYS, "trtllm")["version"]) == {"1.3.0rc20"}
    assert set(A.gemm_table(pkg, SYS, "trtllm", "newest")["version"]) == {"1.3.0rc20"}
    assert len(A.gemm_table(pkg, SYS, "trtllm", "all")) == 6
    assert len(A.gemm_table(pkg, SYS, "trtllm", "1.3.0rc9")) == 1
    # moe: rc23 exists but "current" (query_versions.yaml) is rc20
    moe = A.moe_table(pkg, SYS, "trtllm")
    assert set(moe["version"]) == {"1.3.0rc20"} and len(moe) == 3
    assert set(A.moe_table(pkg, SYS, "trtllm", "newest")["version"]) == {"1.3.0rc23"}
    assert len(A.moe_table(pkg, SYS, "trtllm", "all")) == 4
    # every framework, each at its own current version
    both = A.gemm_table(pkg, SYS)
    assert set(zip(both["framework"], both["version"])) == {("trtllm", "1.3.0rc20"),
                                                           ("vllm", "0.24.0")}
    with pytest.raises(FileNotFoundError):
        A.gemm_table(pkg, SYS, "trtllm", "9.9")
    with pytest.raises(FileNotFoundError, match="h100_sxm"):
        A.gemm_table(pkg, "b200_sxm")


def test_system_peaks(pkg):
    p = A.system_peaks(pkg, SYS)
    assert p == {"mem_bw": 3.35e12, "mem_capacity": 85899345920.0, "bfloat16": 989e12,
                 "fp8": 1978e12, "int8": 1978e12, "intra_node_bw": 450e9}


# --------------------------------------------------------------------------- GEMM


def test_gemm_units_and_formulas(pkg):
    g = A.gemm_table(pkg, SYS, "trtllm")
    assert list(g.columns) == ["system", "framework", "version", "kernel_source", "dtype",
                               "m", "n", "k", "flops", "bytes", "latency_s"]
    r = g.set_index(["dtype", "m", "n", "k"])
    big = r.loc[("bfloat16", 8192, 8192, 8192)]
    assert big["latency_s"] == pytest.approx(1.4e-3, rel=1e-12)
    assert big["flops"] == 2 * 8192 ** 3
    assert big["bytes"] == 2 * 8192 * 8192 * 3
    fp8 = r.loc[("fp8", 16, 4096, 2048)]
    assert fp8["flops"] == 2 * 16 * 4096 * 2048
    assert fp8["bytes"] == 2 * 16 * 2048 + 1 * 4096 * 2048 + 2 * 16 * 4096
    blk = r.loc[("fp8_block", 3, 1536, 7168)]
    assert blk["bytes"] == pytest.approx(
        2 * 3 * 7168 + 1536 * 7168 + 4 * (1536 // 128) * (7168 // 128) + 2 * 3 * 1536, rel=1e-12)
    fp4 = A.gemm_table(pkg, SYS, "vllm").iloc[0]
    assert fp4["bytes"] == pytest.approx(2 * 2 * 512 + 256 * 512 / 2 + 256 * 512 / 16
                                         + 2 * 2 * 256, rel=1e-12)
    assert fp4["latency_s"] == pytest.approx(7e-6, rel=1e-12)


# --------------------------------------------------------------------------- attention


def _pairs_brute(q, kv, w):
    return sum(min(p + 1, w) if w else p + 1 for p in range(kv - q, kv))


def test_causal_pairs_closed_form():
    for kv in range(1, 40):
        for q in range(1, kv + 1):
            for w in (0, 1, 3, 7, 50):
                assert A.causal_pairs(q, kv, w) == _pairs_brute(q, kv, w)
                keys = {k for p in range(kv - q, kv) for k in range(p + 1)
                        if not w or k > p - w}
                assert A.keys_touched(q, kv, w) == len(keys)


def test_attention_formulas(pkg):
    a = A.attention_table(pkg, SYS, "trtllm")
    assert list(a.columns) == ["system", "framework", "version", "kernel_source", "dtype",
                               "phase", "kv_dtype", "batch", "q_len", "kv_len", "heads",
                               "kv_heads", "head_dim", "window", "flops", "bytes",
                               "latency_s"]
    assert len(A.attention_table(pkg, SYS, "trtllm", phase="context")) == 3
    r = a.set_index(["phase", "batch", "q_len", "kv_len"])

    c = r.loc[("context", 2, 1000, 1000)]       # b=2 h=8 hkv=2 d=128, bf16
    assert c["flops"] == 4 * 2 * 8 * 128 * (1000 * 1001 // 2)
    assert c["bytes"] == (2 * 1000 * 8 * 128 * (2 + 2) + 2 * 1000 * 2 * 2 * 128 * 2
                          + 2 * 1000 * 2 * 2 * 128 * 2)
    assert c["latency_s"] == pytest.approx(5e-4, rel=1e-12)

    w = r.loc[("context", 1, 10, 10)]           # window 4, fp8 FMHA: fp8 output
    assert w["flops"] == 4 * 4 * 64 * (4 * 5 // 2 + 6 * 4)
    assert w["bytes"] == 10 * 4 * 64 * (2 + 1) + 10 * 2 * 4 * 64 * 1 + 10 * 2 * 4 * 64 * 1

    g = r.loc[("generation", 8, 1, 4096)]       # step 4095 cached + 1 new, fp8 KV
    assert g["flops"] == 4 * 8 * 32 * 128 * 4096
    assert g["bytes"] == 8 * 32 * 128 * 4 + 8 * 4096 * 2 * 8 * 128 * 1 + 8 * 2 * 8 * 128 * 1

    s = r.loc[("generation", 4, 1, 4096)]       # sliding window 128
    assert s["flops"] == 4 * 4 * 16 * 64 * 128
    assert s["bytes"] == 4 * 16 * 64 * 4 + 4 * 128 * 2 * 64 * 2 + 4 * 2 * 64 * 2


# --------------------------------------------------------------------------- MLA


def test_mla_formulas(pkg):
    m = A.mla_table(pkg, SYS, "trtllm").set_index("phase")
    c = m.loc["context"]                        # b=2 isl=512 heads=16, bf16 cache
    pairs = 512 * 513 // 2
    assert c["flops"] == 2 * 16 * pairs * (2 * 192 + 2 * 128)
    assert c["bytes"] == 2 * 2 * 16 * (512 * 192 + 512 * 320 + 512 * 128) + 2 * 512 * 576 * 2
    assert c["tp_size"] == 4 and c["q_len"] == c["kv_len"] == 512
    g = m.loc["generation"]                     # b=64, ctx 4096, 128 heads, fp8 cache
    assert g["kv_len"] == 4096
    assert g["flops"] == 64 * 128 * 4096 * (2 * 576 + 2 * 512)
    assert g["bytes"] == 64 * 4096 * 576 * 1 + 2 * 64 * 128 * (576 + 512) + 64 * 576 * 1
    assert g["latency_s"] == pytest.approx(1.22e-4, rel=1e-12)


# --------------------------------------------------------------------------- MoE


def test_balanced_routing_by_hand():
    # stride 32 > 16 tokens: token t takes experts 2t + 32 j; rank 0 owns experts 0..31
    assert A.balanced_local_load(16, 256, 8, 8) == (16, 16)
    assert A.balanced_local_load(1, 256, 8, 8) == (1, 1)
    # 64 tokens >= stride: (t + 32 j) mod 256 hits 0..31 twice (j = 0, and j = 7 wrapping)
    assert A.balanced_local_load(64, 256, 8, 8) == (64, 32)
    assert A.balanced_local_load(128, 256, 8, 8) == (128, 32)
    # one rank holding every expert sees every copy
    for t in (1, 3, 17, 100):
        copies, active = A.balanced_local_load(t, 128, 8, 1)
        assert copies == 8 * t and active == min(128, len(_selected(t, 128, 8)))


def _selected(tokens, experts, topk):
    s = math.ceil(experts / topk)
    sel = set()
    for t in range(tokens):
        for j in range(topk):
            if tokens >= s:
                sel.add((t + j * s) % experts)
            else:
                sel.add(int(np.float32(np.float32(t * s) / np.float32(tokens)
                                       + np.float32(j * s)) % experts))
    return sel


def test_moe_formulas(pkg):
    m = A.moe_table(pkg, SYS, "trtllm").set_index("dtype")
    d = m.loc["fp8_block"]                      # DeepSeek-V3 experts, tp 1, ep 8, 128 tokens
    assert (d["local_experts"], d["inter_local"], d["copies"], d["active"]) == (32, 2048, 128, 32)
    assert bool(d["gated"])
    assert d["flops"] == 2 * 128 * 7168 * 2048 * 3
    assert d["bytes"] == pytest.approx(32 * 7168 * 2048 * 3 * (1 + 4 / 128 ** 2)
                                       + 2 * 128 * 7168 * 2, rel=1e-12)
    assert d["latency_s"] == pytest.approx(5e-4, rel=1e-12)

    f = m.loc["nvfp4"]                          # 16 tokens, 128 experts ep 4, inter 1536 / tp 2
    copies, active = A.balanced_local_load(16, 128, 8, 4)
    assert (f["copies"], f["active"], f["inter_local"]) == (copies, active, 768)
    assert f["distribution"] == "power_law_1.2"
    assert f["flops"] == 2 * copies * 4096 * 768 * 3
    assert f["bytes"] == pytest.approx(active * 4096 * 768 * 3 * (0.5 + 1 / 16)
                                       + 2 * 16 * 4096 * 2, rel=1e-12)

    n = m.loc["bfloat16"]                       # relu2 (non-gated): FC1 and FC2 only
    assert not bool(n["gated"])
    assert (n["copies"], n["active"]) == (6, 6)
    assert n["flops"] == 2 * 6 * 2688 * 1856 * 2
    assert n["bytes"] == 6 * 2688 * 1856 * 2 * 2 + 2 * 1 * 2688 * 2


# --------------------------------------------------------------------------- collectives


def test_comm_units_and_bus_bytes(pkg):
    c = A.comm_table(pkg, SYS)
    assert set(zip(c["framework"], c["version"])) == {("nccl", "2.29.2"),
                                                     ("trtllm", "1.3.0rc20")}
    r = c.set_index(["framework", "op", "num_gpus"])
    ar = r.loc[("nccl", "all_reduce", 8)]
    assert ar["message_bytes"] == 2 ** 29       # 2^28 FP16 elements
    assert ar["bytes"] == 2 ** 29 * 2 * 7 / 8
    assert ar["flops"] == 2 ** 28 * 7 / 8
    assert ar["latency_s"] == pytest.approx(2.111e-3, rel=1e-12)
    assert ar["bytes"] / ar["latency_s"] == pytest.approx(445.1e9, rel=1e-3)   # busbw
    ag = r.loc[("nccl", "all_gather", 4)]
    assert (ag["message_bytes"], ag["bytes"], ag["flops"]) == (1024, 1024 * 3 / 4, 0)
    assert r.loc[("nccl", "alltoall", 2)]["bytes"] == 256 * 2 / 2
    rs = r.loc[("nccl", "reduce_scatter", 8)]
    assert (rs["bytes"], rs["flops"]) == (2 ** 21 * 7 / 8, 2 ** 20 * 7 / 8)
    cu = r.loc[("trtllm", "all_reduce", 8)]
    assert (cu["dtype"], cu["message_bytes"], cu["bytes"]) == ("bfloat16", 8192, 8192 * 7 / 4)

    assert set(A.comm_table(pkg, SYS, "nccl")["framework"]) == {"nccl"}
    legacy = A.comm_table(pkg, SYS, "nccl", "2.23")
    assert len(legacy) == 1 and legacy["latency_s"].iloc[0] == pytest.approx(5e-6, rel=1e-12)
    assert set(A.allreduce_table(pkg, SYS)["op"]) == {"all_reduce"}
    assert len(A.allreduce_table(pkg, SYS)) == 2


def test_unknown_dtype_is_an_error(pkg):
    _write(pkg, "gemm", "sglang", "0.5.14", "gemm_perf", [_gemm("int2_magic", 1, 32, 32, 1.0)])
    with pytest.raises(ValueError, match="int2_magic"):
        A.gemm_table(pkg, SYS, "sglang")


# --------------------------------------------------------------------------- evidence


def test_roofline_and_evidence(pkg):
    peaks = A.system_peaks(pkg, SYS)
    g = A.roofline(A.gemm_table(pkg, SYS, "trtllm"), peaks).set_index(["dtype", "m", "n", "k"])
    big = g.loc[("bfloat16", 8192, 8192, 8192)]
    assert big["bound"] == "compute"
    assert big["efficiency"] == pytest.approx(2 * 8192 ** 3 / 989e12 / 1.4e-3, rel=1e-12)
    dec = g.loc[("bfloat16", 1, 8192, 8192)]
    assert dec["bound"] == "memory"
    assert dec["efficiency"] == pytest.approx(
        (2 * 8192 + 2 * 8192 ** 2 + 2 * 8192) / 3.35e12 / 5e-5, rel=1e-12)

    ev = A.efficiency_evidence(pkg, SYS).set_index(["regime", "dtype", "shape"])
    row = ev.loc[("gemm_compute", "bfloat16", "m=n=k=8192")]
    assert row["efficiency"] == pytest.approx(big["efficiency"], rel=1e-12)
    assert row["achieved"] == pytest.approx(2 * 8192 ** 3 / 1.4e-3 / 1e12, rel=1e-12)
    assert row["peak"] == pytest.approx(989.0)
    assert ev.loc[("gemm_decode", "bfloat16", "m=1 n=8192 k=8192 largest"),
                  "efficiency"] == pytest.approx(dec["efficiency"], rel=1e-12)
    att = ev.loc[("attn_decode", "bfloat16", "kv=fp8 b=8 ctx=4096")]
    assert att["bound"] == "memory"
    assert att["efficiency"] == pytest.approx(
        (8 * 32 * 128 * 4 + 8 * 4096 * 2 * 8 * 128 + 8 * 2 * 8 * 128) / 3.35e12 / 3.57e-5,
        rel=1e-12)
    moe = ev.loc[("moe", "fp8_block", "T=128 per-expert=4 (moe_torch_flow_cutlass)")]
    assert moe["bound"] == "memory"
    assert moe["efficiency"] == pytest.approx(
        (32 * 7168 * 2048 * 3 * (1 + 4 / 128 ** 2) + 2 * 128 * 7168 * 2) / 3.35e12 / 5e-4,
        rel=1e-12)
    ar = ev.loc[("allreduce", "half", "nccl n=8 512 MiB")]
    assert ar["efficiency"] == pytest.approx(2 ** 29 * 7 / 4 / 2.111e-3 / 450e9, rel=1e-12)

    fl = A.latency_floors(pkg, SYS).set_index(["family", "kind"])
    assert fl.loc[("gemm", "bfloat16"), "latency_us"] == pytest.approx(2.5)
    assert fl.loc[("gemm", "bfloat16"), "shape"] == "m=1 n=32 k=32"
    assert fl.loc[("comm", "trtllm all_reduce 8"), "latency_us"] == pytest.approx(3.5)
