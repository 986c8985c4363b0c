"""Kernel-level op timing (sim/engine/kernels.py): closed forms where they are exact (a huge
GEMM at the calibrated peak, a tiny one at its fixed cost, tiles), and the layer's kernels
conserving the model's weights and FLOPs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import kernels as kn
from sim.spec import load_hardware, load_model
from sim.spec.hardware import KernelClass, KernelTiming

H100 = load_hardware("hgx-h100")


def fitted(gemm: KernelClass) -> object:
    eff = H100.efficiency.model_copy(update={"kernels": KernelTiming(
        gemm=gemm, grouped_gemm=gemm, attention=gemm, elementwise=gemm, mla_attention=gemm)})
    return H100.model_copy(update={"efficiency": eff})


def one(k: kn.Kernel, hw, rows, kv=0.0, pairs=0.0):
    t = kn.table([k], hw, "bf16")
    return kn.kernel_time(float(rows), float(kv), float(pairs), t.cls[0], t.flops_per_row[0],
                          t.weight_bytes[0], t.io_bytes_per_row[0], t.kv_bytes[0],
                          t.flops_per_pair[0], t.flops_rate[0], t.bytes_rate[0], t.fixed[0],
                          t.per_row[0], t.tile[0])


CLASS = KernelClass(compute={"bf16": 0.75, "fp8": 0.65}, memory=0.8, fixed=5e-6, tile_m=64)


def test_huge_gemm_runs_at_the_calibrated_peak_plus_its_fixed_cost():
    hw = fitted(CLASS)
    m, n, k = 16384, 16384, 16384
    t, compute_bound = one(kn._gemm("g", n, k, 1.0, "fp8"), hw, m)
    assert compute_bound
    assert t == pytest.approx(5e-6 + 2.0 * m * n * k / (H100.gpu.flops_at("fp8")[1] * 0.65))


def test_tiny_gemm_costs_its_fixed_cost():
    hw = fitted(CLASS)
    t, _ = one(kn._gemm("g", 32, 32, 2.0, "bf16"), hw, 1)
    assert t == pytest.approx(5e-6, rel=1e-3)
    assert one(kn._gemm("g", 32, 32, 2.0, "bf16"), hw, 0)[0] == 0.0   # no rows: no launch


def test_decode_gemm_streams_its_weights():
    hw = fitted(CLASS)
    n = k = 8192
    t, compute_bound = one(kn._gemm("g", n, k, 1.0, "fp8"), hw, 1)
    assert not compute_bound
    moved = n * k + (n + k) * kn.ACT_BYTES
    assert t == pytest.approx(5e-6 + moved / (H100.gpu.hbm_bandwidth * 0.8))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 64))
def test_rows_within_one_tile_cost_the_same_compute(rows):
    hw = fitted(KernelClass(compute=0.5, memory=1.0, fixed=0.0, tile_m=64))
    # a compute-heavy shape with tiny weights: compute bound at every row count
    k = kn.Kernel("g", kn.GEMM, "bf16", flops_per_row=1e12, weight_bytes=1.0)
    t, cb = one(k, hw, rows)
    assert cb and t == pytest.approx(64 * 1e12 / (H100.gpu.flops_at("bf16")[1] * 0.5))


def test_without_fitted_kernels_each_kernel_uses_the_scalar_efficiencies():
    bare = H100.model_copy(update={"efficiency": H100.efficiency.model_copy(
        update={"kernels": None})})
    k = kn._gemm("g", 16384, 16384, 1.0, "fp8")
    t, _ = one(k, bare, 16384)
    peak = H100.gpu.flops_at("fp8")[1]
    assert t == pytest.approx(2.0 * 16384 ** 3 / (peak * H100.efficiency.compute))


@pytest.mark.parametrize("name", ["deepseek-v3", "llama-3.1-70b", "qwen3-235b-a22b",
                                  "mixtral-8x22b"])
@pytest.mark.parametrize("t", [1, 8])
def test_layer_kernels_hold_the_models_weights_and_flops(name, t):
    """Summed over layers and GPUs, the dense kernels read every non-routed weight except the
    embedding table and norms (a lookup; vectors) and do 2 FLOPs per active parameter; the
    experts' kernels hold one routed expert of one layer."""
    m = load_model(name)
    parts = {p.name: p for p in m.parts}
    skip = sum(parts[p].total for p in parts if p.startswith(("embedding", "norms")))
    skip_active = sum(parts[p].active for p in parts if p.startswith(("embedding", "norms")))
    ks = kn.dense_kernels(m, m.architecture, t)
    weights = sum(k.weight_bytes * k.per_layer for k in ks) * m.layers * t
    dense_params = m.total_params - m.routed_expert_params - skip
    assert weights == pytest.approx(dense_params * m.bytes_per_param, rel=2e-3)
    flops = sum(k.flops_per_row * k.per_layer for k in ks) * m.layers * t
    routed_active = (m.moe.top_k * m.routed_expert_params / m.moe.experts) if m.moe else 0.0
    assert flops == pytest.approx(2 * (m.active_params - routed_active - skip_active),
                                  rel=2e-3)
    if m.moe is not None:
        ex = kn.expert_kernels(m, m.architecture, t)
        per_expert = m.routed_expert_params / (m.moe.experts * m.moe.moe_layers)
        assert sum(k.weight_bytes for k in ex) * t == pytest.approx(
            per_expert * m.bytes_per_param)


