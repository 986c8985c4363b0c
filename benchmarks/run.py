"""Benchmarks: simulated seconds per wall second, events per second against this machine's
bare SimPy rate (measured in each scenario's own process just before it runs), peak memory,
and wall time per simulated second against GPU count, for the reference scenarios in
benchmarks/scenarios/ (S, M, L).

Events are counted two ways: SimPy events the loop processed, and "resolved" events, which
add the waits and transfers layer trains resolved without the loop (each is at least one
SimPy event when the same run goes flow by flow; `engine.layer_trains: false`).

    make bench                                  # every reference scenario, as committed
    python benchmarks/run.py --repeat 3         # three interleaved rounds, median and range
    python benchmarks/run.py --duration 5 S M-dp4   # quicker: 5 simulated s after warm-up
    python benchmarks/run.py --duration 2 --profile M-pp2-dp2   # where the time goes

Each scenario runs in its own process so its peak memory is its own. Writes
benchmarks/results.json and prints a table. Timings live here, never in pass/fail tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"   # the references (issue 8); `make bench` runs these
EXTRA = HERE / "extra"           # by name only (e.g. the contended path)
# numpy's thread pools, capped at one thread in the scenario processes
ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def bare_simpy_rate(n: int = 500_000, work=None) -> float:
    """Events per second of a bare `env.timeout` loop in this interpreter; with `work`, a
    call of it per event (the floor for an engine whose events do that much)."""
    import simpy

    env = simpy.Environment()

    def loop():
        for _ in range(n):
            if work is not None:
                work()
            yield env.timeout(1)

    env.process(loop())
    t = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - t)


def one_numpy_op_rate() -> float:
    """The bare loop with one numpy reduction over 64 numbers per event: what any event
    that touches a link array costs at least."""
    import numpy as np

    a = np.random.default_rng(0).random(64)
    return bare_simpy_rate(work=a.sum)


def one(path: str, duration: float | None, profile: bool = False) -> dict:
    """Run one scenario in this process and return its figures (called in a child), with
    the bare SimPy rate measured in the same process just before. Pinned to one core (the
    targets are per core; the parent also caps numpy's thread pools at one)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    bare = bare_simpy_rate()
    import sim.api as rs

    over = {}
    if duration is not None:
        warm = rs.load(path).workload.warmup_s
        over["workload.duration_s"] = warm + duration
    s = rs.load(path, **over)
    from sim.engine.simulation import Simulation

    sim = Simulation(s)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t = time.perf_counter()
    res = sim.run()
    wall = time.perf_counter() - t
    if prof is not None:   # the figures of a profiled run carry the profiler's overhead
        import pstats

        prof.disable()
        out = HERE / f"profile-{Path(path).stem}.pstats"
        prof.dump_stats(out)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        print(f"profile written to {out}", file=sys.stderr)
    simulated = res.window[1]
    return {"scenario": Path(path).stem, "gpus": s.layout.total_gpus,
            "simulated_s": simulated, "wall_s": wall, "sim_s_per_wall_s": simulated / wall,
            "wall_s_per_sim_s": wall / simulated, "events": res.sim_events,
            "events_per_s": res.sim_events / wall, "network_solves": res.network.solves,
            "train_events": res.network.train_events,
            "resolved_events_per_s": (res.sim_events + res.network.train_events) / wall,
            "steps": int(len(res.steps["start"])),
            "output_tokens_per_s": res.output_tokens / (res.window[1] - res.window[0]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "bare_simpy_events_per_s": bare,
            "events_vs_bare_simpy": res.sim_events / wall / bare,
            "resolved_events_vs_bare_simpy": (res.sim_events + res.network.train_events)
            / wall / bare}


def all_to_all_576() -> dict:
    """One all-to-all among 576 GPUs (EP over eight GB200 NVL72 racks), timed in a fresh
    process: the first call pays the one-off loading of the compiled kernels from numba's
    cache (`first_call_wall_s`); the figure is the median of five calls after it."""
    from sim.engine.microbench import run_collective
    from sim.spec import load_hardware

    hw = load_hardware("gb200-nvl72")
    walls = []
    for _ in range(6):
        t = time.perf_counter()
        r = run_collective(hw, "all_to_all", 576, 576 * 7168 * 8.0, domains=8)
        walls.append(time.perf_counter() - t)
    return {"wall_s": sorted(walls[1:])[2], "first_call_wall_s": walls[0],
            "simulated_time_s": r.time_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="scenario names in benchmarks/scenarios/")
    ap.add_argument("--duration", type=float, help="simulated seconds after warm-up")
    ap.add_argument("--profile", action="store_true",
                    help="profile each run (cProfile): top functions printed, "
                         "benchmarks/profile-NAME.pstats written; timings then include "
                         "the profiler's overhead")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per scenario, in interleaved rounds (a shared machine's "
                         "speed drifts); each row is the median run, all runs are kept")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--a2a", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(one(a.child, a.duration, a.profile)))
        return
    if a.a2a:
        print(json.dumps(all_to_all_576()))
        return
    names = a.names or sorted(p.stem for p in SCENARIOS.glob("*.yaml"))
    bare = bare_simpy_rate()
    floor = one_numpy_op_rate()
    runs: dict = {name: [] for name in names}
    for _ in range(max(a.repeat, 1)):
        for name in names:
            path = SCENARIOS / f"{name}.yaml"
            if not path.exists() and (EXTRA / f"{name}.yaml").exists():
                path = EXTRA / f"{name}.yaml"
            cmd = [sys.executable, __file__, "--child", str(path)] + \
                (["--profile"] if a.profile else [])
            if a.duration is not None:
                cmd += ["--duration", str(a.duration)]
            env = {**os.environ, **{k: "1" for k in ONE_THREAD}}
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            if a.profile:
                print(done.stderr, flush=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            runs[name].append(row)
            print(f"{name}: {row['sim_s_per_wall_s']:.3f} simulated s per wall s", flush=True)
    rows = []
    for name in names:   # the median run (by speed), with every run's speed beside it
        by_speed = sorted(runs[name], key=lambda r: r["sim_s_per_wall_s"])
        row = by_speed[(len(by_speed) - 1) // 2]
        row["sim_s_per_wall_s_runs"] = [r["sim_s_per_wall_s"] for r in runs[name]]
        rows.append(row)
    a2a = json.loads(subprocess.run([sys.executable, __file__, "--a2a"], capture_output=True,
                                    text=True, check=True).stdout)
    small = min(rows, key=lambda r: r["gpus"]) if rows else None
    for r in rows:
        r["wall_per_sim_s_vs_smallest"] = r["wall_s_per_sim_s"] / small["wall_s_per_sim_s"]
        r["gpus_vs_smallest"] = r["gpus"] / small["gpus"]
    result = {"machine": platform.platform(), "python": platform.python_version(),
              "bare_simpy_events_per_s": bare,
              "simpy_with_one_numpy_op_per_event_per_s": floor,
              "one_numpy_op_vs_bare": floor / bare, "all_to_all_576_gpus": a2a,
              "duration_override_s": a.duration, "runs": rows}
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nbare SimPy: {bare:,.0f} events/s ({floor / bare:.2f} of it with one numpy "
          f"reduction per event); one 576-GPU all-to-all: {a2a['wall_s'] * 1e3:.1f} ms wall "
          f"({a2a['first_call_wall_s'] * 1e3:.0f} ms as a fresh process's first compiled call)")
    print(f"{'scenario':12} {'GPUs':>5} {'sim s/wall s':>12} {'(range)':>13} {'events/s':>10} "
          f"{'vs bare':>8} {'resolved/s':>11} {'vs bare':>8} {'wall/sim vs S':>13} "
          f"{'peak MB':>8}")
    for r in rows:
        lo, hi = min(r["sim_s_per_wall_s_runs"]), max(r["sim_s_per_wall_s_runs"])
        print(f"{r['scenario']:12} {r['gpus']:>5} {r['sim_s_per_wall_s']:>12.3f} "
              f"{f'{lo:.2f}-{hi:.2f}':>13} "
              f"{r['events_per_s']:>10,.0f} {r['events_vs_bare_simpy']:>8.3f} "
              f"{r['resolved_events_per_s']:>11,.0f} {r['resolved_events_vs_bare_simpy']:>8.3f} "
              f"{r['wall_per_sim_s_vs_smallest']:>13.1f} {r['peak_rss_mb']:>8,.0f}")


if __name__ == "__main__":
    main()
