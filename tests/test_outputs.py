"""trace.json opens in Perfetto (well-formed trace events) and the plots are drawn."""

import json
from collections import defaultdict

import pytest

from conftest import small_run
from sim.engine.simulation import simulate
from sim.results.tables import build_tables
from sim.results.write import write_results
from sim.spec import scenario_from_dict


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = small_run()
    res = simulate(scenario_from_dict(d))
    t = build_tables(res)
    out = tmp_path_factory.mktemp("run")
    write_results(res, t, out)
    return out, res, t


def test_trace_is_well_formed(run_dir):
    out, res, _ = run_dir
    data = json.loads((out / "trace.json").read_text())
    events = data["traceEvents"]
    named = {(e["pid"], e["args"]["name"].split(" (")[0]) for e in events if e["ph"] == "M"
             and e["name"] == "thread_name"}
    for r in range(res.placement.replicas):
        for s in range(res.placement.stages):
            assert (r, f"stage {s}") in named, "every stage has a named track"
    tids = [e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    assert len(tids) == len(set(tids)), "thread ids unique across processes"
    by_track = defaultdict(list)
    for e in events:
        assert e["ph"] in {"M", "X", "C", "b", "e"}
        if e["ph"] == "X":
            assert e["dur"] >= 0
            by_track[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    assert any(e["ph"] == "X" and e["cat"] == "layer" for e in events), "layers visible"
    assert any(e["ph"] == "X" and e["name"] == "dispatch" for e in events)
    for spans in by_track.values():  # nested or disjoint, never partly overlapping
        spans.sort(key=lambda x: (x[0], -x[1]))
        stack = []
        for a, b in spans:
            while stack and stack[-1] <= a + 1e-6:
                stack.pop()
            if stack:
                assert b <= stack[-1] + 1e-6, "partial overlap on one track"
            stack.append(b)
    opened = defaultdict(int)
    for e in events:
        if e["ph"] in "be" and e["ph"] != "":
            opened[e["id"]] += 1 if e["ph"] == "b" else -1
    assert opened and all(v == 0 for v in opened.values()), "async events pair up"


def test_plots_are_drawn(run_dir):
    out, _, _ = run_dir
    for name in ("latency_cdf.png", "pipeline_timeline.png", "link_utilisation.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 15_000, name


def test_tables_on_disk_match_memory(run_dir):
    import pandas as pd

    out, _, t = run_dir
    req = pd.read_csv(out / "requests.csv")
    assert len(req) == len(t.requests)
    gpus = pd.read_csv(out / "gpus.csv")
    assert len(gpus) == len(t.gpus)
    sm = json.loads((out / "summary.json").read_text())
    assert sm["requests_completed"] == t.summary["requests_completed"]


def test_trace_counters_are_bounded(run_dir):
    from sim.results.perfetto import COUNTER_BINS

    out, res, t = run_dir
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    counters = [e for e in events if e["ph"] == "C"]
    assert 0 < len(counters) <= 2 * min(COUNTER_BINS, len(t.link_series))
    assert all(0 <= e["args"]["mean"] <= 1 + 1e-9 for e in counters)
