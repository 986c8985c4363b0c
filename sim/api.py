"""The Python API for notebooks: load a scenario, override keys by dotted path, run it with
the engine or the closed form, and get pandas DataFrames.

    import sim.api as rs
    s = rs.load("scenarios/default.yaml", **{"layout.expert_parallel": 32})
    r = rs.simulate(s)           # r.summary (dict), r.requests / r.gpus / r.links / r.steps
    rs.roofline(s).to_json()     # the closed form
    rs.summary_frame([r, ...])   # one row per run, every summary figure as a column
    rs.plot_run(r, "out/plots"); rs.plot_roofline(s, "roofline.png")
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import roofline as _rf
from .spec.errors import SpecError
from .spec.scenario import Scenario, scenario_from_dict
from .spec.yamlio import read_yaml

__all__ = ["Run", "apply_overrides", "load", "plot_roofline", "plot_run", "roofline",
           "scenario_dict", "simulate", "summary_frame"]


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """A copy of a scenario mapping with `{"a.b.c": value}` set. Setting a key inside a
    hardware or model given by preset name turns it into `{preset: NAME, ...}`, so the rest of
    the preset stays."""
    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        keys = dotted.split(".")
        if not all(keys):
            raise SpecError(f"{dotted!r} is not a dotted key path", key=dotted,
                            fix="write it like layout.expert_parallel")
        node = out
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if isinstance(child, str) and i == 0 and k in ("hardware", "model"):
                child = node[k] = {"preset": child}
            elif child is None:
                child = node[k] = {}
            elif not isinstance(child, dict):
                raise SpecError(f"cannot set {dotted!r}: {'.'.join(keys[:i + 1])} is not a "
                                "mapping", key=dotted, fix="check the key path")
            node = child
        node[keys[-1]] = value
    return out


def scenario_dict(path: str | Path) -> dict:
    data = read_yaml(Path(path))
    if not isinstance(data, dict):
        raise SpecError("expected a mapping at the top of the file", file=str(path))
    return data


def load(source: str | Path | dict, overrides: dict[str, Any] | None = None,
         **dotted: Any) -> Scenario:
    """A validated scenario from a file or mapping, with dotted-key overrides applied.
    Keyword form: load(path, **{"layout.expert_parallel": 32})."""
    overrides = {**(overrides or {}), **dotted}
    if isinstance(source, dict):
        data, file, base = source, "<inline>", Path(".")
    else:
        data, file, base = scenario_dict(source), str(source), Path(source).parent
    return scenario_from_dict(apply_overrides(data, overrides), file=file, base_dir=base)


@dataclass(frozen=True)
class Run:
    """One simulated scenario: its tables (results-format.md) and the engine's records."""

    scenario: Scenario
    tables: Any   # sim.results.tables.Tables
    result: Any   # the EngineResult, for plots and the trace

    @property
    def summary(self) -> dict:
        return self.tables.summary

    @property
    def requests(self) -> pd.DataFrame:
        return self.tables.requests

    @property
    def gpus(self) -> pd.DataFrame:
        return self.tables.gpus

    @property
    def links(self) -> pd.DataFrame:
        return self.tables.links

    @property
    def steps(self) -> pd.DataFrame:
        return self.tables.steps

    def write(self, out: str | Path, plots: bool = True, force: bool = False) -> list[Path]:
        """Write the run folder: into a new or empty folder, or over a run folder racksim
        wrote (replaced whole); a folder holding other files needs `force`, which writes
        beside them and deletes nothing (results.write.check_out)."""
        from .results.write import check_out, write_results  # noqa: PLC0415

        merge = check_out(Path(out), "run", force)
        return write_results(self.result, self.tables, Path(out), plots=plots, merge=merge)


def simulate(scenario: Scenario, progress=None) -> Run:
    from .engine.simulation import Simulation  # noqa: PLC0415
    from .results.tables import build_tables  # noqa: PLC0415

    res = Simulation(scenario).run(progress)
    return Run(scenario, build_tables(res), res)


def roofline(scenario: Scenario, batch: float | None = None,
             context: float | None = None) -> _rf.Roofline:
    return _rf.for_scenario(scenario, batch=batch, context=context)


def plot_run(run: Run, out_dir: str | Path, fmt: str = "png") -> list[Path]:
    """Latency CDFs, pipeline timeline and link utilisation of a run, as files."""
    from .results.run_plots import plot_run as _plot  # noqa: PLC0415

    return _plot(run.result, run.tables, Path(out_dir), fmt)


def plot_roofline(scenario: Scenario, path: str | Path, batch: float | None = None,
                  context: float | None = None) -> Path:
    """The three roofline pictures for a scenario."""
    from .results.roofline_plot import plot_roofline as _plot  # noqa: PLC0415

    return _plot(scenario, roofline(scenario, batch, context), path)


def summary_frame(summaries: list[dict] | list[Run]) -> pd.DataFrame:
    """One row per run; nested figures flattened to columns like `ttft_s.p99`."""
    rows = [s.summary if isinstance(s, Run) else s for s in summaries]
    return pd.json_normalize(rows, sep=".")
