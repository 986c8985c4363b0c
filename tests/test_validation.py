"""The validation harness (`racksim validate`): coverage of every published row, the
calibration reproduces the hardware files, the fast subset runs. Accuracy itself is a
measured result (`make validate`), not a test."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sim import validate as val
from sim.cli import app
from sim.spec.errors import SpecError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "validation" / "public_cases.csv"


def test_every_published_row_has_a_case():
    rows = val.read_rows(val.VALIDATION_DIR)
    cases = val.read_cases(val.VALIDATION_DIR)
    assert {r.id for r in rows} <= set(cases)
    assert len(rows) >= 32


@pytest.mark.skipif(not SHARED.exists(), reason="team folder not beside this checkout")
def test_public_cases_are_the_teams_file_unchanged():
    assert (val.VALIDATION_DIR / "public_cases.csv").read_text() == SHARED.read_text()


def test_a_row_without_a_case_is_refused(tmp_path):
    d = tmp_path / "v"
    shutil.copytree(val.VALIDATION_DIR, d)
    with (d / "extra_cases.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["new-row", "kernel", "x", "1", "GB/s", "c", "s"])
    with pytest.raises(SpecError, match="new-row"):
        val.validate(d, only=("kernel",))


def test_calibration_reproduces_the_hardware_files():
    fitted = val.calibrate(val.VALIDATION_DIR)
    assert set(fitted) == {"hopper", "blackwell"}
    assert val.check_files(fitted, val.VALIDATION_DIR) == []


def test_fast_subset_reports_every_collective_and_kernel_row(tmp_path):
    png = tmp_path / "v.png"
    r = CliRunner().invoke(app, ["validate", "--fast", "--json", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    ids = {c["id"] for c in data["cases"]}
    rows = [x for x in val.read_rows(val.VALIDATION_DIR) if x.category not in ("cluster", "e2e")]
    assert ids == {x.id for x in rows}
    calib = set().union(*val.calibration_rows(val.VALIDATION_DIR).values())
    for c in data["cases"]:
        assert c["predicted"] > 0
        assert c["relative_error"] == pytest.approx(c["predicted"] / c["published"] - 1)
        assert c["calibration"] == (c["id"] in calib)
    # calibration rows are matched (the solve is exact up to rounding in the files)
    assert all(abs(c["relative_error"]) < 0.01 for c in data["cases"] if c["calibration"])
    assert png.stat().st_size > 10_000


def test_steady_rate_of_back_to_back_steps_is_tokens_over_step_time():
    steps = pd.DataFrame({"replica": [0] * 4 + [1] * 4,
                          "start": [0, 1, 2, 3, 0, 2, 4, 6], "end": [1, 2, 3, 4, 2, 4, 6, 8],
                          "tokens": [100] * 8, "prefill_tokens": [100] * 4 + [60] * 4})
    # after warm-up 1: replica 0 runs 3 steps of 100 in 3 s, replica 1 3 steps of 60 in 6 s
    assert val.steady_rate(steps, 1.0, "input_tokens_per_s") == pytest.approx(100 + 30)
    assert val.steady_rate(steps, 1.0, "output_tokens_per_s") == pytest.approx(3 * 40 / 6)


# --------------------------------------------------------------------------- e2e (issue 19)

E2E_ROWS = [r for r in val.read_rows(val.VALIDATION_DIR) if r.category == "e2e"]
E2E_CASES = {r.id: val.read_cases(val.VALIDATION_DIR)[r.id] for r in E2E_ROWS}
SIMULATED = [r for r in E2E_ROWS if E2E_CASES[r.id]["run"] == "scenario"]


def _row_gpus(row) -> int:
    """GPUs the row's conditions name ("8x H200", "decode instance of 48 GB200 GPUs")."""
    m = re.search(r"\b(\d+)x (?:H100|H200|B200|GB200)\b", row.conditions) or \
        re.search(r"instance of (\d+) GB200", row.conditions)
    assert m, f"{row.id}: no GPU count in its conditions"
    return int(m.group(1))


def test_every_e2e_row_is_a_case_or_not_simulated_with_a_reason():
    assert len(E2E_ROWS) == 37
    for r in E2E_ROWS:
        case = E2E_CASES[r.id]
        if case["run"] == val.NOT_SIMULATED:
            assert len(case["reason"]) > 20, r.id
            continue
        assert case["run"] == "scenario", r.id
        assert case["measure"] == "generated_tokens_per_s", r.id
        path = val.VALIDATION_DIR / case["scenario"]
        assert path == val.VALIDATION_DIR / "scenarios" / "e2e" / f"{r.id}.yaml"
        assert path.read_text().startswith(f"# {r.id}: "), "the file states its row first"
    assert len(SIMULATED) >= 30
    # no scenario file without its row
    files = {p.stem for p in (val.VALIDATION_DIR / "scenarios" / "e2e").glob("*.yaml")}
    assert files == {r.id for r in SIMULATED}


