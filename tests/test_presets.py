"""Presets: every hardware and model file loads, cites sources, and models match their cards."""

import re

import pytest

from sim.spec import list_presets, load_hardware, load_model
from sim.spec.presets import preset_dirs

HARDWARE = ["hgx-h100", "hgx-h800", "hgx-h200", "hgx-b200", "gb200-nvl72", "gb300-nvl72"]
MODELS = ["deepseek-v3", "llama-3.1-405b", "llama-3.1-70b", "llama-2-70b", "mixtral-8x22b",
          "qwen3-235b-a22b", "gpt-oss-120b", "kimi-k2"]


def test_all_required_presets_exist():
    assert set(HARDWARE) <= set(list_presets("topologies"))
    assert set(MODELS) <= set(list_presets("models"))


@pytest.mark.parametrize("name", HARDWARE)
def test_hardware_preset_is_sourced_and_sane(name):
    hw = load_hardware(name)
    assert hw.name == name
    assert hw.sources and all(s.startswith("http") for s in hw.sources)
    assert hw.gpus_per_rack % hw.domain_gpus == 0
    # scale-up is faster than scale-out per GPU on every design we ship (domain.md s3)
    assert hw.scale_up.bandwidth_per_gpu > hw.scale_out.bandwidth_per_gpu
    # every figure line of the file carries a comment (its source or "assumption")
    text = (preset_dirs("topologies")[0] / f"{name}.yaml").read_text()
    for line in text.splitlines():
        if re.match(r"\s+(bf16|fp8|fp4|hbm_bytes|hbm_bandwidth|bandwidth_per_gpu|latency):",
                    line):
            assert "#" in line, f"{name}: figure without a source: {line.strip()}"


@pytest.mark.parametrize("name", MODELS)
def test_model_derivation_matches_card_within_3_percent(name):
    m = load_model(name)
    assert m.published is not None, "each preset states the card's figures"
    assert m.sources, "each preset cites its source"
    assert m.total_params == pytest.approx(m.published.total_params, rel=0.03)
    assert m.active_params == pytest.approx(m.published.active_params, rel=0.03)
    assert sum(p.total for p in m.parts) == pytest.approx(m.total_params)
    assert m.kv_bytes_per_token > 0


def test_deepseek_v3_kv_is_the_mla_latent():
    """MLA caches (kv_lora_rank + rope dim) per layer: 61 x (512 + 64) x 2 bytes."""
    assert load_model("deepseek-v3").kv_bytes_per_token == 61 * (512 + 64) * 2


def test_llama_gqa_kv_formula():
    """domain.md s5: layers x 2 x kv_heads x head_dim x bytes."""
    assert load_model("llama-3.1-70b").kv_bytes_per_token == 80 * 2 * 8 * 128 * 2


def test_preset_override_changes_precision():
    m = load_model({"preset": "deepseek-v3", "weight_precision": "fp4"})
    assert m.bytes_per_param == 0.5
    assert m.compute_precision == "fp4"


def test_hopper_runs_fp4_weights_at_fp8():
    """A GPU without FP4 tensor cores computes FP4 weights at its next precision."""
    used, flops = load_hardware("hgx-h100").gpu.flops_at("fp4")
    assert used == "fp8" and flops == load_hardware("hgx-h100").gpu.flops["fp8"]
