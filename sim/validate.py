"""`racksim validate`: every published measurement in validation/*.csv against racksim's
prediction, and the calibration of the hardware efficiencies per GPU generation.

A case (validation/cases.yaml) says how to reproduce one row: a MoE dispatch/combine alone
(`exchange`, the engine's dispatch matrix on its network), one kernel (`kernel`, the engine's
op-timing rule) or a whole scenario (`scenario`, the engine). validation/calibration.yaml
names, per GPU generation, which cases set which efficiency; those rows are reported but not
held to the accuracy target. Nothing here holds a number about any case: conditions live in
the YAML, published values in the CSVs, efficiencies in topologies/*.yaml.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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

# published unit -> SI
UNITS = {"GB/s": 1e9, "us": 1e-6, "ms": 1e-3, "tokens/s": 1.0, "TFLOP/s": 1e12}

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

    @property
    def error(self) -> float:
        return self.predicted / self.row.value - 1.0


@dataclass
class Report:
    outcomes: list[Outcome]

    def summary(self) -> dict[str, dict]:
        out = {}
        for cat in sorted({o.row.category for o in self.outcomes}):
            held = [abs(o.error) for o in self.outcomes
                    if o.row.category == cat and not o.calibration]
            med = float(np.median(held)) if held else 0.0
            worst = float(max(held)) if held else 0.0
            out[cat] = {"cases": sum(o.row.category == cat for o in self.outcomes),
                        "held_out": len(held), "median_abs_error": med,
                        "worst_abs_error": worst,
                        "within_target": med <= MEDIAN_TARGET and worst <= WORST_TARGET}
        return out

    @property
    def within_target(self) -> bool:
        return all(s["within_target"] for s in self.summary().values())

    def to_json(self) -> dict:
        return {"cases": [{"id": o.row.id, "category": o.row.category,
                           "quantity": o.row.quantity, "unit": o.row.unit,
                           "published": o.row.value, "predicted": o.predicted,
                           "relative_error": o.error, "calibration": o.calibration,
                           "assumption": o.assumption, "source": o.row.source}
                          for o in self.outcomes],
                "summary": self.summary(),
                "target": {"median_abs_error": MEDIAN_TARGET, "worst_abs_error": WORST_TARGET},
                "within_target": self.within_target}


# --------------------------------------------------------------------------- inputs


def read_rows(directory: Path) -> list[Row]:
    rows: list[Row] = []
    for path in sorted(directory.glob("*_cases.csv")):
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
    path = directory / "cases.yaml"
    data = read_yaml(path)
    families = data.get("families", {})
    cases = {}
    for cid, case in data.get("cases", {}).items():
        merged = {**families.get(case.get("family"), {}), **case}
        merged.pop("family", None)
        cases[cid] = merged
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


def _scenario(case: dict, directory: Path) -> float:
    """A whole scenario through the engine; the measure per node (`gpus_per_rack` GPUs)."""
    from . import api  # noqa: PLC0415  (the engine only when a scenario case runs)

    sc = api.load(directory / case["scenario"])
    run = api.simulate(sc)
    nodes = sc.layout.total_gpus / sc.hardware.gpus_per_rack
    # count_factor: the published count includes work not simulated (e.g. KV-cache hits)
    return steady_rate(run.steps, sc.workload.warmup_s, case["measure"]) / nodes \
        * float(case.get("count_factor", 1.0))


def steady_rate(steps, warmup: float, measure: str) -> float:
    """Tokens per second summed over replicas, from the steps that start after warm-up and
    have ended: their tokens over the span they cover. Unlike a count over a fixed window,
    this has no quantisation when a few long (prefill) steps fill the window."""
    st = steps[(steps["start"] >= warmup) & steps["end"].notna()]
    # input: prompt tokens prefilled; output: decode tokens (a prompt's first token, which
    # its last prefill step yields, is not counted; decode-only scenarios have none)
    tokens = st["prefill_tokens"] if measure == "input_tokens_per_s" \
        else st["tokens"] - st["prefill_tokens"]
    rate = 0.0
    for _, g in st.groupby("replica"):
        span = float(g["end"].max() - g["start"].min())
        if span > 0:
            rate += float(tokens[g.index].sum()) / span
    return rate


def predict(case: dict, directory: Path, overrides: dict[str, float] | None = None) -> float:
    """Prediction for one case in SI units."""
    kind = case["run"]
    if kind == "scenario":
        # the scenario file names its hardware; the case's generation comes from it
        if overrides:
            raise SpecError("a scenario case cannot calibrate a parameter",
                            file=str(directory / "calibration.yaml"),
                            fix="calibrate from exchange or kernel cases")
        return _scenario(case, directory)
    hw = _hardware(case["hardware"], directory, overrides)
    if kind == "exchange":
        return _exchange(case, hw)
    if kind == "kernel":
        return _kernel(case, hw)
    raise SpecError(f"unknown run kind {kind!r}", file=str(directory / "cases.yaml"),
                    fix="use exchange, kernel or scenario")


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


def validate(directory: Path = VALIDATION_DIR, only: Iterable[str] | None = None,
             progress: Callable[[str], None] | None = None) -> Report:
    rows = read_rows(directory)
    cases = read_cases(directory)
    gens = read_calibration(directory)
    calib = calibration_rows(directory)
    missing = [r.id for r in rows if r.id not in cases]
    if missing:
        raise SpecError(f"no case for published rows {missing}",
                        file=str(directory / "cases.yaml"),
                        fix="add a case for every row of the *_cases.csv files")
    kinds = set(only) if only else None
    outcomes = []
    for r in rows:
        case = cases[r.id]
        if kinds is not None and case["run"] not in kinds:
            continue
        if progress:
            progress(r.id)
        value = predict(case, directory) / UNITS[r.unit]
        ref = case["hardware"] if case["run"] != "scenario" else \
            read_yaml(directory / case["scenario"])["hardware"]
        hw_name = _hardware(ref, directory, None).name
        g = _generation_of(hw_name, gens)
        outcomes.append(Outcome(r, value, r.id in calib.get(g, set()),
                                case.get("assume", "")))
    return Report(outcomes)


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
