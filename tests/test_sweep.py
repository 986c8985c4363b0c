"""Sweeps: grid parsing, infeasible points, resume after SIGKILL, identical rows on Dask."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import BASE, REPO, small_run
from sim.api import apply_overrides, load
from sim.spec.errors import SpecError
from sim.sweep import grid, parse_set, run_sweep, split_values


def test_parse_set_reads_yaml_scalars():
    assert parse_set("layout.expert_parallel=16,32") == ("layout.expert_parallel", [16, 32])
    assert parse_set("batching.interval=20 ms,0.01")[1] == ["20 ms", 0.01]
    assert split_values('1,[0,1],"a,b"') == ["1", "[0,1]", '"a,b"']
    assert len(grid(["a=1,2,3", "b=x,y"])) == 6
    with pytest.raises(SpecError):
        parse_set("layout.expert_parallel")
    with pytest.raises(SpecError, match="replaces the whole mapping"):
        grid(["batching={policy: continuous, max_batch: 8}", "batching.max_batch=1,2"])


def test_api_plot_functions(tmp_path):
    from sim.api import plot_roofline, plot_run, simulate

    s = load(REPO / "scenarios" / "default.yaml", **{"workload.duration_s": 0.1,
                                                     "workload.warmup_s": 0.02})
    files = plot_run(simulate(s), tmp_path)
    assert len(files) == 3 and all(f.stat().st_size > 10_000 for f in files)
    assert plot_roofline(s, tmp_path / "r.png").stat().st_size > 10_000


def test_overrides_reach_into_presets():
    d = apply_overrides({"hardware": "hgx-h100"}, {"hardware.gpu.hbm_bytes": 1})
    assert d["hardware"] == {"preset": "hgx-h100", "gpu": {"hbm_bytes": 1}}
    s = load(REPO / "scenarios" / "default.yaml", **{"hardware.gpu.hbm_bytes": 200e9,
                                                     "layout.expert_parallel": 32})
    assert s.hardware.gpu.hbm_bytes == 200e9 and s.layout.expert_parallel == 32
    assert s.hardware.gpu.hbm_bandwidth == 8e12, "the rest of the preset stays"


@pytest.fixture
def sweep_scenario(write_yaml):
    """Short requests at a load every point of SETS keeps up with (status ok)."""
    d = small_run()
    d["racks"] = 1
    d["layout"] = {"expert_parallel": 8}
    d["workload"] = {**d["workload"], "duration_s": 0.2, "warmup_s": 0.03,
                     "prompt_tokens": {"dist": "fixed", "value": 256}}
    return write_yaml(d)


SETS = ["layout.expert_parallel=2,4,8,3", "batching.max_batch=64,512",
        "workload.arrival.rate_per_s=100,300"]  # 16 points, 4 infeasible (EP 3)


def test_sweep_records_every_point_and_reasons(sweep_scenario, tmp_path):
    df = run_sweep(sweep_scenario, SETS, tmp_path / "sw", mode="roofline", workers=1)
    assert len(df) == 16
    assert (df.status == "infeasible").sum() == 4
    assert df.loc[df.status == "infeasible", "reason"].str.contains("does not divide").all()
    again = pd.read_parquet(tmp_path / "sw" / "results.parquet")
    assert len(again) == 16 and set(again.columns) == set(df.columns)


def _finished_points(folder):
    out = {}
    for p in (folder / "points").glob("*.json"):
        out[p.name] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def _sweep_cmd(scenario, folder, sets, *extra):
    cmd = [sys.executable, "-m", "sim.cli", "sweep", str(scenario), "--mode", "simulate",
           "--out", str(folder), *extra]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def test_killed_sweep_resumes_without_recomputing(sweep_scenario, tmp_path):
    """The sweep SIGKILLs itself and its workers right after writing its second point (the
    RACKSIM_SWEEP_KILL_AFTER hook, so the state at the kill is exact), twice; each run adds
    two points to the ones kept, and the last computes only the rest."""
    folder = tmp_path / "sw"
    sets = ["layout.expert_parallel=4,8", "batching.max_batch=64,512",
            "workload.arrival.rate_per_s=100,300"]  # 8 points
    cmd = _sweep_cmd(sweep_scenario, folder, sets, "--workers", "2")
    env = {**os.environ, "RACKSIM_SWEEP_KILL_AFTER": "2"}
    kept: dict = {}
    for expected in (2, 4):
        proc = subprocess.run(cmd, cwd=REPO, env=env, start_new_session=True,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        done = _finished_points(folder)
        assert len(done) == expected, "a resumed sweep recomputed points it had"
        for data, _ in done.values():
            json.loads(data)  # never a half-written point
        assert all(done[name] == v for name, v in kept.items()), "a kept point was rewritten"
        kept = done
    df = run_sweep(sweep_scenario, sets, folder, mode="simulate", workers=2)
    assert len(df) == 8 and (df.status == "ok").all(), df[["status", "reason"]]
    after = _finished_points(folder)
    assert len(after) == 8
    for name, (data, mtime) in kept.items():
        assert after[name] == (data, mtime), f"{name} was recomputed"


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["kill", "ctrl-c"])
def test_stopped_sweep_ends_its_workers_and_says_how_to_resume(sweep_scenario, tmp_path, sig,
                                                               code):
    """SIGTERM to the sweep alone (`kill PID`), or SIGINT to its whole process group (Ctrl-C
    in a terminal), while a worker is inside a point that would outlast any test: the workers
    end with it, the finished point stays, and one line says how to resume."""
    psutil = pytest.importorskip("psutil")
    folder = tmp_path / "sw"
    cmd = _sweep_cmd(sweep_scenario, folder, ["workload.duration_s=0.1,1e6"], "--workers", "2")
    # as from a terminal: SIGINT at its default even when the test runner was started in the
    # background (a shell starts background jobs with SIGINT ignored, and children inherit it)
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300   # a guard against a hang, not a timing assumption
        while not _finished_points(folder) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and len(_finished_points(folder)) == 1
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers, "the pool's processes"
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err
    assert "Traceback" not in err + out and "KeyboardInterrupt" not in err
    assert "1 of 2 points done" in err
    assert "run the same command again: racksim sweep" in err and f"--out {folder}" in err
    left = [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"worker processes outlived the sweep: {left}"
    assert len(_finished_points(folder)) == 1


def test_unknown_set_key_stops_the_sweep_before_any_point(sweep_scenario, tmp_path,
                                                          monkeypatch, capsys):
    from sim import cli

    out = tmp_path / "x"
    monkeypatch.setattr(sys, "argv", ["racksim", "sweep", str(sweep_scenario), "--set",
                                      "layout.expert_paralel=16,32", "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "command line: --set layout.expert_paralel: unknown key" in err
    assert "did you mean 'expert_parallel'" in err.lower() and "Traceback" not in err
    assert not out.exists(), "nothing ran, nothing was written"


def test_set_keys_into_presets_and_unions_are_known():
    from sim.sweep import check_keys

    check_keys(["hardware.gpu.hbm_bytes", "hardware.preset", "model.moe.experts",
                "workload.arrival.rate_per_s", "batching.interval", "hardware.gpu.flops.fp8"])
    for bad, part in (("hardware.gpu.hbm_byte", "hbm_bytes"), ("layuot.expert_parallel", "layout"),
                      ("workload.arrival.rate", "rate_per_s")):
        with pytest.raises(SpecError, match="unknown key") as exc:
            check_keys([bad])
        assert exc.value.key == f"--set {bad}" and part in exc.value.fix


def test_verdict_marks_overload_and_empty_runs():
    from sim.sweep import verdict

    over = verdict({"overloaded": True, "arrival_rate": 300.0, "completion_rate": 100.0,
                    "requests_completed": 50})
    assert over["status"] == "overloaded" and "300/s" in over["reason"]
    assert "100/s" in over["reason"]
    older = verdict({"overloaded": True, "arrival_rate_per_s": 30.0, "service_rate_per_s": 1.0})
    assert older["status"] == "overloaded" and "30/s" in older["reason"]
    empty = verdict({"overloaded": False, "requests_completed": 0, "arrival_rate": 5.0,
                     "completion_rate": 0.0})
    assert empty["status"] == "no_completions" and "no request completed" in empty["reason"]
    assert verdict({"overloaded": False, "requests_completed": 3}) == {"status": "ok",
                                                                       "reason": None}


def test_sweep_table_shows_status_and_headlines(sweep_scenario, tmp_path, monkeypatch, capsys):
    """A point whose arrivals outpace completions is `overloaded`, in the table too, and
    shows no price; the one that keeps up is `ok` with its figures."""
    from sim import cli

    monkeypatch.setattr(sys, "argv", [
        "racksim", "sweep", str(sweep_scenario), "--mode", "simulate", "--workers", "1",
        "--set", "workload.arrival.rate_per_s=100,20000", "--out", str(tmp_path / "sw")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr().out
    assert exc.value.code in (0, None)
    df = pd.read_parquet(tmp_path / "sw" / "results.parquet")
    assert list(df.status) == ["ok", "overloaded"], df[["status", "reason"]]
    assert "arrivals" in df.reason[1] and df.overloaded[1]
    for head in ("workload.arrival.rate_per_s", "status", "tok/s/GPU", "TTFT p99",
                 "TPOT p99", "overloaded"):
        assert head in out
    rows = [line for line in out.splitlines() if "20000" in line]
    assert len(rows) == 1 and "overloaded" in rows[0] and "yes" in rows[0]
    assert "1 ok, 1 overloaded" in out or "1 overloaded, 1 ok" in out


def test_dask_gives_identical_rows(sweep_scenario, tmp_path):
    from dask.distributed import LocalCluster

    sets = ["layout.expert_parallel=2,4,8", "batching.max_batch=64,512",
            "workload.arrival.rate_per_s=100,300"]  # 12 points
    local = run_sweep(sweep_scenario, sets, tmp_path / "local", mode="simulate", workers=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        remote = run_sweep(sweep_scenario, sets, tmp_path / "dask", mode="simulate",
                           dask_address=cluster.scheduler_address)
    pd.testing.assert_frame_equal(local, remote)
    assert len(local) == 12 and (local.status == "ok").all()
