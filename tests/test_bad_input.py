"""Every user mistake: exit status 2, one paragraph naming the file and key, no traceback."""

import copy
import subprocess
import sys

import pytest
import yaml

from conftest import BASE, REPO
from sim import cli


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["racksim", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def mutate(path, value):
    d = copy.deepcopy(BASE)
    *parents, last = path
    node = d
    for k in parents:
        node = node[k]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return d


DELETE = object()

# (id, scenario dict or raw text, key path the message must name, words it must contain)
CASES = [
    ("typo-in-layout", mutate(("layout", "expert_paralel"), 8), "layout.expert_paralel",
     ["unknown key", "expert_parallel"]),
    ("typo-top-level", mutate(("workloads",), {}), "workloads", ["unknown key", "workload"]),
    ("missing-workload", mutate(("workload",), DELETE), "workload", ["missing"]),
    ("missing-version", mutate(("version",), DELETE), "version", ["missing"]),
    ("wrong-version", mutate(("version",), 2), "version", ["1"]),
    ("ep-wrong-type", mutate(("layout", "expert_parallel"), "eight"), "layout.expert_parallel",
     ["whole number"]),
    ("ep-float", mutate(("layout", "expert_parallel"), 2.5), "layout.expert_parallel",
     ["whole number"]),
    ("bad-unit", mutate(("batching", "interval"), "20 parsecs"), "batching.interval",
     ["parsecs"]),
    ("bandwidth-in-bytes", mutate(("hardware", "gpu", "hbm_bandwidth"), "3 TB"),
     "hardware.gpu.hbm_bandwidth", ["unit"]),
    ("negative-rate", mutate(("workload", "arrival", "rate_per_s"), -5),
     "workload.arrival.rate_per_s", ["greater than 0"]),
    ("zero-hbm", mutate(("hardware", "gpu", "hbm_bytes"), 0), "hardware.gpu.hbm_bytes",
     ["greater than 0"]),
    ("negative-racks", mutate(("racks",), -1), "racks", ["greater than 0"]),
    ("unknown-arrival", mutate(("workload", "arrival"), {"process": "poison", "rate_per_s": 1}),
     "workload.arrival", ["poisson"]),
    ("unknown-policy", mutate(("batching",), {"policy": "continous", "max_batch": 8}),
     "batching", ["continuous"]),
    ("too-many-gpus", mutate(("layout", "data_parallel"), 4), "layout", ["needs 64 GPUs", "16"]),
    ("ep-not-dividing", mutate(("layout", "expert_parallel"), 3), "layout.expert_parallel",
     ["does not divide", "8 experts"]),
    ("too-many-stages", mutate(("layout",), {"pipeline_parallel": 64}),
     "layout", ["64"]),
    ("does-not-fit", mutate(("hardware", "gpu", "hbm_bytes"), 2e9), "layout",
     ["needs 47 GB", "of HBM", "at least"]),
    ("unknown-hardware-preset", mutate(("hardware",), "gb200-nvl27"), "hardware",
     ["unknown preset", "gb200-nvl72"]),
    ("unknown-model-preset", mutate(("model",), "deepseek-v4"), "model",
     ["unknown preset", "deepseek-v3"]),
    ("missing-hardware-file", mutate(("hardware",), "nowhere/rack.yaml"), "hardware",
     ["not found"]),
    ("model-both-forms", mutate(("model", "architecture"), {
        "layers": 2, "hidden": 64, "vocab": 100, "ffn_hidden": 128, "dense_layers": 2,
        "attention": {"kind": "gqa", "heads": 2, "kv_heads": 2, "head_dim": 32}}),
     "model", ["either"]),
    ("warmup-after-end", mutate(("workload", "warmup_s"), 30), "workload", ["warmup_s"]),
    ("duration-and-requests", mutate(("workload", "requests"), 100), "workload",
     ["exactly one"]),
    ("uniform-reversed", mutate(("workload", "prompt_tokens"),
                                {"dist": "uniform", "low": 10, "high": 5}),
     "workload.prompt_tokens", ["exceeds"]),
    ("flops-empty-map", mutate(("hardware", "gpu", "flops"), {}), "hardware.gpu.flops",
     ["at least one precision"]),
    ("flops-absurdly-small", mutate(("hardware", "gpu", "flops"), 1e-300), "hardware.gpu.flops",
     ["too small to compute with"]),
    ("efficiency-above-one", mutate(("hardware", "efficiency"), {"compute": 1.5}),
     "hardware.efficiency.compute", ["less than or equal to 1"]),
    ("dense-with-ep", None, "layout.expert_parallel", ["dense"]),
    ("yaml-syntax", "version: 1\nlayout: {expert_parallel: 8\n", None, ["not valid YAML", "line"]),
    ("yaml-unsafe-tag", "version: !!python/object/apply:os.system ['echo pwned']\n", None,
     ["tag", "not allowed"]),
    ("yaml-duplicate-key", "version: 1\nversion: 1\n", None, ["duplicate key"]),
    ("not-a-mapping", "- just\n- a list\n", None, ["mapping"]),
]


def _dense_with_ep():
    from conftest import TOY_DENSE
    d = copy.deepcopy(BASE)
    d["model"] = TOY_DENSE
    return d


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_scenario_is_one_clean_paragraph(case, write_yaml, monkeypatch, capsys):
    name, data, key, words = case
    if name == "dense-with-ep":
        data = _dense_with_ep()
    path = write_yaml(data)
    code, out, err = run_cli(monkeypatch, capsys, "roofline", path)
    assert code == 2
    assert "Traceback" not in err and "Traceback" not in out
    assert str(path) in err, "the message names the file"
    if key is not None:
        assert f": {key}:" in err, f"the message names the key {key}: {err}"
    for w in words:
        assert w in err, f"{w!r} not in {err!r}"
    assert "Fix:" in err or name.startswith("yaml") or name == "not-a-mapping"
    assert err.strip().count("\n\n") == 0, "one paragraph"


def test_unsafe_tag_is_never_constructed(write_yaml, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    path = write_yaml(f"version: !!python/object/apply:os.system ['touch {marker}']\n")
    code, _, _ = run_cli(monkeypatch, capsys, "roofline", path)
    assert code == 2 and not marker.exists()


def test_missing_file(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "roofline", tmp_path / "nope.yaml")
    assert code == 2 and "file not found" in err


def test_bad_cli_option_value(monkeypatch, capsys, write_yaml):
    code, _, err = run_cli(monkeypatch, capsys, "roofline", write_yaml(BASE), "--batch", "-3")
    assert code == 2 and "--batch" in err


def test_unknown_model_in_show(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "show", "model", "llama-9")
    assert code == 2 and "unknown preset" in err


def test_installed_console_script_exits_2_without_traceback(write_yaml):
    """The real entry point, as a user runs it."""
    path = write_yaml(mutate(("layout", "expert_parallel"), 3))
    exe = REPO / ".venv" / "bin" / "racksim"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sim.cli"]
    proc = subprocess.run([*cmd, "roofline", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "layout.expert_parallel" in proc.stderr


def test_yaml_round_trip_of_valid_base_runs(write_yaml, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "roofline", write_yaml(BASE), "--json")
    assert code in (0, None), err
    assert yaml.safe_load(out)["fits"] is True


def test_no_request_can_ever_fit_is_rejected_at_load(write_yaml, monkeypatch, capsys):
    from conftest import TOY_DENSE
    d = copy.deepcopy(BASE)
    d.update(model=TOY_DENSE, racks=1, layout={"tensor_parallel": 1})
    d["workload"] = {**d["workload"], "prompt_tokens": {"dist": "fixed", "value": 30000},
                     "output_tokens": {"dist": "fixed", "value": 40000}}
    code, _, err = run_cli(monkeypatch, capsys, "roofline", write_yaml(d))
    assert code == 2 and "no request can ever be admitted" in err and ": workload:" in err


# ------------------------------------------------- errors that name where the value came from


def test_bad_unit_in_a_preset_override_names_the_scenario(write_yaml, monkeypatch, capsys):
    d = copy.deepcopy(BASE)
    d["hardware"] = {"preset": "hgx-h100", "gpu": {"hbm_bytes": "80 XB"}}
    path = write_yaml(d)
    code, _, err = run_cli(monkeypatch, capsys, "roofline", path)
    assert code == 2
    assert err.startswith(f"{path}: hardware.gpu.hbm_bytes: ") and "XB" in err
    assert "topologies" not in err and str(REPO) not in err.replace(str(path), "")


def test_a_broken_preset_is_named_relative_to_the_repository(write_yaml, tmp_path,
                                                            monkeypatch, capsys):
    import sim.spec.presets as presets

    root = tmp_path / "checkout"
    (root / "topologies").mkdir(parents=True)
    (root / "topologies" / "broken.yaml").write_text("name: broken\ngpu: {hbm_bytes: 1}\n")
    (root / "topologies" / "bad-yaml.yaml").write_text("name: [\n")
    monkeypatch.setattr(presets, "_REPO_ROOT", root)
    monkeypatch.setattr(presets, "_PACKAGE_DATA", tmp_path / "no-package")
    for name in ("broken", "bad-yaml"):
        d = copy.deepcopy(BASE)
        d["hardware"] = name
        code, _, err = run_cli(monkeypatch, capsys, "roofline", write_yaml(d))
        assert code == 2
        assert err.startswith(f"topologies/{name}.yaml: "), err
        assert str(tmp_path) not in err


def test_run_set_blames_the_command_line(write_yaml, monkeypatch, capsys):
    path = write_yaml(BASE)
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--set", "layout.expert_parallel=3")
    assert code == 2 and err.startswith("command line: --set layout.expert_parallel: 3 does not")
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--set", "layout.expert_paralel=4")
    assert code == 2 and "unknown key" in err and "'expert_parallel'" in err
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--set", "racks=1,2")
    assert code == 2 and "command line: --set racks: 2 values given" in err
    assert "Traceback" not in err


def test_run_set_applies_the_override(write_yaml, tmp_path, monkeypatch, capsys):
    d = copy.deepcopy(BASE)
    d["workload"] = {**d["workload"], "duration_s": 0.1, "warmup_s": 0.02}
    code, out, err = run_cli(monkeypatch, capsys, "run", write_yaml(d), "--set",
                             "layout.expert_parallel=4", "--set", "name=overridden", "--out",
                             tmp_path / "o", "--no-plots", "--json")
    assert code in (0, None), err
    summary = yaml.safe_load(out)
    assert summary["layout"]["expert_parallel"] == 4 and summary["name"] == "overridden"


def test_no_inline_placeholder_in_messages(monkeypatch, capsys):
    from sim.spec import scenario_from_dict
    from sim.spec.errors import SpecError

    with pytest.raises(SpecError) as exc:
        scenario_from_dict(mutate(("layout", "expert_parallel"), 3))
    assert str(exc.value).startswith("scenario 'toy': layout.expert_parallel: ")
    code, _, err = run_cli(monkeypatch, capsys, "collective", "all_to_all", "--hardware",
                           "hgx-h100", "--gpus", "8", "--bytes", "lots")
    assert code == 2 and err.startswith("command line: --bytes: ")


def test_a_folder_given_as_scenario(tmp_path, monkeypatch, capsys):
    (tmp_path / "b.yaml").write_text("version: 1\n")
    (tmp_path / "a.yaml").write_text("version: 1\n")
    for cmd in ("run", "roofline"):
        code, _, err = run_cli(monkeypatch, capsys, cmd, tmp_path)
        assert code == 2 and "is a folder, not a scenario file" in err
        assert f"e.g. {tmp_path / 'a.yaml'}" in err and "not found" not in err
    code, _, err = run_cli(monkeypatch, capsys, "sweep", tmp_path, "--set", "racks=1",
                           "--out", tmp_path / "sw")
    assert code == 2 and "is a folder" in err


def test_unreachable_dask_scheduler(write_yaml, tmp_path, monkeypatch, capsys):
    import sim.sweep

    monkeypatch.setattr(sim.sweep, "DASK_CONNECT_S", 0.5)
    code, out, err = run_cli(monkeypatch, capsys, "sweep", write_yaml(BASE), "--set",
                             "racks=1,2", "--dask", "tcp://127.0.0.1:1", "--out",
                             tmp_path / "sw")
    assert code == 2 and "Traceback" not in err + out
    assert err.strip().startswith("command line: --dask: cannot reach a Dask scheduler at "
                          "tcp://127.0.0.1:1")
    assert "drop --dask" in err
