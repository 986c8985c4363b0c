"""Serving paths: request traces, separate prefill, KV admission, CLI end to end."""

import copy
import json
import sys

import numpy as np
import pytest

from conftest import BASE
from sim import cli
from sim.engine.serving import Slot
from sim.engine.simulation import simulate
from sim.results.tables import build_tables
from sim.spec import scenario_from_dict
from sim.spec.errors import SpecError


def scenario(tmp_path=None, **over):
    d = copy.deepcopy(BASE)
    d["racks"] = 1
    d["layout"] = {"expert_parallel": 8}
    d.update(over)
    return scenario_from_dict(d, base_dir=tmp_path or __import__("pathlib").Path("."))


def test_trace_arrivals_are_replayed_exactly(tmp_path):
    rows = [(0.001 * i, 10 + i, 1 + i % 5) for i in range(50)]
    (tmp_path / "t.csv").write_text(
        "arrival_s,prompt_tokens,output_tokens\n" + "\n".join(f"{a},{p},{o}" for a, p, o in rows))
    s = scenario(tmp_path, workload={
        "arrival": {"process": "trace", "path": "t.csv"},
        "prompt_tokens": {"dist": "trace"}, "output_tokens": {"dist": "trace"},
        "duration_s": 1.0, "warmup_s": 0.0})
    t = build_tables(simulate(s))
    req = t.requests
    assert np.allclose(req.arrival_s, [r[0] for r in rows])
    assert list(req.prompt_tokens) == [r[1] for r in rows]
    assert list(req.output_tokens) == [r[2] for r in rows]
    assert (req.status == "completed").all()
    assert t.summary["input_tokens_per_s"] * 1.0 == pytest.approx(sum(r[1] for r in rows))


@pytest.mark.parametrize("content,words", [
    ("arrival_s,prompt_tokens\n0,1\n", "lacks column"),
    ("arrival_s,prompt_tokens,output_tokens\n0.5,1,1\n0.1,1,1\n", "goes backwards"),
    ("arrival_s,prompt_tokens,output_tokens\n-1,1,1\n", "negative"),
    ("arrival_s,prompt_tokens,output_tokens\n0,0,1\n", "whole number"),
    ("arrival_s,prompt_tokens,output_tokens\n0,x,1\n", "cannot read"),
    ("arrival_s,prompt_tokens,output_tokens\n", "no rows"),
])
def test_bad_traces_are_clear_errors(tmp_path, content, words):
    (tmp_path / "t.csv").write_text(content)
    s = scenario(tmp_path, workload={
        "arrival": {"process": "trace", "path": "t.csv"},
        "prompt_tokens": {"dist": "trace"}, "output_tokens": {"dist": "trace"},
        "duration_s": 1.0})
    with pytest.raises(SpecError, match=words):
        simulate(s)


def test_separate_prefill_steps_carry_no_decode():
    s = scenario(batching={"policy": "continuous", "max_batch": 32, "prefill": "separate"},
                 workload={**BASE["workload"], "duration_s": 0.3, "warmup_s": 0.0,
                           "arrival": {"process": "poisson", "rate_per_s": 200}})
    t = build_tables(simulate(s))
    st = t.steps
    mixed = st[(st.prefill_tokens > 0) & (st.tokens > st.prefill_tokens)]
    assert len(mixed) == 0
    assert (st.prefill_tokens > 0).any() and (st.prefill_tokens == 0).any()


def test_chunked_prefill_respects_chunk_budget():
    s = scenario(batching={"policy": "continuous", "max_batch": 32, "chunk_tokens": 512},
                 workload={**BASE["workload"], "duration_s": 0.3, "warmup_s": 0.0})
    st = build_tables(simulate(s)).steps
    assert st.prefill_tokens.max() <= 512


def test_kv_capacity_bounds_admission():
    """A model whose KV fills HBM after a few sequences: in-flight sequences never exceed it."""
    model = {**BASE["model"], "kv_bytes_per_token": 2e6}
    s = scenario(model=model, batching={"policy": "continuous", "max_batch": 1024},
                 workload={"arrival": {"process": "closed", "concurrency": 200},
                           "prompt_tokens": {"dist": "fixed", "value": 1000},
                           "output_tokens": {"dist": "fixed", "value": 1000},
                           "duration_s": 0.2})
    res = simulate(s)
    cap = res.kv_capacity_tokens
    assert 0 < cap < 200 * 2000
    running = build_tables(res).requests.query("status == 'running'")
    assert (running.prompt_tokens + running.output_tokens).sum() <= cap


