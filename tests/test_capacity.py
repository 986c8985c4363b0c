"""The capacity search (sim/capacity.py, `racksim capacity`) and the closed form it starts from
(sim/estimate.py): the rate found meets the SLO and 10% more does not; no answer says why;
communication adds to the roofline step as its closed form says."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import TOY_DENSE, one_server
from sim import cli
from sim.api import simulate
from sim.capacity import at_rate, search
from sim.estimate import communication, engine_view, estimate, op_time
from sim.roofline import for_scenario
from sim.spec import scenario_from_dict
from sim.spec.slo import SLO, parse_slo
from sim.spec.errors import SpecError


def small() -> dict:
    return one_server(1.5, 0.3, 128, prompt_tokens={"dist": "fixed", "value": 512},
                      output_tokens={"dist": "fixed", "value": 32})


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["racksim", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


def test_capacity_meets_and_ten_percent_more_does_not(write_yaml, monkeypatch, capsys):
    path = write_yaml(small())
    code, text, _ = run_cli(monkeypatch, capsys, "capacity", str(path), "--slo",
                            "ttft_p99=100ms", "--json")
    assert code == 0
    doc = json.loads(text)
    assert set(doc) >= {"rate_per_s", "summary", "slo"}
    assert doc["slo"] == {"ttft_p99": 0.1}
    rate = doc["rate_per_s"]
    s = small()
    at = simulate(scenario_from_dict(at_rate(s, rate))).summary
    above = simulate(scenario_from_dict(at_rate(s, 1.1 * rate))).summary
    assert at["overloaded"] is False and at["ttft_s"]["p99"] <= 0.1
    assert above["overloaded"] is True or above["ttft_s"]["p99"] > 0.1
    # the summary printed is the run at that rate
    assert doc["summary"]["ttft_s"] == at["ttft_s"]
    assert doc["summary"]["arrival_rate"] == at["arrival_rate"]
    # every probe below the answer that was run met it; every one above failed
    for p in doc["probes"]:
        assert p["meets"] == (p["rate_per_s"] <= rate), p


def test_the_scenario_slo_is_the_default(write_yaml, monkeypatch, capsys):
    path = write_yaml({**small(), "slo": {"ttft_p99": "100 ms"}})
    code, text, _ = run_cli(monkeypatch, capsys, "capacity", str(path), "--json")
    assert code == 0 and json.loads(text)["slo"] == {"ttft_p99": 0.1}


def test_an_slo_below_the_latency_floor_has_no_answer_and_says_why(write_yaml, monkeypatch,
                                                                  capsys):
    path = write_yaml(small())
    code, text, _ = run_cli(monkeypatch, capsys, "capacity", str(path), "--slo",
                            "tpot_p99=1us")
    assert code == 1
    assert "no rate meets the SLO" in text and "TPOT p99" in text
    res = search(small(), parse_slo("tpot_p99=1us"))
    assert res.rate_per_s is None and "TPOT p99" in res.reason
    assert all(not p.meets for p in res.probes)


def test_capacity_rejects_what_it_cannot_search(write_yaml, monkeypatch, capsys, tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.1,10,10\n")
    d = small()
    d["workload"]["arrival"] = {"process": "trace", "path": str(trace)}
    code, _, err = run_cli(monkeypatch, capsys, "capacity", str(write_yaml(d)))
    assert code == 2 and "workload.arrival" in err and "Traceback" not in err
    code, _, err = run_cli(monkeypatch, capsys, "capacity", str(write_yaml(small())),
                           "--slo", "ttft_p98=1s")
    assert code == 2 and "--slo" in err and "ttft_p99" in err


def test_slo_parsing():
    assert parse_slo("tpot_p99=50ms, ttft_p99=2s").targets() == {"ttft_p99": 2.0,
                                                                  "tpot_p99": 0.05}
    assert parse_slo(None).targets() == {}
    for bad in ("speed=fast", "ttft_p99=2", "ttft_p99=-1s", "ttft_p99=1s,ttft_p99=2s",
                "ttft_p99"):
        with pytest.raises(SpecError):
            parse_slo(bad) if bad != "ttft_p99=2" else parse_slo("ttft_p99=2 parsecs")
    slo = SLO(ttft_p50=0.5, ttft_p99=2.0, tpot_p99=0.05)
    assert slo.request_limits() == {"ttft_s": 2.0, "tpot_s": 0.05}


# --------------------------------------------------------------------------- the closed form


def test_the_engine_view_adds_communication_to_the_engines_ops():
    s = scenario_from_dict(small())
    r = for_scenario(s)
    c = engine_view(s, r)
    comm = communication(s)
    assert comm.fixed_s > 0 and comm.per_token_s > 0          # EP 8: dispatch and combine
    assert c.communication_time_s == pytest.approx(comm.fixed_s + r.batch * comm.per_token_s)
    assert c.step_time_estimate_s == pytest.approx(c.op_time_s + c.communication_time_s)
    # the pooled engine rule is the roofline with attention FLOPs and the two phases apart:
    # never faster than the roofline's single max
    assert c.op_time_s >= r.step_time_s * (1 - 1e-9)
    assert c.tokens_per_s_estimate == pytest.approx(
        r.tokens_per_s * r.step_time_s / c.step_time_estimate_s)
    assert for_scenario(s).communication_time_s is None      # the pure roofline says so


def test_one_gpu_has_no_communication_and_prefill_adds_compute():
    d = small()
    d["model"], d["layout"] = TOY_DENSE, {"expert_parallel": 1}
    d["engine"] = {"op_timing": "pooled"}   # the closed form below is the pooled rule's
    s = scenario_from_dict(d)
    comm = communication(s)
    assert comm.fixed_s == 0 and comm.per_token_s == 0
    decode = estimate(s, 64, prefill=False)
    mixed = estimate(s, 64)
    assert decode.step_time_s == pytest.approx(decode.roofline_step_s)
    # 512-token prompts, 32-token answers: 16 prompt tokens per output token; the pooled
    # rule: max(compute, weights + KV) with compute x 17 against x 1
    # (the 16 x 64 prompt tokens also read KV: half their 512-token prompt each)
    compute = 2 * 64 * 13e9 / (1e15 * s.hardware.efficiency.compute)
    bw = 3.35e12 * s.hardware.efficiency.memory
    memory = (13e9 * 2 + 64 * (512 + 16) * 819200) / bw
    prefill_kv = 16 * 64 * 256 * 819200 / bw
    assert mixed.prefill_compute_s == pytest.approx(max(17 * compute, memory + prefill_kv)
                                                    - max(compute, memory))
    assert mixed.step_time_s >= decode.step_time_s
    assert mixed.requests_per_s == pytest.approx(mixed.output_tokens_per_s / 32)