def test_grouped_experts_pad_each_expert_and_read_only_used_weights():
    hw = fitted(KernelClass(compute=1.0, memory=1.0, fixed=0.0, tile_m=16))
    k = kn._gemm("e", 1024, 1024, 1.0, "bf16", cls=kn.GROUPED)
    tab = kn.table([k], hw, "bf16")
    tokens = np.array([3.0, 0.0, 20.0, 0.0])   # two ranks of two experts
    t, share = kn.grouped_time(tokens, 2, 2, tab.cls, tab.flops_per_row, tab.weight_bytes,
                               tab.io_bytes_per_row, tab.per_layer, tab.flops_rate,
                               tab.bytes_rate, tab.fixed, tab.per_row, tab.tile)
    peak, bw = H100.gpu.flops_at("bf16")[1], H100.gpu.hbm_bandwidth
    for r, rows, padded in ((0, 3, 16), (1, 20, 32)):
        tc = padded * 2 * 1024 * 1024 / peak
        tm = (1024 * 1024 + rows * 2048 * kn.ACT_BYTES) / bw
        assert t[r] == pytest.approx(max(tc, tm))
        assert share[r] == float(tc > tm)


def test_components_at_their_own_precision():
    """FP4 experts beside FP8 attention and BF16 dense parts: each part's bytes at its own
    precision, and each kernel at its component's precision."""
    m = load_model({"preset": "deepseek-v3", "attention_precision": "fp8",
                    "moe_precision": "fp4", "dense_precision": "bf16"})
    base = load_model("deepseek-v3")   # fp8 throughout
    parts = {p.name: p.total for p in m.parts}
    expect = (parts["attention"] * 1.0 + parts["routed experts"] * 0.5
              + (m.total_params - parts["attention"] - parts["routed experts"]) * 2.0)
    assert m.weight_bytes == pytest.approx(expect)
    assert base.weight_bytes == pytest.approx(base.total_params * 1.0)
    assert m.routed_weight_bytes == pytest.approx(parts["routed experts"] * 0.5)
    dense = {k.name: k for k in kn.dense_kernels(m, m.architecture, 1)}
    assert dense["q_b"].precision == "fp8" and dense["shared_down"].precision == "bf16"
    ex = kn.expert_kernels(m, m.architecture, 1)
    assert {k.precision for k in ex if k.cls == kn.GROUPED} == {"fp4"}


def test_attention_pays_per_sequence_on_top_of_its_roofline():
    hw = fitted(KernelClass(compute=1.0, memory=1.0, fixed=4e-6, per_row=0.3e-6))
    k = kn.Kernel("a", kn.ATTENTION, "bf16", kv_bytes=1024.0, flops_per_pair=1.0)
    t, cb = one(k, hw, 100, kv=1e6, pairs=1e6)
    assert not cb
    assert t == pytest.approx(4e-6 + 100 * 0.3e-6 + 1e6 * 1024 / H100.gpu.hbm_bandwidth)


def test_a_generation_is_named_in_the_hardware_file():
    hw = load_hardware({"preset": "hgx-h100", "efficiency": {"kernels": "ideal"}})
    k = hw.efficiency.kernels
    assert k.gemm.compute == 1.0 and k.gemm.fixed == 0.0 and k.mla_attention is None
    assert hw.efficiency.compute == H100.efficiency.compute   # the rest of the preset stays
    from sim.spec.errors import SpecError

    with pytest.raises(SpecError, match="unknown kernel timing 'hoper'"):
        load_hardware({"preset": "hgx-h100", "efficiency": {"kernels": "hoper"}})


