"""Writing a run's results (results-format.md) into a folder, each file atomically."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from ..engine.simulation import EngineResult
from .tables import Tables


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write) -> Path:
    """Write via a temp file in the same folder and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for sharing
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _clean(x):
    """JSON-safe: NaN and inf become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def summary_json(summary: dict, deterministic: bool = False) -> str:
    data = dict(summary)
    if deterministic:
        data["wall_time_s"] = None
    return json.dumps(_clean(data), indent=2, sort_keys=False) + "\n"


def _csv(df: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda p: df.to_csv(p, index=False, float_format="%.9g"))


def write_results(res: EngineResult, tables: Tables, out: Path, *, plots: bool = True,
                  trace: bool = True, fmt: str = "png") -> list[Path]:
    """Write a run folder all or nothing: into a temporary sibling folder first, then swapped
    into place, so an interruption leaves either the complete new folder or the old one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial."))
    try:
        names = [p.name for p in _write_files(res, tables, tmp, plots, trace, fmt)]
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return [out / n for n in names]


def _write_files(res: EngineResult, tables: Tables, out: Path, plots: bool, trace: bool,
                 fmt: str) -> list[Path]:
    written = [
        atomic_write(out / "summary.json",
                     lambda p: p.write_text(summary_json(tables.summary))),
        _csv(tables.requests, out / "requests.csv"),
        _csv(tables.gpus, out / "gpus.csv"),
        _csv(tables.links, out / "links.csv"),
        _csv(tables.steps, out / "steps.csv"),
    ]
    if tables.faults is not None:
        written.append(_csv(tables.faults, out / "faults.csv"))
    if trace:
        from .perfetto import write_trace  # noqa: PLC0415

        written.append(write_trace(res, tables, out / "trace.json"))
    if plots:
        from .run_plots import plot_run  # noqa: PLC0415

        written.extend(plot_run(res, tables, out, fmt))
    return written
