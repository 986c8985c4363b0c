"""Rack economics (issue 23): a run's cost figures against the closed form from the hardware
file's `cost:`, the site and the run's own GPU time and throughput; the price of speed."""

from __future__ import annotations

import numpy as np
import pytest

from sim.api import load, simulate
from sim.spec import SpecError

SITE = {"electricity_per_kwh": 0.11, "pue": 1.25, "hosting_per_kw_month": 180.0}
YEAR_H = 24 * 365.25


def llama(concurrency: int, **over):
    d = {"version": 1, "name": "cost", "seed": 0, "hardware": "hgx-h100", "racks": 2,
         "model": {"preset": "llama-3.1-70b", "weight_precision": "fp8"},
         "layout": {"tensor_parallel": 8},
         "workload": {"arrival": {"process": "closed", "concurrency": concurrency},
                      "prompt_tokens": {"dist": "fixed", "value": 256},
                      "output_tokens": {"dist": "fixed", "value": 64},
                      "duration_s": 6.0, "warmup_s": 2.0},
         "batching": {"policy": "continuous", "max_batch": concurrency},
         "site": SITE}
    d.update(over)
    return load(d)


def test_cost_figures_are_the_closed_form_of_the_files_and_the_run():
    r = simulate(llama(16))
    hw = r.scenario.hardware
    c, sm, g = r.summary["cost"], r.summary, r.gpus
    window = sm["window_s"][1] - sm["window_s"][0]
    # two 8-GPU servers; the layout uses one (TP 8): the other draws idle power
    per_gpu = hw.cost.power_per_rack / hw.gpus_per_rack
    busy = (g["compute_s"] + g["memory_s"] + g["network_s"]) / window
    assert (busy[g["role"] == "unused"] == 0).all() and busy.max() <= 1 + 1e-9
    kw = (per_gpu * (0.3 + 0.7 * busy)).sum() / 1e3
    capex_h = 2 * hw.cost.capex_per_rack / (4 * YEAR_H)
    energy_h = kw * SITE["pue"] * SITE["electricity_per_kwh"]
    hosting_h = 2 * hw.cost.power_per_rack / 1e3 * SITE["hosting_per_kw_month"] / (YEAR_H / 12)
    per_hour = capex_h + energy_h + hosting_h
    tps = sm["output_tokens_per_s"]
    assert c["priced_by"] == "hardware cost and site" and c["site_assumed"] is False
    assert c["power_kw"] == pytest.approx(kw, rel=1e-3)
    assert c["usd_per_hour"] == pytest.approx(per_hour, rel=1e-3)
    assert c["usd_per_million_output_tokens"] == pytest.approx(per_hour / (tps * 3600) * 1e6,
                                                               rel=1e-3)
    assert c["output_tokens_per_s_per_mw"] == pytest.approx(tps / (kw / 1e3), rel=1e-3)
    assert c["capex_per_output_token_per_s"] == pytest.approx(2 * 2.5e5 / tps, rel=1e-3)
    # cost_per_million_tokens keeps its meaning ($ per million output tokens)
    assert sm["cost_per_million_tokens"] == c["usd_per_million_output_tokens"]
    # an idle GPU draws less than a busy one: the busier run draws more
    assert kw > 2 * 8 * per_gpu * 0.3 / 1e3


def test_price_per_gpu_hour_overrides_the_files():
    r = simulate(llama(16, price_per_gpu_hour=4.0))
    c = r.summary["cost"]
    assert c["priced_by"] == "price_per_gpu_hour" and c["usd_per_hour"] == pytest.approx(32.0)
    assert r.summary["cost_per_million_tokens"] == pytest.approx(
        32.0 / (r.summary["output_tokens_per_s"] * 3600) * 1e6)


def test_a_larger_batch_costs_less_per_token_and_serves_each_user_slower():
    runs = [simulate(llama(b)) for b in (4, 16, 64)]
    price = [r.summary["cost"]["usd_per_million_output_tokens"] for r in runs]
    tpot = [r.summary["tpot_s"]["p50"] for r in runs]
    assert price[0] > price[1] > price[2]          # the price of speed: monotone
    assert tpot[0] < tpot[1] < tpot[2]


def test_the_default_site_is_an_assumption_and_says_so():
    d = llama(4)
    data = d.spec.model_dump(mode="json")
    r = simulate(llama(4, site=None))
    assert r.summary["cost"]["site_assumed"] is True
    assert data["site"] == SITE


def test_bad_cost_figures_are_rejected_with_the_key():
    with pytest.raises(SpecError) as e:
        load({"version": 1, "hardware": {"preset": "hgx-h100",
                                          "cost": {"capex_per_rack": 1e5,
                                                   "power_per_rack": "10 kg",
                                                   "idle_power_fraction": 0.3,
                                                   "amortisation_years": 4}},
              "model": "llama-3.1-70b", "layout": {"tensor_parallel": 8},
              "workload": {"arrival": {"process": "closed", "concurrency": 1},
                           "prompt_tokens": {"dist": "fixed", "value": 8},
                           "output_tokens": {"dist": "fixed", "value": 8},
                           "duration_s": 1},
              "batching": {"policy": "continuous", "max_batch": 1}})
    assert "power_per_rack" in str(e.value)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sim.results.price_plot import frontier  # noqa: E402

POS = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(POS, POS), min_size=1, max_size=40))
def test_the_priced_frontier_is_monotone_and_the_cheapest(points):
    """At each speed the frontier is the cheapest layout serving at least that speed: faster
    never costs less, and no layout lies below the frontier at or under its own speed."""
    speed, price = (np.array(x, float) for x in zip(*points))
    s, c = frontier(speed, price)
    assert (s[1:] > s[:-1]).all() and (c[1:] >= c[:-1]).all()
    for x, y in zip(speed, price):
        i = np.searchsorted(s, x, side="right") - 1
        assert i >= 0 and c[i] <= y
