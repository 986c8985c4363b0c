"""`racksim validate`: every published measurement in validation/*.csv against racksim's
prediction, and the calibration of the hardware efficiencies per GPU generation.

A case (validation/cases.yaml) says how to reproduce one row: a MoE dispatch/combine alone
(`exchange`, the engine's dispatch matrix on its network), one kernel (`kernel`, the engine's
op-timing rule) or a whole scenario (`scenario`, the engine). A row racksim cannot express is
listed under `not_simulated:` with the reason; it is reported as such, never run.
validation/calibration.yaml names, per GPU generation, which cases set which efficiency; those
rows are reported but not held to the accuracy target. Nothing here holds a number about any
case: conditions live in the YAML, published values in the CSVs, efficiencies in
topologies/*.yaml.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine.costs import op_time
from .engine.microbench import run_moe_exchange
from .spec.engine_options import DEFAULT_SCALE_BLOCK
from .spec.errors import SpecError
from .spec.hardware import Hardware
from .spec.presets import load_hardware
from .spec.yamlio import read_yaml

VALIDATION_DIR = Path(__file__).resolve().parents[1] / "validation"
# published rows: every *_cases.csv, and the end-to-end serving results (category e2e)
E2E_FILE = "e2e_published.csv"

# published unit -> SI
UNITS = {"GB/s": 1e9, "us": 1e-6, "ms": 1e-3, "tokens/s": 1.0, "TFLOP/s": 1e12,
         "output tokens/s/GPU": 1.0}
# units that count per GPU: a scenario case for such a row must say `per: gpu`, and a case
# that says `per: gpu` must be for such a row ("tokens/s" is per node or per deployment, as
# the row's quantity says)
PER_GPU_UNITS = {"output tokens/s/GPU"}

# what a scenario case's figure counts (`per:`): see per_divisor
PER = ("gpu", "node", "system")

# a case that is not run: `not_simulated: {id: reason}` in cases.yaml
NOT_SIMULATED = "not_simulated"

# scenario measures (steady_rate): tokens counted from the step table
MEASURES = {
    "input_tokens_per_s": "prompt tokens prefilled",
    "output_tokens_per_s": "decode tokens (a prompt's first token, which its last prefill "
                           "step yields, not counted)",
    "generated_tokens_per_s": "every generated token, the first included (what "
                              "trtllm-bench, SGLang and MLPerf count as output tokens)",
}

# accuracy target (issue 6): per category, over rows not used for calibration
MEDIAN_TARGET = 0.15
WORST_TARGET = 0.40

# search range of each calibrated parameter (bisection); fractions of peak, seconds
PARAM_RANGE = {"compute": (0.05, 1.0), "attention_compute": (0.05, 1.0),
               "memory": (0.05, 1.0), "scale_up": (0.05, 1.0), "scale_out": (0.05, 1.0),
               "collective_overhead": (0.0, 1e-3)}


@dataclass(frozen=True)
class Row:
    id: str
    category: str
    quantity: str
    value: float
    unit: str
    conditions: str
    source: str


@dataclass
class Outcome:
    row: Row
    predicted: float            # in the row's unit
    calibration: bool
    assumption: str = ""
    generation: str = "other"   # calibration.yaml's generation of the case's hardware

    @property
    def error(self) -> float:
        return self.predicted / self.row.value - 1.0


def _abs_errors(outcomes: Iterable[Outcome]) -> dict:
    errs = [abs(o.error) for o in outcomes]
    return {"cases": len(errs),
            "median_abs_error": float(np.median(errs)) if errs else None,
            "worst_abs_error": float(max(errs)) if errs else None}


def by_generation(outcomes: list[Outcome]) -> dict[str, dict]:
    """Per GPU generation: the held-out cases' |error| (median, worst) and, apart, the
    calibration cases' (which are fitted to match, so they say little about accuracy)."""
    out = {}
    for g in sorted({o.generation for o in outcomes}):
        mine = [o for o in outcomes if o.generation == g]
        out[g] = {"cases": len(mine),
                  "held_out": _abs_errors(o for o in mine if not o.calibration),
                  "calibration": _abs_errors(o for o in mine if o.calibration)}
    return out


