"""The fitted kernel timing (sim/calibration/fit.py, topologies/kernels/*.yaml): the files load,
the engine's own timing code reproduces the held-out errors the files report on the committed
measured rows (validation/kernels/), and the fit recovers known parameters from a synthetic
dataset."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sim.calibration import aic_data
from sim.calibration import fit
from sim.engine import kernels as kn
from sim.spec import load_hardware
from sim.spec.hardware import KernelClass, KernelTiming
from sim.spec.precision import BYTES_PER_ELEMENT

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "topologies" / "kernels"
SAMPLE = REPO / "validation" / "kernels"
# aiconfigurator system -> racksim hardware file (its peaks scale the efficiencies)
PRESET = {"h100_sxm": "hgx-h100", "h200_sxm": "hgx-h200", "b200_sxm": "hgx-b200",
          "gb200": "gb200-nvl72"}
PRECISION = {"bfloat16": "bf16", "fp8": "fp8", "nvfp4": "fp4"}
MARGIN = 0.05   # sampling noise: a median over 250 committed rows against the full held-out set
# each attention class's kernel class in the engine (kernels.py), by attribute name
ENGINE_CLASS = {"attention": "ATTENTION", "attention_prefill": "ATTENTION_PREFILL",
                "mla_attention": "MLA_ATTENTION", "mla_prefill": "MLA_PREFILL"}


def engine_class(cls: str) -> int:
    """The engine's class id for a fitted attention class; skips while the engine has none."""
    name = ENGINE_CLASS[cls]
    if not hasattr(kn, name):
        pytest.skip(f"sim.engine.kernels has no {name} yet (the engine side of the "
                    f"decode / prefill attention split)")
    return getattr(kn, name)


def reported(generation: str) -> dict[str, dict[str, float]]:
    """The held-out median |error| per system and class from the file's header lines
    `#   <system> (<role>): <class> <median>/<p90> ...`."""
    out = {}
    for line in (KERNELS / f"{generation}.yaml").read_text().splitlines():
        m = re.match(r"^#\s+(\w+) \(([^)]*)\):((?: \w+ [\d.]+/[\d.]+)+)$", line)
        if m:
            out[m.group(1)] = {c: float(med) for c, med, _ in
                               re.findall(r"(\w+) ([\d.]+)/([\d.]+)", m.group(3))}
    return out


def attention_kernel(cls: str, r) -> kn.Kernel:
    """A measured attention row's kernel, as dense_kernels builds it, of the row's class."""
    kvb = aic_data.ELEMENT_BYTES[r.kv_dtype]
    if fit.TABLE[cls] == "attention":
        return kn.Kernel(cls, engine_class(cls), "bf16",
                         kv_bytes=2 * r.kv_heads * r.head_dim * kvb,
                         flops_per_pair=4 * r.heads * r.head_dim,
                         io_bytes_per_row=2 * r.heads * r.head_dim * kn.ACT_BYTES)
    pairs = r.batch * float(aic_data.causal_pairs(r.q_len, r.kv_len))
    # MLA: the latent cache; FLOPs per pair as the table counts them
    return kn.Kernel(cls, engine_class(cls), "bf16", kv_bytes=(512 + 64) * kvb,
                     flops_per_pair=r.flops / pairs,
                     io_bytes_per_row=2 * r.heads * 128 * kn.ACT_BYTES)