def test_run_cli_writes_every_result_file(tmp_path, monkeypatch, capsys, write_yaml):
    d = copy.deepcopy(BASE)
    d["workload"] = {**d["workload"], "duration_s": 0.2, "warmup_s": 0.02}
    path = write_yaml(d)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["racksim", "run", str(path), "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code in (0, None), capsys.readouterr().err
    for name in ("summary.json", "requests.csv", "gpus.csv", "links.csv", "trace.json",
                 "latency_cdf.png", "pipeline_timeline.png", "link_utilisation.png"):
        assert (out / name).stat().st_size > 0, name
    sm = json.loads((out / "summary.json").read_text())
    for key in ("requests_completed", "requests_dropped", "output_tokens_per_s",
                "input_tokens_per_s", "tokens_per_s_per_gpu", "queue_wait_s", "ttft_s",
                "tpot_s", "e2e_s", "step_time_s", "bubble_fraction", "gpu_time_fraction",
                "link_utilisation", "cost_per_million_tokens", "sim_events", "wall_time_s"):
        assert key in sm, key
    assert set(sm["ttft_s"]) >= {"p50", "p90", "p99", "mean"}
    assert "requests done" in capsys.readouterr().out


def test_collective_cli_json(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["racksim", "collective", "all_to_all", "--hardware",
                                      "hgx-h800", "--gpus", "16", "--racks", "2", "--bytes",
                                      "64MB", "--json"])
    with pytest.raises(SystemExit):
        cli.main()
    data = json.loads(capsys.readouterr().out)
    assert {"time_s", "algbw_bytes_per_s", "busbw_bytes_per_s", "bottleneck"} <= set(data)
    assert data["algbw_bytes_per_s"] == pytest.approx(64e6 / data["time_s"])


def test_ctrl_c_leaves_complete_outputs_or_none(tmp_path, write_yaml):
    """SIGINT during a long run: exit 130, no partial folder, and the message says so."""
    import signal
    import subprocess

    from conftest import REPO

    d = copy.deepcopy(BASE)
    # long enough that no machine finishes it before the signal lands
    d["workload"] = {**d["workload"], "duration_s": 1e4, "warmup_s": 1}
    path = write_yaml(d)
    out = tmp_path / "out"
    from sim.engine.warm import warm

    warm()   # compiled first, as `make` does after installing (a Ctrl-C inside numba's
    #          compiler is numba's to report, not ours)
    # as from a terminal: SIGINT at its default even when the test runner was started in the
    # background (a shell starts background jobs with SIGINT ignored, and children inherit it)
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli", "run", str(path), "--out",
                             str(out)], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # off a terminal the run logs its progress: the first line says it is simulating, so the
    # signal lands mid-run however fast or slow the machine is
    first = proc.stderr.readline()
    assert "s simulated" in first, first
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "no results written" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert "Traceback" not in err


