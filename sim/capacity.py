"""Capacity search: the highest Poisson arrival rate at which a deployment keeps up and meets
an SLO, found by simulated runs.

A probe runs the scenario with Poisson arrivals at one rate (everything else as written:
duration, warm-up, seed, layout, batching). It *meets* when the run is not overloaded
(results/load.py), at least one request completed after warm-up, and every SLO percentile is
within its limit. The search starts at the closed form's capacity (sim/estimate.py:
roofline, prefill and uncontended communication), which is optimistic, so it usually steps
down: it halves the rate until a probe meets (giving up, and saying why, after
`MAX_HALVINGS` halvings or before a probe would expect fewer than `MIN_ARRIVALS` arrivals in
its window), doubles it while probes meet, then bisects (geometric midpoints) until the
highest meeting rate and the lowest failing one are within `tolerance` of each other.

Probes share the seed, and the engine draws Poisson gaps as unit exponentials scaled by the
rate, so every probe sees the same arrival pattern stretched in time (common random
numbers): the verdict moves with the rate, not with the noise of a new draw.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .spec.errors import SpecError
from .spec.slo import SLO

MAX_HALVINGS = 12     # the search gives up 2^12 below where it started
MAX_DOUBLINGS = 6     # ... and stops 2^6 above it
DEFAULT_TOLERANCE = 0.05
MIN_ARRIVALS = 30     # a probe expecting fewer arrivals in its window says too little to judge


@dataclass(frozen=True)
class Probe:
    rate_per_s: float
    meets: bool
    why_not: list[str]          # overload reasons and SLO misses, in words
    summary: dict

    def to_json(self) -> dict:
        return {"rate_per_s": self.rate_per_s, "meets": self.meets, "why_not": self.why_not}


@dataclass
class Capacity:
    rate_per_s: float | None        # the highest rate found that meets the SLO (None: none)
    summary: dict | None            # the run at that rate
    slo: SLO
    estimate_rate_per_s: float      # the closed form's capacity, where the search started
    failing_rate_per_s: float | None   # the lowest rate found that does not meet it
    probes: list[Probe] = field(default_factory=list)
    reason: str | None = None       # why there is no answer, when there is none

    def to_json(self) -> dict:
        return {"rate_per_s": self.rate_per_s, "summary": self.summary,
                "slo": self.slo.targets(), "estimate_rate_per_s": self.estimate_rate_per_s,
                "failing_rate_per_s": self.failing_rate_per_s, "reason": self.reason,
                "probes": [p.to_json() for p in sorted(self.probes,
                                                       key=lambda p: p.rate_per_s)]}


def at_rate(data: dict, rate: float) -> dict:
    """The scenario mapping with Poisson arrivals at `rate` (closed-loop clients replaced)."""
    d = copy.deepcopy(data)
    d["workload"] = {**d["workload"], "arrival": {"process": "poisson", "rate_per_s": rate}}
    return d


def probe(data: dict, rate: float, slo: SLO, file: str, base_dir: Path) -> Probe:
    from .api import simulate  # noqa: PLC0415
    from .spec.scenario import scenario_from_dict  # noqa: PLC0415

    sm = simulate(scenario_from_dict(at_rate(data, rate), file=file, base_dir=base_dir)).summary
    why = list(sm["load"]["reasons"]) if sm["overloaded"] else []
    if sm["requests_completed"] == 0 or not sm["ttft_s"]["count"]:
        why.append("no request that arrived after warm-up completed")
    why += slo.misses(sm)
    return Probe(rate, not why, why, sm)


def search(data: dict, slo: SLO, *, file: str = "<inline>", base_dir: Path = Path("."),
           tolerance: float = DEFAULT_TOLERANCE, start_factor: float = 1.0,
           step: float = 2.0, progress: Callable[[Probe], None] | None = None) -> Capacity:
    """The highest rate meeting `slo` to within `tolerance` (relative). The first probe runs
    at `start_factor` x the closed form's capacity; the bracket then widens by `step` per
    probe (a good factor, e.g. learnt on a similar layout, deserves a small step)."""
    from .estimate import capacity  # noqa: PLC0415
    from .spec.scenario import scenario_from_dict  # noqa: PLC0415
    from .spec.workload import Trace  # noqa: PLC0415

    if not step > 1 + tolerance:
        raise SpecError(f"step {step:g} must exceed 1 + tolerance", key="step",
                        file="command line", fix="e.g. step 2")
    if not 0 < tolerance < 1:
        raise SpecError(f"tolerance {tolerance:g} is not between 0 and 1", key="--tolerance",
                        file="command line", fix="e.g. --tolerance 0.05 (5%)")
    s = scenario_from_dict(data, file=file, base_dir=base_dir)
    if isinstance(s.workload.arrival, Trace):
        raise SpecError("a request trace fixes its own arrival times; the capacity search "
                        "varies a Poisson rate", file=file, key="workload.arrival",
                        fix="use {process: poisson, rate_per_s: R} with the trace's token "
                            "distributions")
    if s.workload.duration_s is None:
        raise SpecError("the capacity search needs a time window to judge each rate",
                        file=file, key="workload.requests",
                        fix="give workload.duration_s (and warmup_s) instead of requests")
    est = capacity(s)
    window = s.workload.duration_s - s.workload.warmup_s
    result = Capacity(None, None, slo, est.requests_per_s, None)
    if not est.fits:
        result.reason = ("the model's weights and one sequence's KV do not fit in HBM on this "
                         "layout")
        return result

    def run(rate: float) -> Probe:
        p = probe(data, rate, slo, file, base_dir)
        result.probes.append(p)
        if progress:
            progress(p)
        return p

    lo = hi = None            # highest meeting probe, lowest failing probe
    first = run(est.requests_per_s * start_factor)
    up = math.ceil(MAX_DOUBLINGS * math.log(2) / math.log(step))     # as far as 2x steps go
    down = math.ceil(MAX_HALVINGS * math.log(2) / math.log(step))
    if first.meets:
        lo = first
        for _ in range(up):
            p = run(lo.rate_per_s * step)
            if not p.meets:
                hi = p
                break
            lo = p
    else:
        hi = first
        for _ in range(down):
            if hi.rate_per_s / step * window < MIN_ARRIVALS:
                break   # too few requests to judge: report what the lowest probe saw
            p = run(hi.rate_per_s / step)
            if p.meets:
                lo = p
                break
            hi = p
    if lo is None:
        result.failing_rate_per_s = hi.rate_per_s
        result.reason = (f"no rate met the SLO, down to {hi.rate_per_s:.4g} requests/s "
                         f"(the closed form's estimate is {est.requests_per_s:.4g}/s); at "
                         f"that rate: {'; '.join(hi.why_not)}")
        if hi.rate_per_s / step * window < MIN_ARRIVALS:
            result.reason += (f" (a lower rate puts fewer than {MIN_ARRIVALS} arrivals in the "
                              f"{window:.3g} s window: the SLO is below this layout's latency "
                              "floor, or the window is too short to judge)")
        return result
    while hi is not None and hi.rate_per_s > lo.rate_per_s * (1 + tolerance):
        p = run(math.sqrt(lo.rate_per_s * hi.rate_per_s))
        lo, hi = (p, hi) if p.meets else (lo, p)
    result.rate_per_s, result.summary = lo.rate_per_s, lo.summary
    result.failing_rate_per_s = hi.rate_per_s if hi is not None else None
    if hi is None:
        result.reason = (f"still meeting the SLO at {lo.rate_per_s:.4g} requests/s "
                         f"(the closed form's estimate is {est.requests_per_s:.4g}/s); the "
                         "search stopped there")
    return result
