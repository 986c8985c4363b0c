"""The roofline against domain.md's closed forms, written out independently here."""

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import BASE, TOY_DENSE
from sim import roofline as rf
from sim.spec import scenario_from_dict
from sim.spec.layout import stage_layers

F, W, HBM = 1.0e15, 3.35e12, 80e9  # toy GPU


def scenario(**layout):
    d = copy.deepcopy(BASE)
    d["layout"] = {"expert_parallel": 8, "pipeline_parallel": 1, "microbatches": 1, **layout}
    return scenario_from_dict(d)


def dense_scenario(**layout):
    d = copy.deepcopy(BASE)
    d["model"] = TOY_DENSE
    d["layout"] = {"tensor_parallel": 8, **layout}
    return scenario_from_dict(d)


@pytest.mark.parametrize("make,g,n_total,n_active,bpp,kv", [
    (lambda: scenario(), 8, 47e9, 13e9, 1, 131072),
    (lambda: scenario(pipeline_parallel=2, microbatches=2), 8, 47e9, 13e9, 1, 131072),
    (lambda: scenario(expert_parallel=4, pipeline_parallel=4, microbatches=4), 4, 47e9, 13e9,
     1, 131072),
    (lambda: dense_scenario(), 8, 13e9, 13e9, 2, 819200),
    (lambda: dense_scenario(tensor_parallel=4, pipeline_parallel=2, microbatches=2), 4, 13e9,
     13e9, 2, 819200),
])
@pytest.mark.parametrize("b,ctx", [(1, 0), (7, 1000), (256, 4096), (4096, 100_000)])
def test_matches_domain_closed_forms(make, g, n_total, n_active, bpp, kv, b, ctx):
    s = make()
    p = s.layout.pipeline_parallel
    m = s.layout.n_microbatches
    r = rf.for_scenario(s, batch=b, context=ctx)
    compute = 2 * b * n_active / (g * F)
    weight = n_total * bpp / (g * W)
    kvt = b * ctx * kv / (g * W)
    step = max(compute, weight + kvt)
    assert r.compute_time_s == pytest.approx(compute, rel=1e-12)
    assert r.weight_time_s == pytest.approx(weight, rel=1e-12)
    assert r.kv_time_s == pytest.approx(kvt, rel=1e-12)
    assert r.step_time_s == pytest.approx(step, rel=1e-12)
    assert r.bound == ("compute" if compute > weight + kvt else "memory")
    assert r.balance_batch == pytest.approx(F * n_total * bpp / (2 * n_active * W), rel=1e-12)
    # domain.md section 4: N*bytes/(EP*PP) + (PP*b)*L*kv/(EP*PP), with m = PP microbatches
    mem = n_total * bpp / (g * p) + (m * b) * ctx * kv / (g * p)
    assert r.memory_per_gpu_bytes == pytest.approx(mem, rel=1e-12)
    assert r.fits == (mem <= HBM)
    assert r.gpus == g * p


@pytest.mark.parametrize("p,m", [(1, 1), (2, 1), (2, 2), (4, 2), (4, 4), (4, 8)])
def test_throughput_min_microbatches_stages(p, m):
    """Back to back (continuous batching): tokens/s = DP x min(m, p) x b / step."""
    d = copy.deepcopy(BASE)
    d["batching"] = {"policy": "continuous", "max_batch": 4096}
    d["layout"] = {"expert_parallel": 4, "pipeline_parallel": p, "microbatches": m,
                   "data_parallel": 1}
    s = scenario_from_dict(d)
    r = rf.for_scenario(s, batch=100, context=2000)
    assert r.tokens_per_s == pytest.approx(min(m, p) * 100 / r.step_time_s, rel=1e-12)
    assert r.tokens_per_s_per_gpu == pytest.approx(r.tokens_per_s / (4 * p), rel=1e-12)
    price = d["price_per_gpu_hour"]
    assert r.cost_per_million_tokens == pytest.approx(
        price * 4 * p / 3600 / r.tokens_per_s * 1e6, rel=1e-12)