def test_not_simulated_rows_are_listed_in_the_notes():
    notes = (val.VALIDATION_DIR / "e2e_notes.md").read_text()
    section = notes.split("## Not simulated", 1)[1]
    for r in E2E_ROWS:
        if E2E_CASES[r.id]["run"] == val.NOT_SIMULATED:
            assert r.id in section, r.id


@pytest.mark.parametrize("row", SIMULATED, ids=[r.id for r in SIMULATED])
def test_e2e_case_counts_what_its_row_counts(row):
    """Closed forms per row: the scenario lays out exactly the GPUs the row names; a per-GPU
    row divides the deployment's rate by them, a whole-system row by 1; the GPU generation
    is the row's."""
    from sim import api

    case = E2E_CASES[row.id]
    sc = api.load(val.VALIDATION_DIR / case["scenario"])
    n = _row_gpus(row)
    assert sc.layout.total_gpus == n
    val.check_per(row, case, "cases.yaml")
    div = val.per_divisor(case["per"], sc.layout.total_gpus, sc.hardware.gpus_per_rack)
    if row.unit == "output tokens/s/GPU":
        assert case["per"] == "gpu" and div == n
    else:
        assert row.unit == "tokens/s" and case["per"] == "system" and div == 1.0
    assert val.UNITS[row.unit] == 1.0
    gens = val.read_calibration(val.VALIDATION_DIR)
    hopper = any(f"-{g}" in row.id for g in ("h100", "h200"))
    assert val.case_generation(case, val.VALIDATION_DIR, gens) == \
        ("hopper" if hopper else "blackwell")


def test_system_rows_published_per_gpu_alongside_divide_by_the_node():
    """The DeepSeek blog prints both figures: total / 8 GPUs = the per-GPU one."""
    rows = [r for r in SIMULATED if "per-GPU figure published alongside" in r.conditions]
    assert len(rows) == 3
    for r in rows:
        per_gpu = float(re.search(r"alongside: ([\d.]+)", r.conditions).group(1))
        case = E2E_CASES[r.id]
        assert r.value / val.per_divisor("gpu", _row_gpus(r), 8) == pytest.approx(per_gpu,
                                                                                rel=1e-6)
        assert case["per"] == "system"


def test_per_divisor_closed_forms():
    assert val.per_divisor("system", 48, 72) == 1.0
    assert val.per_divisor("gpu", 48, 72) == 48.0
    assert val.per_divisor("node", 144, 8) == 18.0      # DeepSeek's 18 decode nodes
    assert val.per_divisor("node", 4, 72) == pytest.approx(4 / 72)
    with pytest.raises(SpecError):
        val.per_divisor("rack", 8, 8)


def test_per_must_match_the_unit():
    row = val.Row("x", "e2e", "q", 1.0, "output tokens/s/GPU", "c", "s")
    with pytest.raises(SpecError, match="per system"):
        val.check_per(row, {"per": "system"}, "cases.yaml")
    with pytest.raises(SpecError, match="per gpu"):
        val.check_per(val.Row("y", "e2e", "q", 1.0, "tokens/s", "c", "s"), {"per": "gpu"},
                      "cases.yaml")
    val.check_per(row, {"per": "gpu"}, "cases.yaml")


def test_generated_tokens_count_first_tokens_and_scale_per_gpu():
    """Two replicas (DP 2 of 4 GPUs each): the deployment's rate, and per GPU / 8."""
    steps = pd.DataFrame({"replica": [0, 0, 1, 1], "start": [1, 2, 1, 3], "end": [2, 3, 3, 5],
                          "tokens": [300, 100, 300, 100], "prefill_tokens": [200, 0, 200, 0],
                          "output_tokens": [102, 100, 102, 100]})
    # replica 0: 202 tokens in 2 s; replica 1: 202 tokens in 4 s
    system = val.steady_rate(steps, 1.0, "generated_tokens_per_s")
    assert system == pytest.approx(202 / 2 + 202 / 4)
    assert val.steady_rate(steps, 1.0, "output_tokens_per_s") == pytest.approx(200 / 2 + 200 / 4)
    assert system / val.per_divisor("gpu", 8, 8) == pytest.approx((101 + 50.5) / 8)
    with pytest.raises(SpecError):
        val.steady_rate(steps, 1.0, "tokens_per_s")


