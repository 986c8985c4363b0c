"""Shared fixtures: small scenario dictionaries users would write."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TOY_HARDWARE = {
    "name": "toy-rack",
    "gpu": {"flops": 1.0e15, "hbm_bytes": 80e9, "hbm_bandwidth": 3.35e12},
    "gpus_per_rack": 8,
    "scale_up": {"bandwidth_per_gpu": 450e9, "latency": 2e-6},
    "scale_out": {"bandwidth_per_gpu": 50e9, "latency": 10e-6, "oversubscription": 1.0},
}

TOY_MOE = {
    "name": "toy-moe", "layers": 32, "hidden": 4096, "total_params": 47e9,
    "active_params": 13e9, "bytes_per_param": 1, "kv_bytes_per_token": 131072,
    "moe": {"experts": 8, "top_k": 2, "moe_layers": 32},
}

TOY_DENSE = {
    "name": "toy-dense", "layers": 40, "hidden": 5120, "total_params": 13e9,
    "active_params": 13e9, "bytes_per_param": 2, "kv_bytes_per_token": 819200,
}

BASE = {
    "version": 1,
    "name": "toy",
    "seed": 0,
    "hardware": TOY_HARDWARE,
    "racks": 2,
    "model": TOY_MOE,
    "layout": {"expert_parallel": 8, "tensor_parallel": 1, "pipeline_parallel": 2,
               "data_parallel": 1, "microbatches": 2},
    "workload": {
        "arrival": {"process": "poisson", "rate_per_s": 40},
        "prompt_tokens": {"dist": "fixed", "value": 2048},
        "output_tokens": {"dist": "fixed", "value": 256},
        "duration_s": 20, "warmup_s": 2,
    },
    "batching": {"policy": "fixed_interval", "interval": "20 ms", "max_batch": 4096},
    "price_per_gpu_hour": 2.5,
}


@pytest.fixture
def base() -> dict:
    return copy.deepcopy(BASE)


@pytest.fixture
def write_yaml(tmp_path):
    def write(data, name: str = "scenario.yaml") -> Path:
        p = tmp_path / name
        p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return p
    return write


def small_run() -> dict:
    """BASE shortened to a fraction of a second with short outputs, so requests finish."""
    d = copy.deepcopy(BASE)
    d["workload"] = {**d["workload"], "duration_s": 0.4, "warmup_s": 0.05,
                     "output_tokens": {"dist": "fixed", "value": 4},
                     "arrival": {"process": "poisson", "rate_per_s": 300}}
    d["batching"] = {"policy": "continuous", "max_batch": 64}
    return d


def one_server(duration_s: float, warmup_s: float, max_batch: int, **workload) -> dict:
    """BASE on one toy server (EP 8), continuous batching, with workload keys replaced."""
    d = copy.deepcopy(BASE)
    d["racks"], d["layout"] = 1, {"expert_parallel": 8}
    d["workload"] = {**d["workload"], "duration_s": duration_s, "warmup_s": warmup_s,
                     **workload}
    d["batching"] = {"policy": "continuous", "max_batch": max_batch}
    return d