def test_rewriting_a_run_folder_replaces_it_whole(tmp_path):
    from sim.api import simulate

    d = copy.deepcopy(BASE)
    d["workload"] = {**d["workload"], "duration_s": 0.1, "warmup_s": 0.02}
    run = simulate(scenario_from_dict(d))
    out = tmp_path / "out"
    run.write(out, plots=True)
    assert (out / "latency_cdf.png").exists()
    run.write(out, plots=False)        # racksim's own folder: replaced whole
    assert not (out / "latency_cdf.png").exists() and (out / "summary.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (out / "stale.txt").write_text("a user's notes")
    with pytest.raises(SpecError, match="stale.txt"):   # never a user's file
        run.write(out, plots=False)
    run.write(out, plots=False, force=True)
    assert (out / "stale.txt").read_text() == "a user's notes"


def test_trace_streams_in_chunks_and_checks_across_them(tmp_path):
    from sim.spec.trace import iter_trace

    rows = [(0.001 * i, 5, 2) for i in range(10)]
    rows[6] = (0.0001, 5, 2)  # goes backwards inside the second chunk of 4
    (tmp_path / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n"
                                    + "\n".join(f"{a},{p},{o}" for a, p, o in rows))
    chunks = iter_trace(tmp_path / "t.csv", chunk_rows=4)
    assert len(next(chunks).arrival_s) == 4
    with pytest.raises(SpecError, match="row 8: arrival_s goes backwards"):
        next(chunks)


def test_step_token_budget_counts_decode_and_prompt_tokens():
    """max_num_tokens: a step carries at most that many tokens, decode first; prompt tokens
    get what is left, up to chunk_tokens."""
    from sim.engine.serving import Slot

    slot = Slot()
    slot.admit(np.arange(5), np.array([0, 0, 0, 100, 100]), np.array([10] * 5),
               False, np.zeros(5, dtype=np.int64))
    free = slot.plan("chunked", 64)
    capped = slot.plan("chunked", 64, step_tokens=40)
    tight = slot.plan("chunked", 64, step_tokens=2)
    assert (free.tokens, free.prefill_tokens) == (3 + 64, 64)
    assert (capped.tokens, capped.prefill_tokens) == (40, 37)
    assert (tight.tokens, tight.prefill_tokens) == (3, 0)   # decode is never starved


def test_kv_memory_fraction_scales_the_cache():
    from sim.spec.layout import weight_bytes_per_gpu

    d = copy.deepcopy(BASE)
    full = scenario_from_dict(d)
    part = scenario_from_dict({**d, "kv_cache": {"memory_fraction": 0.5}})
    free = full.hardware.gpu.hbm_bytes - weight_bytes_per_gpu(full.model, full.layout)
    assert part.kv_capacity_tokens() == pytest.approx(full.kv_capacity_tokens() / 2, abs=1)
    assert full.kv_capacity_tokens() > 0 and free > 0


def test_attention_dp_puts_whole_sequences_on_their_rank():
    """With ranks, each sequence's tokens, KV reads and pairs go to rank id % ranks, and the
    per-rank figures add up to the step's totals."""
    from sim.engine.serving import Slot

    slot = Slot()
    slot.admit(np.arange(5), np.array([0, 0, 0, 0, 100]), np.array([10] * 5), False,
               np.zeros(5, dtype=np.int64))
    slot.ctx[:] = [10, 20, 30, 40, 0]
    plan = slot.plan("chunked", 64, ranks=2)
    tokens, decode, decode_kv, prefill, prefill_kv, prefill_pairs = plan.rank_work
    assert list(tokens) == [1 + 1 + 64, 1 + 1]      # ids 0, 2 decode and 4 prefills 64
    assert list(decode) == [2, 2] and list(prefill) == [64, 0]
    assert list(decode_kv) == [10 + 30, 20 + 40] and list(prefill_kv) == [64, 0]
    assert list(prefill_pairs) == [pytest.approx(64 * 65 / 2), 0]
    # per rank, the figures add up to the step's (StepPlan.work)
    for per_rank, total in zip(plan.rank_work, plan.work()):
        assert per_rank.sum() == pytest.approx(total)
    assert plan.kv_tokens == pytest.approx(10 + 20 + 30 + 40 + 64)
    assert plan.attn_pairs == pytest.approx(100 + 64 * 65 / 2)
    assert slot.plan("chunked", 64).rank_work is None


def test_split_per_rank_is_split_tokens_rank_by_rank():
    from sim.engine.costs import split_per_rank, split_tokens

    ranks = np.array([0, 1, 7, 8, 13, 100])
    for parts in (1, 2, 4, 8):
        expect = np.concatenate([split_tokens(int(x), parts) for x in ranks])
        assert list(split_per_rank(ranks, parts)) == list(expect)


def test_token_budgets_hold_per_attention_rank():
    """Under attention DP (ranks > 1) each rank fills its own prompt budget, and a per-step
    token cap is what that rank's decoding sequences leave of it (TensorRT-LLM's
    max_num_tokens per attention-DP rank); one rank is the old per-replica budget."""
    def slot():
        s = Slot()
        # ids 0..3: 0 and 2 on rank 0, 1 and 3 on rank 1 (id % 2); 2 and 3 decode already
        s.admit(np.arange(4), np.array([150, 150, 10, 10]), np.array([5, 5, 5, 5]))
        s.pre[2:] = 0
        return s
    p = slot().plan("chunked", 100, None, ranks=2)
    assert list(p.take) == [100, 100, 0, 0] and p.prefill_tokens == 200
    assert list(p.rank_work[3]) == [100.0, 100.0]           # prompt tokens per rank
    p1 = slot().plan("chunked", 100, None, ranks=1)
    assert list(p1.take) == [100, 0, 0, 0]
    # cap 60 per rank: one decoding sequence on each leaves 59 prompt tokens
    p = slot().plan("chunked", 100, 60, ranks=2)
    assert list(p.take) == [59, 59, 0, 0]


def test_a_ctrl_c_inside_a_compiled_kernel_is_still_a_ctrl_c():
    """numba reports a KeyboardInterrupt raised in its call back into Python as a SystemError
    caused by it: the CLI treats that as the Ctrl-C it is, and nothing else as one."""
    from sim.cli import _interrupted

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as k:
            raise SystemError("returned a result with an exception set") from k
    except SystemError as e:
        assert _interrupted(e)
    assert not _interrupted(SystemError("a real one"))
    assert _interrupted(KeyboardInterrupt())
