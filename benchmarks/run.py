"""Benchmark: simulated seconds per wall second and events per second for the reference
scenarios, next to this machine's bare SimPy event rate measured in the same process.

    make bench            # or: python benchmarks/run.py [SCENARIO ...]

Writes benchmarks/results.json and prints a table. Timings live here, never in tests.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from pathlib import Path

import simpy

HERE = Path(__file__).resolve().parent
DEFAULT = [HERE.parent / "scenarios" / "default.yaml"]


def bare_simpy_rate(n: int = 300_000) -> float:
    """Events per second of a bare `env.timeout` loop in this interpreter."""
    env = simpy.Environment()

    def loop():
        for _ in range(n):
            yield env.timeout(1)

    env.process(loop())
    t = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - t)


def bench(path: Path) -> dict:
    from sim.engine.simulation import Simulation
    from sim.spec import load_scenario

    s = load_scenario(path)
    sim = Simulation(s)
    t = time.perf_counter()
    res = sim.run()
    wall = time.perf_counter() - t
    simulated = res.window[1]
    return {"scenario": str(path.relative_to(HERE.parent)), "gpus": s.layout.total_gpus,
            "simulated_s": simulated, "wall_s": wall,
            "sim_s_per_wall_s": simulated / wall, "events": res.sim_events,
            "events_per_s": res.sim_events / wall, "network_solves": res.network.solves,
            "steps": int(len(res.steps["start"]))}


def main(argv: list[str]) -> None:
    paths = [Path(a).resolve() for a in argv] or DEFAULT
    bare = bare_simpy_rate()
    rows = [bench(p) for p in paths]
    for r in rows:
        r["events_vs_bare_simpy"] = r["events_per_s"] / bare
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"machine": platform.platform(), "python": platform.python_version(),
           "bare_simpy_events_per_s": bare, "peak_rss_mb": peak_mb, "runs": rows}
    (HERE / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"bare SimPy: {bare:,.0f} events/s; peak RSS {peak_mb:,.0f} MB")
    print(f"{'scenario':40} {'GPUs':>5} {'sim s/wall s':>12} {'events/s':>10} {'vs bare':>8}")
    for r in rows:
        print(f"{r['scenario']:40} {r['gpus']:>5} {r['sim_s_per_wall_s']:>12.3f} "
              f"{r['events_per_s']:>10,.0f} {r['events_vs_bare_simpy']:>8.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
