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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from . import roofline as rf
from .api import apply_overrides, scenario_dict, simulate
from .spec.errors import SpecError
from .spec.presets import load_hardware, load_model
from .spec.scenario import scenario_from_dict
from .spec.units import parse_quantity

SLO_KEYS = {"tpot_p99": ("tpot_s", "p99"), "ttft_p99": ("ttft_s", "p99"),
            "e2e_p99": ("e2e_s", "p99"), "tpot_p50": ("tpot_s", "p50"),
            "ttft_p50": ("ttft_s", "p50")}


def parse_slo(text: str | None) -> dict[str, float]:
    """`tpot_p99=50ms,ttft_p99=2s` -> {"tpot_p99": 0.05, "ttft_p99": 2.0}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in SLO_KEYS:
            raise SpecError(f"cannot read SLO {part!r}", key="--slo",
                            fix=f"write KEY=TIME with KEY one of {', '.join(SLO_KEYS)}")
        try:
            out[key] = parse_quantity(value, "time")
        except ValueError as exc:
            raise SpecError(str(exc), key="--slo", fix="e.g. tpot_p99=50ms") from None
    return out


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


def comm_per_step(s) -> tuple[float, float]:
    """Uncontended communication of one step through all stages as (seconds fixed,
    seconds per token): the engine's collectives (dispatch and combine per MoE layer, two TP
    all-reduces per layer, stage-boundary sends) on the layout's real placement, each taking
    latency + max(bytes / capacity) over its links. Bytes grow linearly with tokens."""
    from .cluster.placement import place  # noqa: PLC0415
    from .cluster.topology import build_cluster  # noqa: PLC0415
    from .engine import collectives as coll  # noqa: PLC0415
    from .engine.costs import layer_costs  # noqa: PLC0415

    lay, m = s.layout, s.model
    cluster = build_cluster(s.hardware, s.racks)
    groups = place(cluster, lay, s.file).gpus[0]
    c = layer_costs(m, s.hardware, lay, s.spec.moe, s.spec.engine.activation_precision, False)
    G, ep, tp = c.G, c.ep, c.tp

    def drain(t: coll.Transfer) -> float:
        return float((t.load / cluster.capacity[t.links]).max()) if len(t.links) else 0.0

    fixed = per_token = 0.0
    if m.moe is not None and ep > 1:  # one token spread evenly, its k copies over EP ranks
        share = np.full((G, G), c.top_k / (G * ep * tp))
        for nbytes in (c.dispatch_bytes, c.combine_bytes):
            t = coll.pair_loads(cluster, groups[0], share * nbytes)
            fixed += m.moe.moe_layers * t.latency
            per_token += m.moe.moe_layers * drain(t)
    if tp > 1:
        t = coll.all_reduce(cluster, groups[0][:tp], c.activation_bytes / ep,
                            s.spec.engine.all_reduce)
        fixed += 2 * m.layers * t.latency
        per_token += 2 * m.layers * drain(t)
    for a, b in zip(groups[:-1], groups[1:]):
        t = coll.send_recv(cluster, a, b, c.activation_bytes / G)
        fixed += t.latency
        per_token += drain(t)
    if lay.pipeline_parallel > 1:
        fixed += cluster.path_latency(int(groups[-1][0]), int(groups[0][0]))
    return fixed, per_token


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
    w = scenario_from_dict(data, file=file, base_dir=base).workload
    prefill_per_token = w.prompt_tokens.mean / w.output_tokens.mean
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
            s = scenario_from_dict(apply_overrides(data, {"hardware": hardware, "racks": racks,
                                                          "layout": layout}),
                                   file=file, base_dir=base)
        except SpecError:
            continue  # infeasible on this design
        context = s.mean_context() if context is None else context
        comm_fixed, comm_per_token = comm_per_step(s)
        for b in batches:
            r = rf.evaluate(s.model, s.hardware, s.layout, b, context,
                            s.spec.price_per_gpu_hour)
            if not r.fits:
                break
            # steady state: every output token also carries prompt/output prefill tokens
            tokens = b * (1 + prefill_per_token)
            step = max(r.compute_time_s * (1 + prefill_per_token),
                       r.weight_time_s + r.kv_time_s) + comm_fixed + tokens * comm_per_token
            cycle = float(rf.token_cycle(s.model, s.layout, step))
            rate = float(rf.tokens_per_s(s.model, s.layout, b, step))
            out.append(Candidate(hardware, racks, ep, tp, pp, dp, m, b, cycle,
                                 rate / s.layout.total_gpus))
    return out


LOAD = 0.7  # confirm at this fraction of the estimated capacity (headroom for queueing)


def _confirm_scenario(data: dict, c: Candidate, confirm_s: float, prompt_tokens: float,
                      output_tokens: float) -> dict:
    """Poisson arrivals at LOAD x the estimated capacity of the layout, long enough for
    requests to finish: warm-up of two request lifetimes (the estimate's floor), then three
    more, and at least confirm_s. Prefill is chunked at its steady-state rate."""
    d = copy.deepcopy(data)
    d.update(c.overrides())
    life = output_tokens * c.tpot_floor_s
    warmup = max(2 * life, confirm_s / 4)
    capacity_rps = c.tokens_per_s_per_gpu * c.dp * c.ep * c.tp * c.pp / output_tokens
    d["workload"] = {**d["workload"],
                     "arrival": {"process": "poisson", "rate_per_s": LOAD * capacity_rps},
                     "duration_s": max(confirm_s, warmup + 3 * life), "warmup_s": warmup}
    d["workload"].pop("requests", None)
    chunk = max(1, math.ceil(c.batch * prompt_tokens / output_tokens))
    d["batching"] = {"policy": "continuous", "max_batch": c.batch, "prefill": "chunked",
                     "chunk_tokens": chunk}
    d["name"] = (f"{c.hardware}: EP {c.ep} TP {c.tp} PP {c.pp} DP {c.dp} "
                 f"m {c.microbatches} batch {c.batch}")
    return d


def _meets(summary: dict, slo: dict[str, float]) -> bool:
    for key, limit in slo.items():
        metric, q = SLO_KEYS[key]
        v = summary[metric][q]
        if v is None or v > limit:
            return False
    return True


def compare(scenario: str | Path, designs: list[str], out: str | Path,
            slo: dict[str, float] | None = None, budget_gpus: int | None = None,
            shortlist: int = 3, confirm_s: float = 2.0, progress=None) -> pd.DataFrame:
    scenario = Path(scenario)
    data = scenario_dict(scenario)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slo = slo or {}
    rows, pareto, confirmed = [], [], []
    w = scenario_from_dict(data, file=str(scenario), base_dir=scenario.parent).workload
    for hw_name in designs:
        design = load_hardware(hw_name, file="--hardware", key="--hardware",
                               base_dir=Path(".")).name
        cands = candidates(data, hw_name, budget_gpus, str(scenario), scenario.parent)
        for c in cands:
            pareto.append({"hardware": design, "tokens_per_s_per_gpu": c.tokens_per_s_per_gpu,
                           "tpot_floor_s": c.tpot_floor_s})
        ok = [c for c in cands if c.tpot_floor_s <= slo.get("tpot_p99", math.inf)]
        ok.sort(key=lambda c: -c.tokens_per_s_per_gpu)
        picked, seen = [], set()
        for c in ok:  # best batch of the best distinct layouts
            key = (c.ep, c.tp, c.pp)
            if key not in seen:
                seen.add(key)
                picked.append(c)
            if len(picked) == shortlist:
                break
        best = None
        for i, c in enumerate(picked):
            d = _confirm_scenario(data, c, confirm_s, w.prompt_tokens.mean,
                                  w.output_tokens.mean)
            path = out / f"{design}-{i}.yaml"
            path.write_text(yaml.safe_dump(d, sort_keys=False))
            run = simulate(scenario_from_dict(d, file=str(path), base_dir=scenario.parent))
            sm = run.summary
            row = {"hardware": hw_name, "design": design, "gpus": c.dp * c.ep * c.tp * c.pp, "ep": c.ep,
                   "tp": c.tp, "pp": c.pp, "dp": c.dp, "microbatches": c.microbatches,
                   "batch": c.batch, "scenario": str(path),
                   "estimate_tokens_per_s_per_gpu": c.tokens_per_s_per_gpu,
                   "tokens_per_s_per_gpu": sm["tokens_per_s_per_gpu"],
                   "cost_per_million_tokens": sm["cost_per_million_tokens"],
                   "tpot_p50_s": sm["tpot_s"]["p50"], "tpot_p99_s": sm["tpot_s"]["p99"],
                   "ttft_p99_s": sm["ttft_s"]["p99"], "meets_slo": _meets(sm, slo)}
            pareto.append({"hardware": design, "tokens_per_s_per_gpu":
                           sm["tokens_per_s_per_gpu"], "tpot_floor_s": sm["tpot_s"]["p99"],
                           "confirmed": True})
            if progress:
                progress(hw_name, i, len(picked))
            confirmed.append(row)
            if row["meets_slo"] and (best is None or row["tokens_per_s_per_gpu"] >
                                     best["tokens_per_s_per_gpu"]):
                best = row
        rows.append(best or {"hardware": hw_name, "design": design, "meets_slo": False,
                             "scenario": None if picked else "no feasible layout"})
    df = pd.DataFrame(rows)
    df.to_csv(out / "compare.csv", index=False)
    pd.DataFrame(confirmed).to_csv(out / "confirmed.csv", index=False)
    plot_pareto(pd.DataFrame(pareto), out / "pareto.png", slo)
    return df


def plot_pareto(points: pd.DataFrame, path: Path, slo: dict[str, float]) -> Path:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    if "confirmed" not in points:
        points["confirmed"] = False
    points["confirmed"] = points["confirmed"].fillna(False).astype(bool)
    for i, (hw, g) in enumerate(points.groupby("hardware", sort=False)):
        colour = f"C{i}"
        est = g[~g.confirmed].sort_values("tpot_floor_s")
        if len(est):  # the frontier: best throughput reachable at each latency
            frontier = est.assign(best=est.tokens_per_s_per_gpu.cummax())
            ax.plot(frontier.tpot_floor_s * 1e3, frontier.best, "-", color=colour,
                    label=f"{hw} (roofline frontier)")
        conf = g[g.confirmed]
        if len(conf):
            ax.plot(conf.tpot_floor_s * 1e3, conf.tokens_per_s_per_gpu, "o", color=colour,
                    ms=8, label=f"{hw} (simulated, p99)")
    if "tpot_p99" in slo:
        ax.axvline(slo["tpot_p99"] * 1e3, color="grey", ls=":", label="TPOT p99 target")
    ax.set(xscale="log", yscale="log", xlabel="time per output token (ms)",
           ylabel="output tokens/s per GPU", title="Throughput per GPU vs per-token latency")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