@dataclass
class Report:
    outcomes: list[Outcome]
    # rows racksim does not simulate: id -> (category, reason)
    not_simulated: dict[str, tuple[str, str]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict]:
        out = {}
        for cat in sorted({o.row.category for o in self.outcomes}):
            mine = [o for o in self.outcomes if o.row.category == cat]
            held = [abs(o.error) for o in mine if not o.calibration]
            med = float(np.median(held)) if held else 0.0
            worst = float(max(held)) if held else 0.0
            out[cat] = {"cases": len(mine),
                        "held_out": len(held), "median_abs_error": med,
                        "worst_abs_error": worst,
                        "within_target": med <= MEDIAN_TARGET and worst <= WORST_TARGET,
                        "by_generation": by_generation(mine),
                        "not_simulated": sum(c == cat for c, _ in self.not_simulated.values())}
        return out

    @property
    def within_target(self) -> bool:
        return all(s["within_target"] for s in self.summary().values())

    def to_json(self) -> dict:
        return {"cases": [{"id": o.row.id, "category": o.row.category,
                           "quantity": o.row.quantity, "unit": o.row.unit,
                           "published": o.row.value, "predicted": o.predicted,
                           "relative_error": o.error, "calibration": o.calibration,
                           "generation": o.generation,
                           "assumption": o.assumption, "source": o.row.source}
                          for o in self.outcomes],
                "not_simulated": [{"id": i, "category": c, "reason": why}
                                  for i, (c, why) in self.not_simulated.items()],
                "summary": self.summary(),
                "target": {"median_abs_error": MEDIAN_TARGET, "worst_abs_error": WORST_TARGET},
                "within_target": self.within_target}


# --------------------------------------------------------------------------- inputs


def published_files(directory: Path) -> list[Path]:
    """The CSVs of published rows: every *_cases.csv, then the end-to-end results."""
    e2e = directory / E2E_FILE
    return sorted(directory.glob("*_cases.csv")) + ([e2e] if e2e.is_file() else [])


def read_rows(directory: Path) -> list[Row]:
    rows: list[Row] = []
    for path in published_files(directory):
        with path.open(newline="") as f:
            for i, r in enumerate(csv.DictReader(f), start=2):
                try:
                    rows.append(Row(r["id"], r["category"], r["quantity"], float(r["value"]),
                                    r["unit"], r["conditions"], r["source"]))
                except (KeyError, ValueError) as exc:
                    raise SpecError(f"row {i} is malformed ({exc})", file=str(path),
                                    fix="each row needs id, category, quantity, value "
                                        "(a number), unit, conditions, source") from None
                if rows[-1].unit not in UNITS:
                    raise SpecError(f"row {i}: unknown unit {r['unit']!r}", file=str(path),
                                    fix=f"use one of {', '.join(UNITS)}")
    return rows


def read_cases(directory: Path) -> dict[str, dict]:
    """Every case by id; a row listed under `not_simulated:` is a case of run kind
    `not_simulated` carrying its reason (never run, reported as such)."""
    path = directory / "cases.yaml"
    data = read_yaml(path)
    families = data.get("families", {})
    cases = {}
    for cid, case in data.get("cases", {}).items():
        merged = {**families.get(case.get("family"), {}), **case}
        merged.pop("family", None)
        cases[cid] = merged
    for cid, reason in (data.get(NOT_SIMULATED) or {}).items():
        if cid in cases:
            raise SpecError(f"{cid!r} is both a case and not simulated", file=str(path),
                            key=f"{NOT_SIMULATED}.{cid}", fix="keep one of the two")
        if not isinstance(reason, str) or not reason.strip():
            raise SpecError(f"{cid!r} is listed as not simulated without a reason",
                            file=str(path), key=f"{NOT_SIMULATED}.{cid}",
                            fix="say why racksim cannot express the row")
        cases[cid] = {"run": NOT_SIMULATED, "reason": reason.strip()}
    return cases


def read_calibration(directory: Path) -> dict[str, dict]:
    return read_yaml(directory / "calibration.yaml")["generations"]


# --------------------------------------------------------------------------- predictions