def _outcome(cat, gen, err, calib=False):
    row = val.Row(f"{cat}-{gen}-{err}", cat, "q", 100.0, "tokens/s", "c", "s")
    return val.Outcome(row, 100.0 * (1 + err), calib, generation=gen)


def test_summary_reports_each_generation_with_calibration_apart():
    rep = val.Report([_outcome("e2e", "hopper", 0.10), _outcome("e2e", "hopper", -0.30),
                      _outcome("e2e", "hopper", 0.20), _outcome("e2e", "blackwell", 0.50),
                      _outcome("kernel", "hopper", 0.001, calib=True),
                      _outcome("kernel", "hopper", -0.05)],
                     {"skipped": ("e2e", "why")})
    s = rep.summary()
    h = s["e2e"]["by_generation"]["hopper"]
    assert h["cases"] == 3 and h["held_out"]["cases"] == 3
    assert h["held_out"]["median_abs_error"] == pytest.approx(0.20)
    assert h["held_out"]["worst_abs_error"] == pytest.approx(0.30)
    assert h["calibration"] == {"cases": 0, "median_abs_error": None, "worst_abs_error": None}
    b = s["e2e"]["by_generation"]["blackwell"]
    assert b["held_out"]["median_abs_error"] == pytest.approx(0.50)
    assert s["e2e"]["median_abs_error"] == pytest.approx(0.25)   # all generations together
    assert s["e2e"]["not_simulated"] == 1
    k = s["kernel"]["by_generation"]["hopper"]
    assert k["calibration"]["cases"] == 1 and k["held_out"]["cases"] == 1
    assert k["held_out"]["worst_abs_error"] == pytest.approx(0.05)
    assert k["calibration"]["worst_abs_error"] == pytest.approx(0.001)
    assert set(s["kernel"]["by_generation"]) == {"hopper"}
    doc = rep.to_json()
    assert doc["not_simulated"] == [{"id": "skipped", "category": "e2e", "reason": "why"}]
    assert {c["generation"] for c in doc["cases"]} == {"hopper", "blackwell"}


def test_not_simulated_needs_a_reason_and_a_published_row(tmp_path):
    d = tmp_path / "v"
    shutil.copytree(val.VALIDATION_DIR, d)
    text = (d / "cases.yaml").read_text()
    (d / "cases.yaml").write_text(text + '  no-such-row: "a reason that is long enough"\n')
    with pytest.raises(SpecError, match="no-such-row"):
        val.validate(d, only=("kernel",))
    (d / "cases.yaml").write_text(text.replace(
        '  mlperf41-mixtral-8x7b-offline-h200x8: "', '  mlperf41-mixtral-8x7b-offline-h200x8: ""'
        ' # "'))
    with pytest.raises(SpecError, match="without a reason"):
        val.read_cases(d)


def test_fast_validate_leaves_scenarios_and_reports_skips(tmp_path):
    rep = val.validate(val.VALIDATION_DIR, only=("exchange", "kernel"))
    assert not any(o.row.category in ("e2e", "cluster") for o in rep.outcomes)
    assert set(rep.not_simulated) == {r.id for r in E2E_ROWS
                                      if E2E_CASES[r.id]["run"] == val.NOT_SIMULATED}


def test_op_timing_option_is_checked():
    r = CliRunner().invoke(app, ["validate", "--fast", "--op-timing", "exact"])
    assert r.exit_code == 2
    assert "analytical, measured or pooled" in r.output


def test_one_e2e_case_runs_shortened_with_the_op_timing_asked(tmp_path, monkeypatch):
    """Smoke: the smallest e2e case (one H100, Llama-3.1-8B) shortened to a few request
    lifetimes, through the harness with op_timing analytical."""
    from sim import api

    rid = "trtllm020-llama31-8b-fp8-h100-tp1-1k1k"
    d = tmp_path / "v"
    (d / "scenarios" / "e2e").mkdir(parents=True)
    src = (val.VALIDATION_DIR / "scenarios" / "e2e" / f"{rid}.yaml").read_text()
    short = re.sub(r"duration_s: .*", "duration_s: 80", re.sub(r"warmup_s: .*", "warmup_s: 40",
                                                               src))
    (d / "scenarios" / "e2e" / f"{rid}.yaml").write_text(short)
    seen = []
    real = api.simulate

    def spy(sc, *a, **k):
        seen.append(sc.spec.engine.op_timing)
        return real(sc, *a, **k)

    monkeypatch.setattr(api, "simulate", spy)
    v = val.predict(E2E_CASES[rid], d, op_timing="analytical")
    assert seen == ["analytical"]
    row = next(r for r in E2E_ROWS if r.id == rid)
    assert 0.2 * row.value < v < 5 * row.value     # a sane figure, not an accuracy claim
