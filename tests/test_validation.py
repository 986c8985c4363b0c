"""The validation harness (`racksim validate`): coverage of every published row, the
calibration reproduces the hardware files, the fast subset runs. Accuracy itself is a
measured result (`make validate`), not a test."""

from __future__ import annotations

import csv
import json
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
    rows = [x for x in val.read_rows(val.VALIDATION_DIR) if x.category != "cluster"]
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