def test_fixed_interval_caps_throughput_at_b_over_t():
    """domain.md section 2: a train every T carries B: throughput B/T when the step is shorter."""
    s = scenario()  # fixed_interval 20 ms
    r = rf.for_scenario(s, batch=2000, context=1000)
    assert r.step_time_s < 0.020
    assert r.tokens_per_s == pytest.approx(2000 / 0.020, rel=1e-12)


def test_uneven_stages_first_stages_get_extra_layers():
    assert stage_layers(61, 2) == [31, 30]
    assert stage_layers(61, 4) == [16, 15, 15, 15]
    assert sum(stage_layers(97, 7)) == 97


def test_little_law_batch_poisson():
    """At light load the implied batch satisfies b = rate x out / slots x interval."""
    s = scenario(pipeline_parallel=2, microbatches=2)
    r = rf.for_scenario(s, context=2176)
    assert r.batch == np.ceil(40 * 256 / 2 * 0.020)
    assert r.tokens_per_s == pytest.approx(2 * r.batch / 0.020)


def test_no_price_no_cost():
    d = copy.deepcopy(BASE)
    del d["price_per_gpu_hour"]
    assert rf.for_scenario(scenario_from_dict(d), batch=10, context=10).cost_per_million_tokens \
        is None


def test_moe_weight_latency_floor_uses_whole_stage():
    """Batch-1 latency floor: N_total x bytes / (G x bw) (domain.md section 1)."""
    s = scenario()
    r = rf.for_scenario(s, batch=1, context=0)
    assert r.step_time_s == pytest.approx(47e9 / (8 * W), rel=1e-12)


# ----------------------------------------------------------------- hypothesis properties

S = scenario(pipeline_parallel=2, microbatches=2)
RATES = rf.Rates.of(S.model, S.hardware, S.layout)


@settings(max_examples=300, deadline=None)
@given(b1=st.floats(1, 1e5), b2=st.floats(1, 1e5), ctx=st.floats(0, 1e6))
def test_step_non_decreasing_in_batch(b1, b2, ctx):
    lo, hi = sorted((b1, b2))
    assert rf.step_terms(S.model, RATES, lo, ctx)[3] <= rf.step_terms(S.model, RATES, hi, ctx)[3]


@settings(max_examples=300, deadline=None)
@given(c1=st.floats(0, 1e6), c2=st.floats(0, 1e6), b=st.floats(1, 1e5))
def test_step_non_decreasing_in_context(c1, c2, b):
    lo, hi = sorted((c1, c2))
    assert rf.step_terms(S.model, RATES, b, lo)[3] <= rf.step_terms(S.model, RATES, b, hi)[3]


@settings(max_examples=300, deadline=None)
@given(b1=st.floats(1, 1e5), b2=st.floats(1, 1e5), ctx=st.floats(0, 1e5))
def test_cost_per_token_non_increasing_while_memory_bound(b1, b2, ctx):
    lo, hi = sorted((b1, b2))
    c, w, k, step_hi = rf.step_terms(S.model, RATES, hi, ctx)
    if c > w + k:
        return  # only the memory-bound regime is claimed
    step_lo = rf.step_terms(S.model, RATES, lo, ctx)[3]
    cost_lo = rf.cost_per_million(2.5, 16, rf.tokens_per_s(S.model, S.layout, lo, step_lo))
    cost_hi = rf.cost_per_million(2.5, 16, rf.tokens_per_s(S.model, S.layout, hi, step_hi))
    assert cost_hi <= cost_lo * (1 + 1e-12)


@settings(max_examples=200, deadline=None)
@given(frac=st.floats(0.01, 100).filter(lambda f: abs(f - 1) > 1e-6))
def test_bound_switches_at_balance_batch(frac):
    """With no KV traffic, compute-bound exactly above the balance batch."""
    bstar = rf.balance_batch(S.model, RATES)
    r = rf.evaluate(S.model, S.hardware, S.layout, bstar * frac, 0.0)
    assert r.bound == ("compute" if frac > 1 else "memory")