def engine_times(cls: str, df: pd.DataFrame, hw) -> np.ndarray:
    """Each measured row timed by sim/engine/kernels.py: the row's kernel(s) built as the
    engine builds them, their figures resolved by its `table` (per precision, per class),
    then kernel_time (or grouped_time for the experts)."""
    out = []
    for r in df.itertuples(index=False):
        if cls == "gemm":
            p = PRECISION[r.dtype] if r.dtype in PRECISION else "fp8"   # fp8_block: at fp8
            t = kn.table([kn._gemm("g", r.n, r.k, BYTES_PER_ELEMENT[p], p)], hw, "bf16")
            rows, kv, pairs = float(r.m), 0.0, 0.0
        elif cls == "grouped_gemm":
            p, f, h = PRECISION[r.dtype], float(r.inter_local), float(r.hidden)
            bpp = BYTES_PER_ELEMENT[p]
            t = kn.table([kn._gemm("gate_up", 2 * f, h, bpp, p, cls=kn.GROUPED),
                          kn._norm("act", f),
                          kn._gemm("down", h, f, bpp, p, cls=kn.GROUPED)], hw, "bf16")
            per, extra = divmod(int(r.copies), int(r.active))
            tokens = np.zeros(int(r.local_experts))
            tokens[:int(r.active)] = per
            tokens[:extra] += 1
            time, _ = kn.grouped_time(tokens, 1, len(tokens), t.cls, t.flops_per_row,
                                      t.weight_bytes, t.io_bytes_per_row, t.per_layer,
                                      t.flops_rate, t.bytes_rate, t.fixed, t.per_row, t.tile)
            out.append(time[0])
            continue
        else:
            window = getattr(r, "window", 0)
            pairs = r.batch * float(aic_data.causal_pairs(r.q_len, r.kv_len, window))
            kv = r.batch * float(aic_data.keys_touched(r.q_len, r.kv_len, window))
            rows = float(r.batch * r.q_len)
            # attention runs at its KV cache's precision (costs.layer_costs, fitted classes)
            t = kn.table([attention_kernel(cls, r)], hw, fit.KV_PRECISION[r.kv_dtype])
        out.append(kn.kernel_time(rows, kv, pairs, t.cls[0], t.flops_per_row[0],
                                  t.weight_bytes[0], t.io_bytes_per_row[0], t.kv_bytes[0],
                                  t.flops_per_pair[0], t.flops_rate[0], t.bytes_rate[0],
                                  t.fixed[0], t.per_row[0], t.tile[0])[0])
    return np.array(out)


def committed(system: str, cls: str, split: str = "held_out") -> pd.DataFrame:
    df = pd.read_csv(SAMPLE / system / f"{cls}.csv")
    return df[(df["split"] == split) & ~df["dtype"].isin(fit.UNFITTED)].reset_index(drop=True)


# --------------------------------------------------------------------------- (a) loading


@pytest.mark.parametrize("generation", ["hopper", "blackwell"])
def test_fitted_files_load(generation):
    data = yaml.safe_load((KERNELS / f"{generation}.yaml").read_text())
    assert list(data) == ["source", *fit.KEYS]
    k = KernelTiming.model_validate(data)
    assert "aiconfigurator-core 0.12.0" in k.source and fit.GENERATIONS[generation] in k.source
    # every optional class fitted, none left to its default
    assert None not in (k.attention_prefill, k.mla_attention, k.mla_prefill)
    # GEMM classes: compute and fixed per precision, the same precisions
    precisions = {"bf16", "fp8"} | ({"fp4"} if generation == "blackwell" else set())
    for c in (k.gemm, k.grouped_gemm):
        assert set(c.compute) == set(c.fixed) == precisions
        assert min(c.fixed.values()) > 0 and c.tile_m in fit.TILES
    assert k.elementwise.memory == k.gemm.memory and k.elementwise.fixed == 0.0
    hw = load_hardware({"preset": "hgx-h100", "efficiency": {"kernels": generation}})
    assert hw.efficiency.kernels == k
    assert set(reported(generation)) == {fit.GENERATIONS[generation], *fit.CHECKS[generation]}
    assert all(set(v) == set(fit.CLASSES) for v in reported(generation).values())


