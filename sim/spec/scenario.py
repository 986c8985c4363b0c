"""The scenario file (scenario-format.md, version 1): load, validate, resolve presets, and
check that the layout can run at all. The result, `Scenario`, is what every later stage takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from .base import Fraction, NonNegativeInt, PositiveInt, PositiveNumber, Spec
from .cost import Site
from .engine_options import EngineOptions, HotRouting, MoEOptions
from .errors import SpecError
from .faults import Fault, check_faults
from .hardware import Hardware
from .layout import Layout, kv_capacity_tokens, memory_per_gpu, weight_bytes_per_gpu
from .model import Model, ModelFile
from .presets import load_hardware, load_model
from .slo import SLO
from .units import format_quantity
from .validation import check_key_path, validate
from .workload import Batching, FromTrace, Workload, mean_context
from .yamlio import read_yaml

class KVCache(Spec):
    """How much memory the serving engine gives its KV cache."""

    memory_fraction: Fraction = Field(
        1.0, description="share of the HBM left after the weights that holds KV (TensorRT-LLM's "
                         "kv_cache_free_gpu_mem_fraction, typically 0.9; the rest is "
                         "activations, workspace and fragmentation); default 1")


class ScenarioFile(Spec):
    """Top level of a scenario file."""

    version: Literal[1] = Field(description="format version; 1 is the only one so far")
    name: str = ""
    seed: NonNegativeInt = Field(0, description="random seed: same seed, same results")
    hardware: str | dict[str, Any] = Field(
        description="preset name (see `racksim show hardware`), a path, or an inline mapping")
    racks: PositiveInt = Field(1, description="how many racks of that design")
    model: str | dict[str, Any] = Field(
        description="preset name (see `racksim show model`), a path, or an inline mapping")
    layout: Layout = Layout()
    workload: Workload
    batching: Batching
    price_per_gpu_hour: PositiveNumber | None = Field(
        None, description="$ per GPU-hour: prices the run at this rate instead of the hardware "
                          "file's cost: and the site's (it overrides them)")
    site: Site | None = Field(
        None, description="electricity_per_kwh, pue, hosting_per_kw_month: where the racks "
                          "run; with the hardware file's cost: it prices the run (default: "
                          "an assumed site, reported as such)")
    kv_cache: KVCache = KVCache()
    slo: SLO | None = Field(
        None, description="latency targets (ttft_p99, tpot_p99, e2e_p99, ... as times): the "
                          "summary says whether the run meets them and reports goodput; "
                          "`racksim capacity` searches the highest rate that meets them")
    moe: MoEOptions = MoEOptions()
    engine: EngineOptions = EngineOptions()
    faults: list[Fault] = Field(
        default_factory=list,
        description="link_degraded, link_down, straggler and gpu_lost events with their time "
                    "windows (docs/faults.md)")


@dataclass(frozen=True)
class Scenario:
    """A validated, resolved scenario: what every later stage takes."""

    file: str
    spec: ScenarioFile
    hardware: Hardware
    model: Model
    base_dir: Path

    @property
    def layout(self) -> Layout:
        return self.spec.layout

    @property
    def workload(self) -> Workload:
        return self.spec.workload

    @property
    def batching(self):
        return self.spec.batching

    @property
    def racks(self) -> int:
        return self.spec.racks

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def cluster_gpus(self) -> int:
        return self.racks * self.hardware.gpus_per_rack

    def kv_capacity_tokens(self) -> float:
        """Context tokens one replica's KV cache holds (kv_cache.memory_fraction applied)."""
        return kv_capacity_tokens(self.model, self.layout, self.hardware.gpu.hbm_bytes,
                                  self.spec.kv_cache.memory_fraction)

    def mean_context(self) -> float:
        if any(isinstance(d, FromTrace)
               for d in (self.workload.prompt_tokens, self.workload.output_tokens)):
            raise SpecError("token counts come from a trace; the closed form needs an explicit "
                            "context", file=self.file, key="workload.prompt_tokens",
                            fix="pass --context L")
        return mean_context(self.workload)


# Fields given as a preset name, a path or a mapping, and the model each mapping follows.
PRESET_FIELDS: dict[str, type[Spec]] = {"hardware": Hardware, "model": ModelFile}


