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

from conftest import BASE, REPO
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
    d = copy.deepcopy(BASE)
    d["racks"] = 1
    d["layout"] = {"expert_parallel": 8}
    d["workload"] = {**d["workload"], "duration_s": 0.15, "warmup_s": 0.03}
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


def test_killed_sweep_resumes_without_recomputing(sweep_scenario, tmp_path):
    folder = tmp_path / "sw"
    sets = ["layout.expert_parallel=2,4,8", "batching.max_batch=64,512",
            "workload.arrival.rate_per_s=100,300",
            "workload.duration_s=40"]  # 12 points of about a second each
    cmd = [sys.executable, "-m", "sim.cli", "sweep", str(sweep_scenario), "--mode",
           "simulate", "--workers", "2", "--out", str(folder)]
    for s in sets:
        cmd += ["--set", s]
    for attempt in range(3):  # kill it at a few different moments
        proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = len(_finished_points(folder))
        deadline = time.time() + 60
        while len(_finished_points(folder)) < before + 1 and \
                time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for name, (data, _) in _finished_points(folder).items():
            json.loads(data)  # never a half-written point
    done = _finished_points(folder)
    assert 0 < len(done) < 12, "the kills landed half-way"
    df = run_sweep(sweep_scenario, sets, folder, mode="simulate", workers=2)
    assert len(df) == 12 and (df.status == "ok").all()
    after = _finished_points(folder)
    for name, (data, mtime) in done.items():
        assert after[name] == (data, mtime), f"{name} was recomputed"


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