def test_per_precision_figures_resolve_as_the_engine_resolves_them():
    """fit.at is KernelClass.compute_at / fixed_at: the precision's own figure, else the
    nearest by width; the engine's table takes it at the precision the GPU runs."""
    c = KernelClass(compute={"bf16": 0.8, "fp8": 0.5}, fixed={"bf16": 3e-6, "fp8": 1.2e-5})
    for p in ("bf16", "fp8", "fp4", "fp16", "fp32", "mxfp4", None):
        assert fit.at(c.fixed, p) == c.fixed_at(p) and fit.at(c.compute, p) == c.compute_at(p)
    assert c.fixed_at("fp4") == 1.2e-5 and c.fixed_at("fp32") == 3e-6
    assert KernelClass(fixed=5e-6).fixed_at("fp8") == 5e-6
    hw = load_hardware({"preset": "hgx-h100", "efficiency": {"kernels": "hopper"}})
    k = hw.efficiency.kernels
    t = kn.table([kn._gemm("a", 64, 64, 2, "bf16"), kn._gemm("b", 64, 64, 1, "fp8"),
                  kn._gemm("c", 64, 64, 0.5, "fp4")], hw, "bf16")
    assert list(t.fixed) == [k.gemm.fixed["bf16"], k.gemm.fixed["fp8"], k.gemm.fixed["fp8"]]


# --------------------------------------------------------------------------- (b) held-out

CASES = [(g, s) for g in ("hopper", "blackwell") for s in (fit.GENERATIONS[g], *fit.CHECKS[g])]


@pytest.mark.parametrize("generation,system", CASES)
@pytest.mark.parametrize("cls", fit.CLASSES)
def test_engine_reproduces_the_reported_held_out_error(generation, system, cls):
    """On the committed held-out rows, the engine's kernel_time / grouped_time with the
    fitted parameters (through the hardware file's `efficiency.kernels: NAME`, resolved per
    precision and per phase by its `table`) predicts the measured latency within the median
    |error| the file reports (plus sampling margin), and exactly as the fit's vectorised
    model does."""
    df = committed(system, cls)
    assert len(df) >= 200
    if cls in fit.PHASE:
        assert (df["phase"] == fit.PHASE[cls]).all()
    hw = load_hardware({"preset": PRESET[system], "efficiency": {"kernels": generation}})
    t = engine_times(cls, df, hw)
    err = np.abs(t / df["latency_s"].to_numpy() - 1)
    assert np.median(err) <= reported(generation)[system][cls] + MARGIN
    mine = fit.predict(cls, fit.shapes(cls, df), hw.efficiency.kernels, hw.gpu)
    np.testing.assert_allclose(mine, t, rtol=1e-9)


@pytest.mark.parametrize("table", ["attention", "mla_attention"])
def test_engine_times_each_phase_with_its_own_class(table):
    """Through layer_time (a step's work by phase, kernels.StepWork): decode sequences run
    the decode class's kernel and prompt tokens the prefill class's, each as kernel_time
    times it alone; a step with both launches both."""
    decode_cls, prefill_cls = ("attention", "attention_prefill") if table == "attention" \
        else ("mla_attention", "mla_prefill")
    if not hasattr(kn, "StepWork"):
        pytest.skip("sim.engine.kernels has no StepWork yet (a step's work by phase)")
    hw = load_hardware({"preset": "hgx-h100", "efficiency": {"kernels": "hopper"}})
    # one table runs its attention at one KV precision: two BF16-KV rows
    dec = committed("h100_sxm", decode_cls).query("kv_dtype == 'bfloat16'").iloc[0]
    pre = committed("h100_sxm", prefill_cls).query("kv_dtype == 'bfloat16'").iloc[0]
    t = kn.table([attention_kernel(decode_cls, dec), attention_kernel(prefill_cls, pre)], hw,
                 "bf16")
    # the kernels have the same shape in a model; here each its own row's, timed apart
    d_rows, d_kv = float(dec.batch), float(dec.batch * dec.kv_len)
    p_rows = float(pre.batch * pre.q_len)
    p_kv = float(pre.batch * aic_data.keys_touched(pre.q_len, pre.kv_len))
    p_pairs = float(pre.batch * aic_data.causal_pairs(pre.q_len, pre.kv_len))
    want_d = engine_times(decode_cls, pd.DataFrame([dec]), hw)[0]
    want_p = engine_times(prefill_cls, pd.DataFrame([pre]), hw)[0]

    def step(decode, prefill):
        w = kn.StepWork(*(np.array([x]) for x in (
            0.0, d_rows * decode, d_kv * decode, p_rows * prefill, p_kv * prefill,
            p_pairs * prefill)))
        return kn.layer_time(w, t)[0][0]

    assert step(1, 0) == pytest.approx(want_d, rel=1e-12)
    assert step(0, 1) == pytest.approx(want_p, rel=1e-12)
    assert step(1, 1) == pytest.approx(want_d + want_p, rel=1e-12)