def scenario_file(path: str | Path) -> Path:
    """The path of a scenario file; a folder is named as one, with a YAML file in it to try."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
        raise SpecError("is a folder, not a scenario file", file=str(path),
                        fix=f"give one of its YAML files, e.g. {found[0]}" if found else
                        "give the path of a scenario YAML file")
    return path


def load_scenario(path: str | Path) -> Scenario:
    path = scenario_file(path)
    return scenario_from_dict(read_yaml(path), file=str(path), base_dir=path.parent)


def check_override_key(dotted: str, *, file: str | None = "command line",
                       key: str | None = None) -> None:
    """An unknown key in a dotted override (`layout.expert_paralel`) is an error with a
    did-you-mean; keys reaching into a preset (`hardware.gpu.hbm_bytes`) are checked against
    the hardware or model format."""
    check_key_path(ScenarioFile, dotted.split("."), file=file, key=key or dotted,
                   loose=PRESET_FIELDS)


def scenario_from_dict(data: Any, *, file: str | None = None, base_dir: Path = Path(".")
                       ) -> Scenario:
    """`file` names the scenario in messages; a mapping without one is named by its `name`."""
    if file is None:
        name = data.get("name") if isinstance(data, dict) else None
        file = f"scenario {name!r}" if isinstance(name, str) and name else "inline scenario"
    spec = validate(ScenarioFile, data, file)
    hardware = load_hardware(spec.hardware, file=file, base_dir=base_dir)
    model = load_model(spec.model, file=file, base_dir=base_dir)
    scenario = Scenario(file=file, spec=spec, hardware=hardware, model=model, base_dir=base_dir)
    check_feasible(scenario)
    check_faults(spec.faults, gpus=scenario.cluster_gpus, racks=scenario.racks,
                 duration_s=spec.workload.duration_s, file=file)
    return scenario


# --------------------------------------------------------------------------- feasibility


def _divisors_near(n: int, around: int) -> str:
    ds = [d for d in range(1, n + 1) if n % d == 0]
    ds.sort(key=lambda d: (abs(d - around), d))
    return ", ".join(str(d) for d in sorted(ds[:4]))


def check_feasible(s: Scenario) -> None:
    """Reject layouts that cannot run, naming the key and the fix."""
    lay, m, hw, file = s.layout, s.model, s.hardware, s.file
    ep, tp, pp = lay.expert_parallel, lay.tensor_parallel, lay.pipeline_parallel
    if lay.total_gpus > s.cluster_gpus:
        raise SpecError(
            f"the layout needs {lay.total_gpus} GPUs ({lay.describe()}) but {s.racks} rack(s) "
            f"of {hw.name} have {s.cluster_gpus}", file=file, key="layout",
            fix=f"raise racks to {math.ceil(lay.total_gpus / hw.gpus_per_rack)} or shrink the "
                "layout")
    if m.moe is None and ep > 1:
        raise SpecError(f"{m.name} is a dense model; expert parallelism does not apply",
                        file=file, key="layout.expert_parallel",
                        fix="set expert_parallel: 1 and use tensor_parallel to spread weights")
    physical = (m.moe.experts + s.spec.moe.redundant_experts) if m.moe is not None else 0
    if m.moe is not None and physical % ep:
        extra = (f" + {s.spec.moe.redundant_experts} redundant"
                 if s.spec.moe.redundant_experts else "")
        raise SpecError(
            f"{ep} does not divide the {m.moe.experts}{extra} experts of {m.name}", file=file,
            key="layout.expert_parallel",
            fix=f"use a divisor of {physical}, e.g. {_divisors_near(physical, ep)}, or set "
                "moe.redundant_experts so that experts + redundant divide by it")
    if m.moe is not None and m.moe.group_limited and physical % m.moe.groups:
        raise SpecError(
            f"the {physical} physical experts do not split into {m.name}'s {m.moe.groups} "
            "routing groups", file=file, key="moe.redundant_experts",
            fix=f"use a multiple of {m.moe.groups} redundant experts")
    routing = s.spec.moe.routing
    if isinstance(routing, HotRouting) and m.moe is not None:
        bad = [e for e in routing.experts if e >= m.moe.experts]
        if bad:
            raise SpecError(f"hot experts {bad} do not exist ({m.name} has experts 0.."
                            f"{m.moe.experts - 1})", file=file, key="moe.routing.experts",
                            fix="list expert ids below the expert count")
    if pp > m.layers:
        raise SpecError(f"{pp} stages for {m.layers} layers", file=file,
                        key="layout.pipeline_parallel",
                        fix=f"use at most {m.layers} stages")
    _check_finite_times(s)
    if tp > hw.domain_gpus:
        raise SpecError(
            f"tensor_parallel {tp} exceeds the {hw.domain_gpus}-GPU scale-up domain of "
            f"{hw.name}; tensor parallelism across scale-out is not modelled", file=file,
            key="layout.tensor_parallel", fix=f"use at most {hw.domain_gpus}")
    # Memory: weights of the largest stage plus one sequence of mean context per microbatch.
    if any(isinstance(d, FromTrace) for d in (s.workload.prompt_tokens, s.workload.output_tokens)):
        context = 0.0
    else:
        context = s.mean_context()
    have = hw.gpu.hbm_bytes
    weights = weight_bytes_per_gpu(m, lay)
    if weights > have:
        replica_have = have * lay.replica_gpus
        min_gpus = math.ceil(m.weight_bytes / have)
        raise SpecError(
            f"{m.name} needs {format_quantity(m.weight_bytes, 'B')} of weights per replica "
            f"({format_quantity(weights, 'B')} per GPU on the largest stage), but the "
            f"{lay.replica_gpus} GPU(s) of one replica ({lay.describe()}) have "
            f"{format_quantity(replica_have, 'B')} of HBM ({format_quantity(have, 'B')} each)",
            file=file, key="layout",
            fix=f"spread a replica over at least {min_gpus} GPUs (raise expert_parallel, "
                "tensor_parallel or pipeline_parallel), or use lower-precision weights "
                "(model: {preset: NAME, weight_precision: fp4})")
    smallest = _smallest_request(s.workload)
    capacity = s.kv_capacity_tokens()
    if smallest is not None and smallest > capacity:
        raise SpecError(
            f"no request can ever be admitted: the smallest has {smallest:,} tokens (prompt + "
            f"output, whose KV is reserved on admission) but one replica's KV cache holds "
            f"{capacity:,.0f} tokens", file=file, key="workload",
            fix="shorten prompts or outputs, or spread the model over more GPUs")
    need = memory_per_gpu(m, lay, 1, context)
    if need > have:
        raise SpecError(
            f"one sequence per microbatch at the workload's mean context ({context:,.0f} "
            f"tokens) needs {format_quantity(need - weights, 'B')} of KV cache per GPU on top "
            f"of {format_quantity(weights, 'B')} of weights; each GPU has "
            f"{format_quantity(have, 'B')}", file=file, key="workload",
            fix="shorten prompt_tokens/output_tokens, or spread the model over more GPUs "
                "(expert_parallel, tensor_parallel, pipeline_parallel)")


def _check_finite_times(s: Scenario) -> None:
    """Figures so small that a full step would take infinite time (float overflow) are
    rejected, whatever their form: checked at the largest batch with a generous context."""
    m, hw = s.model, s.hardware
    batch, context = s.batching.max_batch, 1e7
    _, peak = hw.gpu.flops_at(m.compute_precision)
    activations = batch * m.hidden * 4.0
    times = {
        "hardware.gpu.flops": 2.0 * batch * m.active_params / peak,
        "hardware.gpu.hbm_bandwidth": (m.weight_bytes + batch * context * m.kv_bytes_per_token)
        / hw.gpu.hbm_bandwidth,
        "hardware.scale_up.bandwidth_per_gpu": activations / hw.scale_up.bandwidth_per_gpu,
        "hardware.scale_out.bandwidth_per_gpu": activations / hw.scale_out.bandwidth_per_gpu,
    }
    for key, t in times.items():
        if not math.isfinite(t):
            raise SpecError("too small to compute with: a step would take an infinite time",
                            file=s.file, key=key,
                            fix="give it in SI base units or with a unit, e.g. 2.5e15 or "
                                "\"8 TB/s\"")


def _smallest_request(w: Workload) -> int | None:
    """Fewest prompt + output tokens any request can have (None when a trace decides)."""
    def low(d):
        return {"fixed": getattr(d, "value", None), "uniform": getattr(d, "low", None),
                "lognormal": 1}.get(d.dist)
    p, o = low(w.prompt_tokens), low(w.output_tokens)
    return None if p is None or o is None else p + o


# --------------------------------------------------------------------------- JSON Schema


def scenario_json_schema() -> dict:
    """JSON Schema of a scenario file, with the hardware and model mappings spelled out."""
    schema = ScenarioFile.model_json_schema()
    defs = schema.setdefault("$defs", {})
    for key, cls in PRESET_FIELDS.items():
        sub = cls.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        defs[cls.__name__] = sub
        preset_ref = {"type": "object", "required": ["preset"],
                      "properties": {"preset": {"type": "string"}},
                      "description": "a preset with top-level keys overridden"}
        desc = schema["properties"][key].get("description", "")
        schema["properties"][key] = {
            "description": desc,
            "anyOf": [{"type": "string"}, {"$ref": f"#/$defs/{cls.__name__}"}, preset_ref]}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "racksim scenario (version 1)"
    return schema
