"""Rack-design comparison: for each hardware design, search the feasible layouts with the
roofline, confirm the most promising with the engine, and report the best that meets the SLO.

Search space per design (within `budget_gpus`): EP over the divisors of the expert count
(1 for dense models), TP in 1, 2, 4, 8 (within a scale-up domain), PP over 1, 2, 4, DP to
fill the budget, microbatches = PP (the decode minimum), and batch over powers of two up to
`batching.max_batch`. The estimate per output token is the roofline step with the steady-state
prefill compute added (each output token brings prompt/output prompt tokens) plus the
uncontended communication of the step (`comm_per_step`); it is a lower bound, so a layout it
puts over the TPOT target is dropped without simulating. The `shortlist` best by tokens/s
per GPU are simulated under Poisson arrivals at 70% of their estimated capacity; the winner is the best confirmed layout meeting every SLO.
Each confirmed point is written as a scenario file, so `racksim run` reproduces its row.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from . import estimate as est
from .api import apply_overrides, scenario_dict
from .capacity import at_rate, search
from .engine.costs import layer_costs
from .results.pareto_plot import plot_pareto
from .results.price_plot import plot_price
from .spec.errors import SpecError
from .spec.presets import load_hardware, load_model
from .spec.scenario import scenario_from_dict
from .spec.slo import SLO
from .spec.slo import parse_slo as _parse_slo

def parse_slo(text: str | None) -> dict[str, float]:
    """`tpot_p99=50ms,ttft_p99=2s` -> {"tpot_p99": 0.05, "ttft_p99": 2.0}."""
    return _parse_slo(text).targets()


@dataclass(frozen=True)
class Candidate:
    hardware: str
    racks: int
    ep: int
    tp: int
    pp: int
    dp: int
    microbatches: int
    batch: int
    tpot_floor_s: float          # time per output token, prefill load included
    tokens_per_s_per_gpu: float  # the same bound on throughput

    def overrides(self) -> dict:
        return {"hardware": self.hardware, "racks": self.racks,
                "layout": {"expert_parallel": self.ep, "tensor_parallel": self.tp,
                           "pipeline_parallel": self.pp, "data_parallel": self.dp,
                           "microbatches": self.microbatches}}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(data: dict, hardware: str, budget_gpus: int | None, file: str,
               base: Path) -> list[Candidate]:
    hw = load_hardware(hardware, file=file, key="--hardware")
    model = load_model(data.get("model"), file=file, base_dir=base)
    budget = budget_gpus or max(hw.gpus_per_rack, 8)
    racks = max(1, math.ceil(budget / hw.gpus_per_rack))
    budget = min(budget, racks * hw.gpus_per_rack)
    eps = [d for d in _divisors(model.moe.experts) if d <= budget] if model.moe else [1]
    tp_options = [t for t in (1, 2, 4, 8) if t <= hw.domain_gpus]
    max_batch = int(data.get("batching", {}).get("max_batch", 1024))
    batches = [2**k for k in range(0, int(math.log2(max_batch)) + 1)]
    context = None
    out = []
    for ep, tp, pp in itertools.product(eps, tp_options, (1, 2, 4)):
        stage = ep * tp
        if stage * pp > budget:
            continue
        dp = budget // (stage * pp)
        m = pp
        layout = {"expert_parallel": ep, "tensor_parallel": tp, "pipeline_parallel": pp,
                  "data_parallel": dp, "microbatches": m}
        try:
            s = scenario_from_dict(apply_overrides(data, {
                "hardware": hardware, "racks": racks, "layout": layout,
                "batching": {"policy": "continuous", "max_batch": max_batch}}),
                file=file, base_dir=base)
        except SpecError:
            continue  # infeasible on this design
        context = s.mean_context() if context is None else context
        comm = est.communication(s)
        costs = layer_costs(s.model, s.hardware, s.layout, s.spec.moe,
                            s.spec.engine.activation_precision, s.spec.engine.attention_flops,
                            s.spec.engine.op_timing)
        for b in batches:
            e = est.estimate(s, b, context, comm, costs=costs)
            if not e.fits:
                break
            out.append(Candidate(hardware, racks, ep, tp, pp, dp, m, b, e.token_cycle_s,
                                 e.output_tokens_per_s / s.layout.total_gpus))
    return out


# The closed form is optimistic by a similar factor across layouts of one model and traffic:
# after the first capacity found, later searches start at their estimate times that factor,
# with a smaller bracket step. Compare ranks designs, so a coarser tolerance serves.
GUESS_STEP = 1.3
COMPARE_TOLERANCE = 0.08
BATCH_STEPS = 2      # smaller batch caps searched when a layout's largest finds no rate
BATCH_SHRINK = 4     # ... each this many times smaller


def _search_scenario(data: dict, c: Candidate, batch: int, confirm_s: float,
                     prompt_tokens: float, output_tokens: float) -> dict:
    """The layout at batch cap `batch`, run long enough for requests to finish: warm-up of two
    request lifetimes (the closed form's floor), then three more, and at least confirm_s.
    Prefill is chunked at its steady-state rate. The arrival rate is the search's to set."""
    d = copy.deepcopy(data)
    d.update(c.overrides())
    dense = (data.get("layout") or {}).get("dense")
    if dense is not None:   # the scenario's attention placement is kept (TP or DP)
        d["layout"]["dense"] = dense
    life = output_tokens * c.tpot_floor_s
    warmup = max(2 * life, confirm_s / 4)
    d["workload"] = {**d["workload"], "duration_s": max(confirm_s, warmup + 3 * life),
                     "warmup_s": warmup}
    d["workload"].pop("requests", None)
    chunk = max(1, math.ceil(batch * prompt_tokens / output_tokens))
    if dense == "replicated":   # the budget holds per attention rank
        chunk = max(1, math.ceil(chunk / c.ep))
    d["batching"] = {"policy": "continuous", "max_batch": batch, "prefill": "chunked",
                     "chunk_tokens": chunk}
    d["name"] = (f"{c.hardware}: EP {c.ep} TP {c.tp} PP {c.pp} DP {c.dp} "
                 f"m {c.microbatches} batch {batch}")
    return d


MONEY = ("priced_by", "usd_per_hour", "usd_per_million_output_tokens",
         "output_tokens_per_s_per_mw", "power_kw", "capex_per_output_token_per_s")


def _money(summary: dict | None) -> dict:
    """A run's cost figures (summary.json `cost`) as compare.csv columns; None when the run
    found no rate or nothing prices it."""
    c = (summary or {}).get("cost") or {}
    return {k: c.get(k) for k in MONEY}


def _layout_name(c: Candidate, batch: int) -> str:
    return f"EP{c.ep} TP{c.tp} PP{c.pp} DP{c.dp} batch {batch}"


def compare(scenario: str | Path, designs: list[str], out: str | Path,
            slo: SLO | dict[str, float] | None = None, budget_gpus: int | None = None,
            shortlist: int = 3, confirm_s: float = 2.0,
            progress: Callable[[str], None] | None = None,
            site: dict | None = None) -> pd.DataFrame:
    """One row per design: its best layout at capacity, or why it has none. `progress`
    receives a line per simulated probe; `site` (a validated `site:` mapping) replaces the
    scenario's."""
    scenario = Path(scenario)
    data = scenario_dict(scenario)
    if site is not None:
        data["site"] = site
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slo = slo if isinstance(slo, SLO) else SLO(**(slo or {}))
    targets = slo.targets()
    rows, pareto, confirmed, priced = [], [], [], []
    learned = None   # capacity found / closed form, from the first layout that has one
    s0 = scenario_from_dict(data, file=str(scenario), base_dir=scenario.parent)
    w = s0.workload
    for hw_name in designs:
        hw = load_hardware(hw_name, file="--hardware", key="--hardware", base_dir=Path("."))
        design = hw.name
        cands = candidates(data, hw_name, budget_gpus, str(scenario), scenario.parent)
        gpu_hour = _gpu_hour_price(s0.spec, hw)
        for c in cands:
            pareto.append({"hardware": design, "tokens_per_s_per_gpu": c.tokens_per_s_per_gpu,
                           "tpot_floor_s": c.tpot_floor_s})
            priced.append({"hardware": design, "tokens_per_s_per_user": 1.0 / c.tpot_floor_s,
                           "usd_per_million_output_tokens": (
                               gpu_hour / (c.tokens_per_s_per_gpu * 3600) * 1e6
                               if gpu_hour and c.tokens_per_s_per_gpu > 0 else None)})
        floor = targets.get("tpot_p99", math.inf)
        ok = [c for c in cands if c.tpot_floor_s <= floor]
        ok.sort(key=lambda c: -c.tokens_per_s_per_gpu)
        picked, seen = [], set()
        for c in ok:  # best batch of the best distinct layouts
            key = (c.ep, c.tp, c.pp)
            if key not in seen:
                seen.add(key)
                picked.append(c)
            if len(picked) == shortlist:
                break
        best, why = None, []
        if not cands:
            why.append("no layout fits in memory within the GPU budget")
        elif not picked:
            fastest = min(cands, key=lambda c: c.tpot_floor_s)
            why.append(f"every layout's closed-form time per output token exceeds the TPOT "
                       f"target (fastest: {_layout_name(fastest, fastest.batch)} at "
                       f"{fastest.tpot_floor_s * 1e3:.3g} ms)")
        for i, c in enumerate(picked):
            batch = c.batch
            for step in range(BATCH_STEPS + 1):
                d = _search_scenario(data, c, batch, confirm_s, w.prompt_tokens.mean,
                                     w.output_tokens.mean)
                path = out / (f"{design}-{i}.yaml" if step == 0 else
                              f"{design}-{i}-batch{batch}.yaml")
                label = f"{design}: layout {i + 1}/{len(picked)}, batch {batch}"
                found = search(d, slo, file=str(path), base_dir=scenario.parent,
                               tolerance=COMPARE_TOLERANCE, start_factor=learned or 1.0,
                               step=2.0 if learned is None else GUESS_STEP,
                               progress=progress and (lambda p, label=label: progress(
                                   f"{label}: {p.rate_per_s:.4g} requests/s "
                                   f"{'meets' if p.meets else 'misses'}")))
                sm = found.summary
                if found.rate_per_s is not None and learned is None:
                    learned = found.rate_per_s / found.estimate_rate_per_s
                if found.rate_per_s is not None:
                    d = at_rate(d, found.rate_per_s)
                path.write_text(yaml.safe_dump(d, sort_keys=False))
                row = {"hardware": hw_name, "design": design,
                       "gpus": c.dp * c.ep * c.tp * c.pp, "ep": c.ep, "tp": c.tp,
                       "pp": c.pp, "dp": c.dp, "microbatches": c.microbatches,
                       "batch": batch, "scenario": str(path),
                       "rate_per_s": found.rate_per_s,
                       "estimate_rate_per_s": found.estimate_rate_per_s,
                       "estimate_tokens_per_s_per_gpu": c.tokens_per_s_per_gpu,
                       "tokens_per_s_per_gpu": sm["tokens_per_s_per_gpu"] if sm else None,
                       "cost_per_million_tokens": sm["cost_per_million_tokens"] if sm else None,
                       # priced by this design's own hardware file (or the scenario's
                       # price_per_gpu_hour, which the user set for every design)
                       **_money(sm),
                       "tpot_p50_s": sm["tpot_s"]["p50"] if sm else None,
                       "tpot_p99_s": sm["tpot_s"]["p99"] if sm else None,
                       "ttft_p99_s": sm["ttft_s"]["p99"] if sm else None,
                       "meets_slo": sm is not None, "reason": found.reason}
                confirmed.append(row)
                if sm is not None:
                    pareto.append({"hardware": design, "tokens_per_s_per_gpu":
                                   sm["tokens_per_s_per_gpu"], "tpot_floor_s":
                                   sm["tpot_s"]["p99"], "confirmed": True})
                    priced.append({"hardware": design, "confirmed": True,
                                   "tokens_per_s_per_user": 1.0 / sm["tpot_s"]["p50"],
                                   "usd_per_million_output_tokens":
                                   row["usd_per_million_output_tokens"]})
                    if best is None or row["tokens_per_s_per_gpu"] > \
                            best["tokens_per_s_per_gpu"]:
                        best = row
                    break
                why.append(f"{_layout_name(c, batch)}: {found.reason}")
                if batch == 1:
                    break
                batch = max(1, batch // BATCH_SHRINK)
        rows.append(best or {"hardware": hw_name, "design": design, "meets_slo": False,
                             "scenario": None, "reason": "; ".join(why)})
    df = pd.DataFrame(rows)
    if "usd_per_million_output_tokens" in df:
        # 1 = the cheapest design per million output tokens at the SLO
        df["cost_rank"] = df["usd_per_million_output_tokens"].rank(method="min")
    df.to_csv(out / "compare.csv", index=False)
    pd.DataFrame(confirmed).to_csv(out / "confirmed.csv", index=False)
    plot_pareto(pd.DataFrame(pareto), out / "pareto.png", targets)
    plot_price(pd.DataFrame(priced), out / "price_of_speed.png", targets)
    return df


def _gpu_hour_price(spec, hw) -> float | None:
    """$ per GPU-hour of a design at full load: the scenario's price_per_gpu_hour if it sets
    one (every design alike: the user said so), else the design's own cost: and the site."""
    if spec.price_per_gpu_hour is not None:
        return spec.price_per_gpu_hour
    return hw.cost.gpu_hour_price(spec.site, hw.gpus_per_rack) if hw.cost else None
