"""The one cost model: what a run's deployment costs per hour, per million tokens and per
megawatt, from the hardware file's `cost:`, the scenario's `site:` and the run's own GPU time
and throughput (issue 23; docs/cost.md).

    capex / h   = capex_per_rack x racks / (amortisation_years x hours per year)
    power (IT)  = sum over the cluster's GPUs of  P x (idle + (1 - idle) x busy_g)
                  with P = power_per_rack / gpus_per_rack (a GPU's share of the rack, its CPUs,
                  switches and fans included) and busy_g the share of the window GPU g spent
                  computing, reading memory or communicating (gpus.csv); GPUs the layout
                  leaves unused draw idle power
    energy / h  = power (kW) x pue x electricity_per_kwh
    hosting / h = racks x power_per_rack (kW, provisioned) x hosting_per_kw_month / hours per month
    $ / h       = capex / h + energy / h + hosting / h    (HardwareCost.hourly)

An explicit `price_per_gpu_hour` replaces all of that: $ / h = price x GPUs the layout uses
(power is still reported when the hardware file has `cost:`). Every figure per token divides by
the run's own measured throughput; none is reported when nothing completed.
"""

from __future__ import annotations

import numpy as np

from ..spec.cost import DEFAULT_SITE, SECONDS_PER_HOUR, HardwareCost, Site


def power_kw(cost: HardwareCost, gpus_per_rack: int, busy: np.ndarray) -> float:
    """IT power (kW) of the cluster whose GPUs were busy the shares `busy` of the window."""
    per_gpu = cost.power_per_rack / gpus_per_rack
    idle = cost.idle_power_fraction
    return float(np.sum(per_gpu * (idle + (1.0 - idle) * np.clip(busy, 0.0, 1.0)))) / 1e3


def run_cost(cost: HardwareCost | None, site: Site | None, price_per_gpu_hour: float | None,
             racks: int, gpus_per_rack: int, gpus_used: int, busy: np.ndarray,
             output_tokens_per_s: float, served: bool) -> dict | None:
    """summary.json `cost`, or None when neither the hardware file nor the scenario prices
    the run. `busy` is over the cluster's GPUs; `served`: did any request complete."""
    if cost is None and price_per_gpu_hour is None:
        return None
    out: dict = {"priced_by": "price_per_gpu_hour" if price_per_gpu_hour is not None
                 else "hardware cost and site"}
    kw = power_kw(cost, gpus_per_rack, busy) if cost is not None else None
    if price_per_gpu_hour is not None:
        per_hour = price_per_gpu_hour * gpus_used
        parts = {}
    else:
        s = site or DEFAULT_SITE
        capex, energy, hosting = cost.hourly(s, racks, kw)
        per_hour = capex + energy + hosting
        parts = {"capex_per_hour": capex, "energy_per_hour": energy,
                 "hosting_per_hour": hosting, "site": s.model_dump(),
                 "site_assumed": site is None}
    tps = output_tokens_per_s if served and output_tokens_per_s > 0 else 0.0
    out.update({
        "usd_per_hour": per_hour,
        "usd_per_million_output_tokens": per_hour / (tps * SECONDS_PER_HOUR) * 1e6
        if tps else None,
        "power_kw": kw,
        "output_tokens_per_s_per_mw": tps / (kw / 1e3) if tps and kw else None,
        "capex": cost.capex_per_rack * racks if cost is not None else None,
        "capex_per_output_token_per_s": cost.capex_per_rack * racks / tps
        if tps and cost is not None else None,
        **parts,
    })
    return out