def test_committed_rows_are_a_small_sample_in_the_extractors_schema():
    total = 0
    files = sorted(SAMPLE.glob("*/*.csv"))
    assert {f.stem for f in files} == set(fit.CLASSES)
    for f in files:
        df = pd.read_csv(f)
        total += f.stat().st_size
        assert 0 < len(df) <= 400 and set(df["split"]) == {"calibration", "held_out"}
        assert list(df.columns[:5]) == aic_data.LEAD and list(df.columns[-4:]) == [
            *aic_data.TAIL, "split"]
        if f.stem in fit.PHASE:
            assert set(df["phase"]) == {fit.PHASE[f.stem]}
        # the split is the shape hash's
        assert (fit.shape_split(f.stem, df) == df["split"].to_numpy()).all()
    assert 0 < total < 2e6


# --------------------------------------------------------------------------- (c) synthetic

KNOWN = {
    "gemm": {"compute": {"bf16": 0.7, "fp8": 0.55}, "memory": 0.8,
             "fixed": {"bf16": 3e-6, "fp8": 1.2e-5}, "per_row": 0.0, "tile_m": 64},
    "grouped_gemm": {"compute": {"bf16": 0.6, "fp8": 0.45}, "memory": 0.75,
                     "fixed": {"bf16": 1.2e-5, "fp8": 1.6e-5}, "per_row": 5e-9, "tile_m": 16},
    # decode: compute low enough that the widest fitted GQA rows (32 query heads per KV head)
    # are compute-bound at both KV precisions (else it is not
    # identified: no decode row would depend on it)
    "attention": {"compute": 0.05, "memory": 0.7, "fixed": 8e-6, "per_row": 5e-8, "tile_m": 1},
    "attention_prefill": {"compute": 0.6, "memory": 0.3, "fixed": 2e-5, "per_row": 1e-9,
                          "tile_m": 1},
    "elementwise": {"compute": 1.0, "memory": 0.8, "fixed": 0.0, "per_row": 0.0, "tile_m": 1},
    "mla_attention": {"compute": 0.45, "memory": 0.85, "fixed": 1e-5, "per_row": 3e-8,
                      "tile_m": 1},
    "mla_prefill": {"compute": 0.4, "memory": 0.5, "fixed": 1.5e-5, "per_row": 2e-9,
                    "tile_m": 1},
}


