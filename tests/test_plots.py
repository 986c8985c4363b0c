"""Pictures that do not hide data, checked on the matplotlib objects: coinciding curves stay
apart, infeasible regions are marked where memory runs out, tick labels do not collide."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from sim import roofline as rf
from sim.api import load
from sim.results.pareto_plot import pareto_figure
from sim.results.plotting import plain_log_ticks
from sim.results.report import _sweep_figure
from sim.results.roofline_plot import NO_FIT, fitting_tokens, roofline_figure


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_identical_designs_get_distinct_styles_and_a_legend_note():
    est = pd.DataFrame({"tpot_floor_s": [0.002, 0.004, 0.008],
                        "tokens_per_s_per_gpu": [100.0, 400.0, 900.0]})
    sim = pd.DataFrame({"tpot_floor_s": [0.009], "tokens_per_s_per_gpu": [800.0],
                        "confirmed": [True]})
    designs = ["a", "b", "c", "d"]
    points = pd.concat([part.assign(hardware=d) for d in designs for part in (est, sim)])
    fig = pareto_figure(points, {"tpot_p99": 0.01})
    ax = fig.axes[0]
    frontiers = [ln for ln in ax.lines if ln.get_drawstyle() == "steps-post"]
    assert len(frontiers) == 4
    assert len({(ln.get_marker(), ln.get_linestyle()) for ln in frontiers}) == 4
    # drawn on top of each other: each earlier curve wider, so the later ones show inside
    widths = [ln.get_linewidth() for ln in frontiers]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == 4
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for d in "bcd":
        assert any(t.startswith(d) and "frontier = a" in t and "simulated = a" in t
                   for t in legend), legend
    assert not any(t.startswith("a (") for t in legend)


def test_distinct_designs_get_no_coincidence_note():
    points = pd.DataFrame({"hardware": ["x", "x", "y", "y"],
                           "tpot_floor_s": [0.002, 0.004, 0.003, 0.006],
                           "tokens_per_s_per_gpu": [100.0, 300.0, 50.0, 200.0]})
    legend = [t.get_text() for t in pareto_figure(points, {}).axes[0].get_legend().get_texts()]
    assert "x" in legend and "y" in legend and not any("=" in t for t in legend)


@pytest.mark.parametrize("name", ["llama-70b-h100", "default"])
def test_roofline_marks_where_kv_no_longer_fits(name):
    s = load(REPO / "scenarios" / f"{name}.yaml")
    point = rf.for_scenario(s)
    tokens = fitting_tokens(s)
    fig = roofline_figure(s, point)
    limits = [tokens / point.context_tokens] * 2 + [tokens / point.batch]
    for ax, limit in zip(fig.axes[:3], limits):
        spans = [p for p in ax.patches if p.get_label() == NO_FIT]
        assert len(spans) == 1, ax.get_title()
        assert spans[0].get_x() == pytest.approx(limit)
        right = spans[0].get_x() + spans[0].get_width()
        assert right == pytest.approx(ax.lines[0].get_xdata()[-1])   # to the curve's end
        assert NO_FIT in [t.get_text() for t in ax.get_legend().get_texts()]
    # the span starts where the roofline's own memory check starts failing
    for batch, context in ((point.batch, 0.999 * limits[2]),
                           (0.999 * limits[0], point.context_tokens)):
        assert rf.evaluate(s.model, s.hardware, s.layout, batch, context).fits
        assert not rf.evaluate(s.model, s.hardware, s.layout, batch * 1.002, context * 1.002).fits


def test_log_ticks_are_plain_and_sparse_over_many_decades():
    fig, (narrow, wide) = plt.subplots(1, 2)
    for ax, top in ((narrow, 50.0), (wide, 1e6)):
        ax.set_xscale("log")
        ax.set_xlim(1, top)
        plain_log_ticks(ax.xaxis)
    fig.canvas.draw()

    def labels(ax):   # major and minor, inside the axis, left to right
        lo, hi = ax.get_xlim()
        ticks = [(x, t.get_text()) for minor in (False, True) for x, t in
                 zip(ax.get_xticks(minor=minor), ax.get_xticklabels(minor=minor))]
        return [text for x, text in sorted(ticks) if text and lo <= x <= hi]

    assert labels(narrow) == ["1", "2", "5", "10", "20", "50"]
    wide_labels = labels(wide)   # powers of ten only (matplotlib may skip some to fit)
    assert len(wide_labels) >= 4 and set(wide_labels) <= {"1", "10", "100", "1k", "10k",
                                                           "100k", "1M"}


def test_sweep_figure_keeps_identical_series_apart_and_skips_nothing_with_data():
    rows = [{"ep": ep, "batch": b, "tokens_per_s_per_gpu": ep * (1 if b == 64 else 2),
             "bubble_fraction": 0.1, "ttft_s.p99": np.nan}
            for ep in (8, 16, 64) for b in (64, 256, 1024)]   # 256 and 1024 identical
    ok = pd.DataFrame(rows)
    fig, key = _sweep_figure(ok, "ep", ["batch"], ["tokens_per_s_per_gpu", "bubble_fraction"])
    assert key == {} and len(fig.axes) == 2
    lines = fig.axes[0].lines
    assert len(lines) == 3 and len({(ln.get_marker(), ln.get_linestyle()) for ln in lines}) == 3
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["batch = 64", "batch = 256", "batch = 1,024 (= batch = 256)"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["8", "16", "64"]


def test_sweep_figure_numbers_long_categorical_values():
    layouts = ['{"expert_parallel": 64, "data_parallel": 2}', '{"pipeline_parallel": 2}']
    ok = pd.DataFrame({"layout": layouts, "bubble_fraction": [0.0, 0.5]})
    fig, key = _sweep_figure(ok, "layout", [], ["bubble_fraction"])
    assert key == {layouts[0]: "1", layouts[1]: "2"}
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2"]
