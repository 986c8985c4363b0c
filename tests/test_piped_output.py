"""Output sent to a pipe or a file (`racksim ... > out.txt`): every table cell whole and
aligned, never cut with an ellipsis; and every `--json` prints one parseable document."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import BASE, REPO
from sim import validate as val

# COLUMNS is what rich falls back to off a terminal (80 without it): narrow on purpose
ENV = {**{k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")},
       "COLUMNS": "60"}


def piped(*args) -> str:
    """racksim's stdout when it is a pipe, not a terminal."""
    r = subprocess.run([sys.executable, "-m", "sim.cli", *map(str, args)], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def assert_whole(text: str, *cells: str) -> None:
    assert "…" not in text, text
    for cell in cells:
        assert re.search(rf"(?<![\w-]){re.escape(cell)}(?![\w-])", text), f"{cell!r} cut"


def test_validate_table_keeps_every_case_id_whole_and_aligned():
    text = piped("validate", "--fast")
    cases = val.read_cases(val.VALIDATION_DIR)
    ids = [r.id for r in val.read_rows(val.VALIDATION_DIR)
           if cases[r.id]["run"] in ("exchange", "kernel")]   # what --fast runs
    assert len(ids) > 20
    assert_whole(text, *ids)
    rows = [line for line in text.splitlines() if any(i in line for i in ids)]
    assert len(rows) == len(ids), "one line per case"
    assert len({len(line) for line in rows}) == 1, "columns aligned"


@pytest.mark.parametrize("args, cells", [
    (("show", "hardware", "gb200-nvl72"),
     ["50 GB/s, 5 us, rail_optimized, oversubscription 1", "0.783 / 0.896 / 0.689 / 0.939",
      "https://docs.nvidia.com/dgx-superpod/reference-architecture-scalable-infrastructure"
      "-gb200/latest/abstract.html"]),
    (("show", "model", "deepseek-v3"),
     ["58 layers x 256 experts x 3 x 7168 x 2048 (active: top 8)", "653.909 B"]),
], ids=["show-hardware", "show-model"])
def test_tables_are_whole_in_a_pipe(args, cells):
    assert_whole(piped(*args), *cells)


def test_roofline_table_is_whole_in_a_pipe():
    text = piped("roofline", "scenarios/default.yaml")
    assert_whole(text, "batch (sequences per microbatch)", "GPUs (stage x stages x replicas)")
    line = next(s for s in text.splitlines() if "memory per GPU" in s)
    assert re.search(r"GB of .* GB \((fits|DOES NOT FIT)\)", line), line


def test_show_json_carries_what_the_table_shows():
    model = json.loads(piped("show", "model", "deepseek-v3", "--json"))
    assert sum(p["total"] for p in model["parts"]) == pytest.approx(model["total_params"])
    assert model["moe"]["experts"] == 256 and model["published"]["total_params"] > 6e11
    hw = json.loads(piped("show", "hardware", "gb200-nvl72", "--json"))
    assert hw["scale_up"]["domain_gpus"] == 72 and hw["gpu"]["hbm_bytes"] == 186e9
    topo = json.loads(piped("show", "topology", "gb200-nvl72", "--racks", "2", "--json"))
    assert topo["gpus"] == 144
    presets = json.loads(piped("show", "presets", "--json"))
    assert "gb200-nvl72" in presets["hardware"] and "deepseek-v3" in presets["models"]


def test_sweep_json_lists_every_point(tmp_path):
    rows = json.loads(piped("sweep", "scenarios/default.yaml", "--set",
                            "layout.expert_parallel=32,64", "--out", tmp_path / "sw", "--json"))
    assert [r["layout.expert_parallel"] for r in rows] == [32, 64]
    assert all(r["status"] == "ok" and r["tokens_per_s_per_gpu"] > 0 for r in rows)


def test_compare_json_lists_the_best_row_per_design(tmp_path):
    scen = {**BASE, "workload": {**BASE["workload"], "duration_s": 1, "warmup_s": 0.2,
                                 "output_tokens": {"dist": "fixed", "value": 16},
                                 "prompt_tokens": {"dist": "fixed", "value": 64}},
            "batching": {"policy": "continuous", "max_batch": 64}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scen))
    hw = tmp_path / "toy.yaml"
    hw.write_text(yaml.safe_dump(BASE["hardware"]))
    rows = json.loads(piped("compare", path, "--hardware", hw, "--budget-gpus", "8",
                            "--shortlist", "1", "--confirm-s", "0.2", "--out", tmp_path / "c",
                            "--json"))
    assert [r["design"] for r in rows] == ["toy-rack"]
    assert rows[0]["tokens_per_s_per_gpu"] > 0