def synthetic_shapes() -> dict[str, pd.DataFrame]:
    lead = {"system": "h100_sxm", "framework": "trtllm", "version": "synthetic",
            "kernel_source": "synthetic"}
    g = [dict(lead, dtype=d, m=m, n=n, k=k)
         for d in ("bfloat16", "fp8") for m in (1, 5, 17, 40, 100, 257, 1000, 2049, 4096)
         for n, k in ((128, 128), (1024, 1024), (4096, 4096), (8192, 16384), (2048, 28672))]
    moe = []
    for d in ("bfloat16", "fp8"):
        for hidden, inter, experts, topk, tp, ep in ((4096, 1536, 128, 8, 1, 8),
                                                     (7168, 2048, 256, 8, 1, 32),
                                                     (4096, 14336, 8, 2, 2, 1)):
            for tokens in (1, 4, 16, 50, 100, 300, 1000, 3000, 5000, 12000):
                copies, active = aic_data.balanced_local_load(tokens, experts, topk, ep)
                moe.append(dict(lead, dtype=d, tokens=tokens, hidden=hidden, inter=inter,
                                topk=topk, experts=experts, tp=tp, ep=ep,
                                local_experts=experts // ep, inter_local=inter // tp,
                                copies=copies, active=active))
    attn, mla = [], []
    for kvd in ("bfloat16", "fp8"):
        for b in (1, 8, 64, 256):
            for phase, q, kv in [("context", n, n) for n in (16, 256, 4096)] + [
                    ("generation", 1, n) for n in (16, 1024, 32768)]:
                for h, hkv, d in ((32, 8, 128), (8, 8, 64), (32, 1, 128)):
                    attn.append(dict(lead, dtype="bfloat16", phase=phase, kv_dtype=kvd,
                                     batch=b, q_len=q, kv_len=kv, heads=h, kv_heads=hkv,
                                     head_dim=d, window=0))
                for h in (16, 128):
                    pairs = b * float(aic_data.causal_pairs(q, kv))
                    per = (2 * 192 + 2 * 128) if phase == "context" else (2 * 576 + 2 * 512)
                    mla.append(dict(lead, dtype="bfloat16", phase=phase, kv_dtype=kvd,
                                    batch=b, q_len=q, kv_len=kv, heads=h,
                                    flops=h * per * pairs))
    attn, mla = pd.DataFrame(attn), pd.DataFrame(mla)
    out = {"gemm": pd.DataFrame(g), "grouped_gemm": pd.DataFrame(moe)}
    for cls in fit.PHASE:
        df = attn if fit.TABLE[cls] == "attention" else mla
        out[cls] = df[df["phase"] == fit.PHASE[cls]].reset_index(drop=True)
    return out


def test_fit_recovers_known_parameters_from_synthetic_rows(tmp_path):
    """Latencies made by the engine from known parameters (one system's peaks; fixed costs
    per precision, attention per phase), written as committed rows are; fit_generation on
    them gives the parameters back."""
    engine_class("attention_prefill")
    hw = load_hardware({"preset": "hgx-h100", "efficiency": {"kernels": KNOWN}})
    (tmp_path / "h100_sxm").mkdir()
    for cls, df in synthetic_shapes().items():
        df["latency_s"] = engine_times(cls, df, hw)
        df["split"] = fit.shape_split(cls, df)
        df.to_csv(tmp_path / "h100_sxm" / f"{cls}.csv", index=False)
    got = fit.fit_generation(tmp_path, "h100_sxm")
    assert "h100_sxm" in got["source"] and list(got) == ["source", *fit.KEYS]
    for cls, want in KNOWN.items():
        for key, w in want.items():
            g = got[cls][key]
            if isinstance(w, dict):
                assert g == pytest.approx(w, rel=5e-3), (cls, key)
            elif isinstance(g, dict):   # one figure per KV precision, made from one
                assert g == pytest.approx({p: w for p in g}, rel=5e-3), (cls, key)
            elif key == "tile_m":
                assert g == w, (cls, key)
            else:
                assert g == pytest.approx(w, rel=5e-3, abs=1e-11), (cls, key)
    # the fit is deterministic: the same rows give the same figures
    assert fit.fit_generation(tmp_path, "h100_sxm") == got


def test_split_is_a_deterministic_hash_of_the_shape():
    df = pd.DataFrame({"m": np.arange(1, 2001), "n": 4096, "k": 4096})
    a = fit.shape_split("gemm", df)
    assert (a == fit.shape_split("gemm", df.iloc[::-1])[::-1]).all()   # row order: no matter
    assert 0.17 < np.mean(a == "held_out") < 0.23
    # a prefill class hashes as its table: a row keeps the split it had in the joint fit
    rows = pd.DataFrame({"phase": ["context", "generation"] * 50, "batch": 1,
                         "q_len": np.arange(100), "kv_len": 4096, "heads": 32,
                         "kv_heads": 8, "head_dim": 128, "window": 0})
    assert (fit.shape_split("attention_prefill", rows)
            == fit.shape_split("attention", rows)).all()