def _hardware(ref: str, directory: Path, overrides: dict[str, float] | None) -> Hardware:
    hw = load_hardware(ref, file=str(directory / "cases.yaml"), key="hardware")
    if overrides:
        hw = hw.model_copy(update={"efficiency": hw.efficiency.model_copy(update=overrides)})
    return hw


def _exchange(case: dict, hw: Hardware) -> float:
    ep = case["ep"]
    domains = max(1, ep // hw.domain_gpus)
    groups, topk = case.get("groups", 1), case.get("topk_groups")
    if groups == "domains":   # one expert group per node (DeepEP's internode test)
        groups, topk = domains, min(topk or domains, domains)
    r = run_moe_exchange(hw, case["phase"], ep, domains, case["tokens"], case["hidden"],
                         case["top_k"], case["experts"], case["mode"], case["precision"],
                         case.get("scale_block", DEFAULT_SCALE_BLOCK), groups, topk)
    return getattr(r, case["measure"])


def _kernel(case: dict, hw: Hardware) -> float:
    _, peak = hw.gpu.flops_at(case["precision"])
    eff = hw.efficiency
    rate = peak * (eff.attention_compute if case["op"] == "attention" else eff.compute)
    t, _ = op_time(float(case.get("flops", 0.0)), float(case.get("bytes", 0.0)), rate,
                   hw.gpu.hbm_bandwidth * eff.memory)
    t = float(t)
    return {"flops_per_s": float(case.get("flops", 0.0)) / t,
            "bytes_per_s": float(case.get("bytes", 0.0)) / t}[case["measure"]]


def per_divisor(per: str, gpus: int, gpus_per_rack: int) -> float:
    """What one published figure counts, as a divisor of the whole deployment's rate:
    `system` the whole deployment (every replica, stage and rank of the layout: `gpus`),
    `gpu` one of those GPUs, `node` one server / rack of them (`gpus_per_rack` GPUs; a
    deployment smaller than a rack counts as that fraction of a node)."""
    if per == "system":
        return 1.0
    if per == "gpu":
        return float(gpus)
    if per == "node":
        return gpus / gpus_per_rack
    raise SpecError(f"unknown per {per!r}", fix=f"use one of {', '.join(PER)}")


def _scenario(case: dict, directory: Path, op_timing: str | None = None,
              kernels: str | None = None) -> float:
    """A whole scenario through the engine; the measure per `case["per"]` (default: per node
    of `gpus_per_rack` GPUs). `op_timing` overrides the scenario's engine.op_timing,
    `kernels` its hardware's efficiency.kernels (leave one generation out)."""
    from . import api  # noqa: PLC0415  (the engine only when a scenario case runs)

    overrides = {"engine.op_timing": op_timing} if op_timing else {}
    if kernels:
        overrides["hardware.efficiency.kernels"] = kernels
    sc = api.load(directory / case["scenario"], **overrides)
    run = api.simulate(sc)
    div = per_divisor(case.get("per", "node"), sc.layout.total_gpus, sc.hardware.gpus_per_rack)
    # count_factor: the published count includes work not simulated (e.g. KV-cache hits)
    return steady_rate(run.steps, sc.workload.warmup_s, case["measure"]) / div \
        * float(case.get("count_factor", 1.0))


def steady_rate(steps, warmup: float, measure: str) -> float:
    """Tokens per second summed over replicas, from the steps that start after warm-up and
    have ended: their tokens over the span they cover. Unlike a count over a fixed window,
    this has no quantisation when a few long (prefill) steps fill the window."""
    if measure not in MEASURES:
        raise SpecError(f"unknown measure {measure!r}", fix=f"use one of {', '.join(MEASURES)}")
    st = steps[(steps["start"] >= warmup) & steps["end"].notna()]
    # input: prompt tokens prefilled; output: decode tokens (a prompt's first token, which
    # its last prefill step yields, is not counted; decode-only scenarios have none);
    # generated: every token produced, first tokens included
    if measure == "input_tokens_per_s":
        tokens = st["prefill_tokens"]
    elif measure == "generated_tokens_per_s":
        tokens = st["output_tokens"]
    else:
        tokens = st["tokens"] - st["prefill_tokens"]
    rate = 0.0
    for _, g in st.groupby("replica"):
        span = float(g["end"].max() - g["start"].min())
        if span > 0:
            rate += float(tokens[g.index].sum()) / span
    return rate


def predict(case: dict, directory: Path, overrides: dict[str, float] | None = None,
            op_timing: str | None = None, kernels: str | None = None) -> float:
    """Prediction for one case in SI units. `op_timing` (analytical | measured | pooled)
    overrides a scenario case's engine.op_timing; None keeps the scenario file's (analytical
    by default)."""
    kind = case["run"]
    if kind == "scenario":
        # the scenario file names its hardware; the case's generation comes from it
        if overrides:
            raise SpecError("a scenario case cannot calibrate a parameter",
                            file=str(directory / "calibration.yaml"),
                            fix="calibrate from exchange or kernel cases")
        return _scenario(case, directory, op_timing, kernels)
    hw = _hardware(case["hardware"], directory, overrides)
    if kind == "exchange":
        return _exchange(case, hw)
    if kind == "kernel":
        return _kernel(case, hw)
    raise SpecError(f"unknown run kind {kind!r}", file=str(directory / "cases.yaml"),
                    fix="use exchange, kernel or scenario, or list the row under "
                        f"{NOT_SIMULATED}: with the reason")


# --------------------------------------------------------------------------- calibration


def _generation_of(hw_name: str, gens: dict[str, dict]) -> str | None:
    for g, spec in gens.items():
        if hw_name in spec["hardware"]:
            return g
    return None


def calibrate(directory: Path = VALIDATION_DIR, passes: int = 8,
              tol: float = 1e-4) -> dict[str, dict[str, float]]:
    """Solve each generation's parameters, in the order calibration.yaml lists them, so that
    each one's case is matched exactly; repeat until no parameter moves by more than `tol`
    (relative). Parameters not solved for a generation come from the one it `inherits`."""
    rows = {r.id: r for r in read_rows(directory)}
    cases = read_cases(directory)
    gens = read_calibration(directory)
    fitted: dict[str, dict[str, float]] = {}
    for g, spec in gens.items():
        base = dict(fitted.get(spec.get("inherit"), {}))
        values = dict(base)
        for _ in range(passes):
            moved = 0.0
            for step in spec.get("solve", []):
                param, cid = step["param"], step["case"]
                row, case = rows[cid], cases[cid]
                target = row.value * UNITS[row.unit]
                lo, hi = PARAM_RANGE[param]

                def f(x, param=param, case=case):
                    return predict(case, directory, {**values, param: x})

                grows = f(hi) > f(lo)
                for _ in range(60):
                    mid = 0.5 * (lo + hi)
                    if (f(mid) < target) == grows:
                        lo = mid
                    else:
                        hi = mid
                new = 0.5 * (lo + hi)
                old = values.get(param)
                moved = max(moved, abs(new - old) / max(abs(new), 1e-12) if old else 1.0)
                values[param] = new
            if moved < tol:
                break
        fitted[g] = values
    return fitted


def calibration_rows(directory: Path) -> dict[str, set[str]]:
    """Case ids used for calibration, per generation."""
    return {g: {s["case"] for s in spec.get("solve", [])}
            for g, spec in read_calibration(directory).items()}


# --------------------------------------------------------------------------- validation


def check_per(row: Row, case: dict, file: str) -> None:
    """A scenario case counts what its row counts: per GPU exactly when the row's unit is a
    per-GPU unit (PER_GPU_UNITS); otherwise per node (the default) or per system."""
    per = case.get("per", "node")
    if per not in PER:
        raise SpecError(f"{row.id}: unknown per {per!r}", file=file, key=f"cases.{row.id}.per",
                        fix=f"use one of {', '.join(PER)}")
    if (row.unit in PER_GPU_UNITS) != (per == "gpu"):
        raise SpecError(f"{row.id}: the row's unit is {row.unit!r} but the case counts per "
                        f"{per}", file=file, key=f"cases.{row.id}.per",
                        fix="per: gpu for a per-GPU unit; node or system for tokens/s, as the "
                            "row's quantity says")


def case_generation(case: dict, directory: Path, gens: dict[str, dict]) -> str:
    """The GPU generation (calibration.yaml) of a case's hardware; `other` if none."""
    ref = case["hardware"] if case["run"] != "scenario" else \
        read_yaml(directory / case["scenario"])["hardware"]
    return _generation_of(_hardware(ref, directory, None).name, gens) or "other"


def validate(directory: Path = VALIDATION_DIR, only: Iterable[str] | None = None,
             progress: Callable[[str], None] | None = None,
             op_timing: str | None = None, kernels: str | None = None) -> Report:
    """Every published row through its case (`only`: these run kinds). `op_timing`
    (analytical | measured | pooled) runs the scenario cases with that engine.op_timing, `kernels` with
    that kernel timing file in place of their hardware's (leave one generation out)."""
    rows = read_rows(directory)
    cases = read_cases(directory)
    gens = read_calibration(directory)
    calib = calibration_rows(directory)
    file = str(directory / "cases.yaml")
    missing = [r.id for r in rows if r.id not in cases]
    if missing:
        raise SpecError(f"no case for published rows {missing}", file=file,
                        fix=f"add a case for every row of the *_cases.csv files and {E2E_FILE},"
                            f" or list it under {NOT_SIMULATED}: with the reason")
    ids = {r.id for r in rows}
    stale = [c for c, case in cases.items()
             if case["run"] == NOT_SIMULATED and c not in ids]
    if stale:
        raise SpecError(f"{NOT_SIMULATED} lists rows that are not published: {stale}",
                        file=file, key=NOT_SIMULATED, fix="remove them or fix the ids")
    kinds = set(only) if only else None
    outcomes, skipped = [], {}
    for r in rows:
        case = cases[r.id]
        if case["run"] == NOT_SIMULATED:
            skipped[r.id] = (r.category, case["reason"])
            continue
        if case["run"] == "scenario":
            check_per(r, case, file)
        if kinds is not None and case["run"] not in kinds:
            continue
        if progress:
            progress(r.id)
        value = predict(case, directory, op_timing=op_timing, kernels=kernels) / UNITS[r.unit]
        g = case_generation(case, directory, gens)
        outcomes.append(Outcome(r, value, r.id in calib.get(g, set()),
                                case.get("assume", ""), g))
    return Report(outcomes, skipped)


def check_files(fitted: dict[str, dict[str, float]], directory: Path = VALIDATION_DIR,
                rel: float = 0.01) -> list[str]:
    """Differences between fitted values and the hardware files (empty: files are current)."""
    problems = []
    for g, spec in read_calibration(directory).items():
        for name in spec["hardware"]:
            eff = load_hardware(name).efficiency
            for param, v in fitted[g].items():
                have = getattr(eff, param)
                if not math.isclose(have, v, rel_tol=rel, abs_tol=1e-7):
                    problems.append(f"{name}: efficiency.{param} is {have:.4g}, "
                                    f"calibration gives {v:.4g}")
    return problems


def plot(report: Report, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.5, 6))
    cats = sorted({o.row.category for o in report.outcomes})
    colours = dict(zip(cats, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for cat in cats:
        for calib in (False, True):
            pts = [(o.row.value, o.predicted) for o in report.outcomes
                   if o.row.category == cat and o.calibration == calib]
            if not pts:
                continue
            x, y = zip(*pts)
            ax.scatter(x, y, s=36, label=f"{cat}{' (calibration)' if calib else ''}",
                       facecolors="none" if calib else colours[cat],
                       edgecolors=colours[cat])
    vals = [v for o in report.outcomes for v in (o.row.value, o.predicted) if v > 0]
    lo, hi = min(vals) / 2, max(vals) * 2
    ax.plot([lo, hi], [lo, hi], color="k", lw=1, label="y = x")
    for f, style in ((1 + MEDIAN_TARGET, ":"), (1 + WORST_TARGET, "--")):
        ax.plot([lo, hi], [lo * f, hi * f], color="grey", lw=0.8, ls=style)
        ax.plot([lo, hi], [lo / f, hi / f], color="grey", lw=0.8, ls=style)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi),
           xlabel="published (its own unit)", ylabel="racksim (same unit)",
           title="racksim against published measurements")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
