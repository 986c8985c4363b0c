"""The measured op-timing back end (sim/engine/measured.py): at and between measured shapes a
kernel takes the time the tables say (here synthetic tables made from the analytical model
times a known factor, so the answer is a closed form); where the data or the GPU are not
covered, the run is the analytical one and says so."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sim.api import load, simulate
from sim.calibration import fit
from sim.engine import kernels as kn
from sim.engine import measured
from sim.engine.costs import layer_costs
from sim.spec import load_hardware, load_model

H100 = load_hardware("hgx-h100")
SLOPE = 0.1   # measured = analytical x shape ** SLOPE: log-linear, so interpolation is exact


def scenario(**over):
    d = {"version": 1, "name": "measured", "seed": 0, "hardware": "hgx-h100", "racks": 1,
         "model": {"preset": "llama-3.1-70b", "weight_precision": "fp8",
                   "kv_precision": "fp8"},
         "layout": {"tensor_parallel": 2},
         "workload": {"arrival": {"process": "closed", "concurrency": 32},
                      "prompt_tokens": {"dist": "fixed", "value": 512},
                      "output_tokens": {"dist": "fixed", "value": 64},
                      "duration_s": 2.0, "warmup_s": 0.5},
         "batching": {"policy": "continuous", "max_batch": 32},
         "engine": {"op_timing": "measured"}}
    d.update(over)
    return load(d)


def synthetic_tables(model, t: int) -> dict[str, pd.DataFrame]:
    """Rows at the model's own GEMM and attention shapes, latency = the fit's (the engine's)
    analytical time x shape ** SLOPE (shape: m for GEMMs, batch x length for attention)."""
    kernels = kn.dense_kernels(model, model.architecture, t)
    lead = {"system": "h100_sxm", "framework": "trtllm", "version": "x",
            "kernel_source": "torch_flow"}
    gemm = pd.DataFrame([dict(lead, dtype="fp8", m=m, n=k.shape[0], k=k.shape[1])
                         for k in kernels if k.cls == kn.GEMM for m in (1, 16, 256, 4096)])
    a = model.architecture.attention
    heads, kv = a.heads / t, a.kv_heads / min(t, a.kv_heads)
    rows = []
    for phase in ("generation", "context"):
        for b in (1, 8, 64):
            for n in (128, 1024, 8192):
                q, kvl = (1, n) if phase == "generation" else (n, n)
                rows.append(dict(lead, dtype="bfloat16", phase=phase, kv_dtype="fp8",
                                 batch=b, q_len=q, kv_len=kvl, heads=heads, kv_heads=kv,
                                 head_dim=a.head_dim, window=0))
    attn = pd.DataFrame(rows)
    params, gpu = H100.efficiency.kernels, H100.gpu
    gemm["latency_s"] = fit.predict("gemm", fit.shapes("gemm", gemm), params, gpu) \
        * gemm["m"] ** SLOPE
    for phase, cls in (("generation", "attention"), ("context", "attention_prefill")):
        m = attn["phase"] == phase
        x = attn[m]
        length = x["kv_len"] if phase == "generation" else x["q_len"]
        attn.loc[m, "latency_s"] = fit.predict(cls, fit.shapes(cls, x), params, gpu) * (
            x["batch"] * length) ** SLOPE
    empty = pd.DataFrame(columns=["dtype", "phase", "kv_dtype", "heads", "latency_s"])
    return {"gemm": gemm, "attention": attn, "mla": empty, "moe": empty}


@pytest.fixture
def covered(monkeypatch):
    model = load_model({"preset": "llama-3.1-70b", "weight_precision": "fp8",
                        "kv_precision": "fp8"})
    tables = synthetic_tables(model, 2)
    monkeypatch.setattr(measured, "_tables", lambda root, system: tables)
    monkeypatch.setattr(measured, "available", lambda root=None: None)
    return model


def test_kernels_take_the_measured_time_between_measured_shapes(covered):
    s = scenario()
    an = layer_costs(s.model, s.hardware, s.layout, s.spec.moe, "bf16", True, "analytical")
    me = layer_costs(s.model, s.hardware, s.layout, s.spec.moe, "bf16", True, "measured")
    assert me.measured is not None and not me.timing_warnings
    # the step: 100 tokens through the GEMMs, 40 decoding sequences of 700 tokens, four
    # 512-token prompts (shapes between the measured grid points)
    pairs = 4 * 512 * 513 / 2
    work = kn.StepWork(*(np.array([x]) for x in (100.0, 40.0, 40.0 * 700, 2048.0, 2048.0,
                                                  pairs)))
    # TP shards the dense part: each GPU runs the step's work over TP on its slice
    assert me.dense_sharded and me.tp == 2
    w = work.scaled(0.5)
    k = an.dense_kernels
    want = 0.0
    for i in range(len(k.names)):
        t = kn.layer_time(w, k.subset(i))[0][0]
        c = int(k.cls[i])
        if c == kn.GEMM:
            t *= 50.0 ** SLOPE                                # m
        elif c == kn.ATTENTION:
            t *= (20.0 * 700) ** SLOPE                        # sequences x context
        elif c == kn.ATTENTION_PREFILL:
            length = 2 * (pairs / 2) / 1024.0                 # L = 2 Q / P = 513
            t *= (1024.0 / length * length) ** SLOPE          # (P / L) x L
        want += t
    got = me.dense_phase(work)[0][0]
    assert got == pytest.approx(want, rel=1e-9)
    assert got > an.dense_phase(work)[0][0]


def test_a_run_without_measured_data_is_the_analytical_run_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv(measured.ENV, str(tmp_path))      # a folder with no data
    a = simulate(scenario(engine={"op_timing": "analytical"}))
    m = simulate(scenario())
    assert a.steps.equals(m.steps)
    w = m.summary["warnings"]
    assert any("engine.op_timing measured" in x and "no measured kernel data" in x
               and measured.ENV in x for x in w)
    assert not a.summary["warnings"]


def test_hardware_nobody_measured_runs_analytical_and_says_so(covered):
    custom = {"preset": "hgx-h100", "name": "my rack"}
    m = simulate(scenario(hardware=custom))
    a = simulate(scenario(hardware=custom, engine={"op_timing": "analytical"}))
    assert a.steps.equals(m.steps)
    assert any("my rack" in x and "analytical" in x for x in m.summary["warnings"])


def test_a_covered_run_differs_from_the_analytical_one(covered):
    a = simulate(scenario(engine={"op_timing": "analytical"}))
    m = simulate(scenario())
    assert not m.summary["warnings"]
    # every kernel measured slower (shape ** SLOPE > 1 beyond one row): longer steps
    assert m.steps["end"].sub(m.steps["start"]).mean() > \
        a.steps["end"].sub(a.steps["start"]).mean()


def test_corrections_interpolate_in_the_logs_and_hold_beyond_the_edges():
    c = measured._grid_curve([np.log([1.0, 10.0, 100.0])], np.array([0.0, 0.5, 1.0]))
    assert c(np.array([np.sqrt(10.0)]))[0] == pytest.approx(0.25)
    assert c(np.array([1e4]))[0] == 1.0 and c(np.array([0.01]))[0] == 0.0
    # two shape variables, one grid cell never measured: it takes its nearest measured cell's
    keys = [np.log([1.0, 1.0, 10.0]), np.log([5.0, 50.0, 5.0])]
    g = measured._grid_curve(keys, np.array([0.1, 0.2, 0.3]))
    assert g.values.shape == (2, 2) and not np.isnan(g.values).any()
    assert g(np.array([10.0]), np.array([50.0]))[0] in (0.2, 0.3)
    # repeated measurements of one cell average
    r = measured._grid_curve([np.log([2.0, 2.0])], np.array([0.2, 0.4]))
    assert r(np.array([2.0]))[0] == pytest.approx(0.3)
