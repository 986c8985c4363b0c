"""The CLI as users meet it: shipped scenarios run, schema is current, plots are written."""

import json
import sys

import pytest

from conftest import REPO
from sim import cli
from sim.spec import list_presets
from sim.spec.scenario import scenario_json_schema

SCENARIOS = sorted((REPO / "scenarios").glob("*.yaml"))


def run_ok(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["racksim", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr()
    assert exc.value.code in (0, None), out.err
    return out.out


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_shipped_scenarios_give_roofline_json(path, monkeypatch, capsys):
    data = json.loads(run_ok(monkeypatch, capsys, "roofline", path, "--json"))
    for key in ("batch", "context_tokens", "compute_time_s", "weight_time_s", "kv_time_s",
                "step_time_s", "bound", "balance_batch", "tokens_per_s",
                "tokens_per_s_per_gpu", "memory_per_gpu_bytes", "fits",
                "cost_per_million_tokens"):
        assert key in data, key
    assert data["fits"] is True
    assert data["step_time_s"] == max(data["compute_time_s"],
                                      data["weight_time_s"] + data["kv_time_s"])


def test_committed_schema_is_current():
    committed = json.loads((REPO / "docs" / "scenario.schema.json").read_text())
    assert committed == json.loads(json.dumps(scenario_json_schema())), \
        "regenerate with: racksim schema > docs/scenario.schema.json"


def test_schema_names_the_core_keys(monkeypatch, capsys):
    schema = json.loads(run_ok(monkeypatch, capsys, "schema"))
    assert {"version", "hardware", "racks", "model", "layout", "workload", "batching"} <= set(
        schema["properties"])
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("name", list_presets("models"))
def test_show_model(name, monkeypatch, capsys):
    text = run_ok(monkeypatch, capsys, "show", "model", name)
    assert "published" in text and "KV cache" in text


@pytest.mark.parametrize("name", list_presets("topologies"))
def test_show_hardware(name, monkeypatch, capsys):
    assert "HBM" in run_ok(monkeypatch, capsys, "show", "hardware", name)


def test_roofline_plot_is_written(tmp_path, monkeypatch, capsys):
    png = tmp_path / "roof.png"
    run_ok(monkeypatch, capsys, "roofline", REPO / "scenarios" / "default.yaml", "--plot", png)
    assert png.stat().st_size > 20_000  # three panels of curves, not an empty canvas