@pytest.mark.parametrize("t", [1, 2, 8, 16])
def test_kv_reads_split_only_as_far_as_heads_own_kv(t):
    """GQA (Llama-3.1-70B: 8 KV heads) splits KV reads up to 8 ways; MLA's latent is read
    whole by every GPU of the group."""
    llama, ds = load_model("llama-3.1-70b"), load_model("deepseek-v3")
    kv = {m.name: next(k for k in kn.dense_kernels(m, m.architecture, t)
                       if k.name == "attention").kv_bytes for m in (llama, ds)}
    assert kv["llama-3.1-70b"] == pytest.approx(llama.kv_bytes_per_token / llama.layers
                                                / min(t, 8))
    assert kv["deepseek-v3"] == pytest.approx(ds.kv_bytes_per_token / ds.layers)


def test_fixed_cost_per_precision_and_attention_by_phase():
    """A class's fixed cost may differ by precision (TRT-LLM's fp8 GEMMs cost ~12 us however
    small); decode and context attention are separate kernels with their own classes."""
    gemm = KernelClass(compute=1.0, memory=1.0, fixed={"bf16": 3e-6, "fp8": 12e-6})
    decode = KernelClass(compute=1.0, memory=1.0, fixed=5e-6)
    prefill = KernelClass(compute=1.0, memory=1.0, fixed=9e-6)
    eff = H100.efficiency.model_copy(update={"kernels": KernelTiming(
        gemm=gemm, grouped_gemm=gemm, attention=decode, attention_prefill=prefill,
        elementwise=gemm)})
    hw = H100.model_copy(update={"efficiency": eff})
    tiny = {p: one(kn._gemm("g", 8, 8, 1.0, p), hw, 1)[0] for p in ("bf16", "fp8", "fp4")}
    assert tiny["bf16"] == pytest.approx(3e-6, rel=1e-3)
    assert tiny["fp8"] == pytest.approx(12e-6, rel=1e-3)
    assert tiny["fp4"] == pytest.approx(12e-6, rel=1e-3)   # H100 runs fp4 as fp8
    m = load_model("llama-3.1-70b")
    only = kn.table([k for k in kn.dense_kernels(m, m.architecture, 8)
                     if k.name.startswith("attention")], hw, "bf16")
    z = np.zeros(1)
    # a decode-only step launches the decode kernel alone, a prefill-only step the other
    t_dec, _ = kn.layer_time(kn.StepWork(z + 4, z + 4, z + 1, z, z, z), only)
    t_pre, _ = kn.layer_time(kn.StepWork(z + 4, z, z, z + 4, z + 1, z + 1), only)
    assert t_dec[0] == pytest.approx(5e-6, rel=1e-2) and t_pre[0] == pytest.approx(9e-6, rel=1e-2)


@pytest.mark.parametrize("t", [1, 8])
def test_mla_flops_per_pair_are_the_measured_kernels_own(t):
    """MLA's decode kernel runs absorbed, its context kernel up-projected (the forms the
    kernel data measure, aic_data.mla_table, which the classes are fitted on): per (query,
    context) pair and head, decode 2 (576 + 512) FLOPs, context 2 (192 + 128)."""
    from sim.calibration import aic_data

    ds = load_model("deepseek-v3")
    a = ds.architecture.attention
    ks = {k.name: k for k in kn.dense_kernels(ds, ds.architecture, t)}
    heads = a.heads / t
    latent = aic_data.MLA_KV_LORA + aic_data.MLA_QK_ROPE
    qk = aic_data.MLA_QK_NOPE + aic_data.MLA_QK_ROPE
    assert ks["attention"].flops_per_pair == pytest.approx(
        heads * (2 * latent + 2 * aic_data.MLA_KV_LORA))
    assert ks["attention_prefill"].flops_per_pair == pytest.approx(
        heads * (2 * qk + 2 * aic_data.MLA_V_HEAD))
    llama = load_model("llama-3.1-70b")
    g = {k.name: k for k in kn.dense_kernels(llama, llama.architecture, t)}
    assert g["attention"].flops_per_pair == g["attention_prefill"].flops_per_pair
