"""Compile the engine's kernels once per installation: `python -m sim.engine.warm`.

The engine's inner loops are compiled by numba (`cache=True`) the first time they run and
kept beside their modules (or in numba's user cache), so only a fresh installation, or an
edited source file, pays for compiling them: about 20 s on a 2-core machine. The Makefile
runs this after installing, so `make run` and `make test` start with the kernels ready
(and parallel test workers do not compile the same kernels side by side).

It simulates a tiny made-up cluster (two racks, two replicas whose expert-parallel groups
span both racks over an oversubscribed fabric, and a two-stage pipeline), which reaches
every kernel: routing draws, link loads within and across domains, prepared transfers,
trains, the shared max-min solve, step plans, op timing (pooled and per kernel) and
accounting.
"""

from __future__ import annotations

import time

TOY = {
    "version": 1, "name": "warm-up", "seed": 0, "racks": 2,
    "hardware": {
        "name": "warm-up rack", "gpus_per_rack": 8,
        "gpu": {"flops": 1.0e15, "hbm_bytes": 80e9, "hbm_bandwidth": 3.0e12},
        "scale_up": {"bandwidth_per_gpu": 400e9, "latency": 2e-6, "domain_gpus": 4},
        "scale_out": {"bandwidth_per_gpu": 50e9, "latency": 5e-6,
                      "topology": "rail_optimized", "oversubscription": 2.0}},
    "model": {"name": "warm-up moe", "layers": 4, "hidden": 1024, "total_params": 4e9,
              "active_params": 1e9, "bytes_per_param": 1, "kv_bytes_per_token": 16384,
              "moe": {"experts": 8, "top_k": 2, "moe_layers": 4}},
    "workload": {"arrival": {"process": "poisson", "rate_per_s": 2000},
                 "prompt_tokens": {"dist": "fixed", "value": 64},
                 "output_tokens": {"dist": "fixed", "value": 4},
                 "duration_s": 0.02, "warmup_s": 0.0},
    "batching": {"policy": "continuous", "max_batch": 32},
    "engine": {"trace_detail_steps": 2},
}


def warm() -> float:
    """Run the toy layouts once (compiling what is not cached yet); returns seconds."""
    from ..spec.scenario import scenario_from_dict
    from .costs import op_time
    from .simulation import simulate

    t = time.perf_counter()
    decode_only = {"workload": {**TOY["workload"], "arrival": {"process": "closed",
                                                              "concurrency": 64}},
                   "batching": {**TOY["batching"], "max_batch": 64,
                                "prefill": "disaggregated"}}
    for layout, timing, more in (
            ({"expert_parallel": 8, "data_parallel": 2}, "pooled", {}),
            ({"expert_parallel": 4, "pipeline_parallel": 2, "data_parallel": 2},
             "analytical", {}),
            # attention data-parallel, decode only (the default scenario's shape)
            ({"expert_parallel": 8, "data_parallel": 2, "dense": "replicated"},
             "analytical", decode_only)):
        simulate(scenario_from_dict({**TOY, **more, "layout": layout,
                                     "engine": {**TOY["engine"], "op_timing": timing}}))
    op_time(1.0, 1.0, 1.0, 1.0)   # the scalar form (validation's kernel cases)
    return time.perf_counter() - t


if __name__ == "__main__":
    print("racksim: compiling the engine's kernels (once per installation) ...", flush=True)
    print(f"racksim: kernels ready ({warm():.1f} s)")
