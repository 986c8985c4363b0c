"""Writing a run's results (results-format.md) into a folder, each file atomically, and the
rule for `--out`: racksim never deletes or replaces a file it did not write.

A run folder holds `RUN_MARKER`, listing the files the run wrote; `racksim run` may replace
such a folder whole (all or nothing). A sweep folder is one with `points/`, a compare folder
one with `compare.csv`; both are only ever added to. Any other non-empty folder is refused
unless `--force`, which writes racksim's files into it beside the others (replacing only
files of the same names, deleting nothing).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd

from ..spec.errors import SpecError

if TYPE_CHECKING:  # the engine is heavy to import; `check_out` runs before any of it
    from ..engine.simulation import EngineResult
    from .tables import Tables

RUN_MARKER = ".racksim-run"
LATER = ("report.html",)  # what `racksim report` adds to a run folder afterwards
# what runs of racksim before the marker wrote: such a folder holding nothing else is a run's
UNMARKED_RUN = ("summary.json", "requests.csv", "gpus.csv", "links.csv", "steps.csv",
                "faults.csv", "trace.json", *(f"{plot}.{fmt}" for plot in (
                    "latency_cdf", "pipeline_timeline", "link_utilisation")
                    for fmt in ("png", "svg")))
Kind = Literal["run", "sweep", "compare"]
SIGNS = {"run": RUN_MARKER, "sweep": "points", "compare": "compare.csv"}


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


def _foreign(out: Path, kind: Kind) -> list[Path]:
    """What in the folder `out` racksim did not write: nothing in a sweep or compare folder
    (they are only ever added to), in a run folder what its marker does not list, and
    everything in any other folder."""
    entries = sorted(out.iterdir())
    if (out / SIGNS[kind]).exists():
        if kind != "run":
            return []
        try:
            listed = {*json.loads((out / RUN_MARKER).read_text())["files"], RUN_MARKER, *LATER}
            return [p for p in entries if p.name not in listed]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    elif kind == "run" and _racksim_summary(out / "summary.json"):   # before the marker
        foreign = [p for p in entries if p.name not in (*UNMARKED_RUN, *LATER) or p.is_dir()]
        if not foreign:
            return []
    return entries


def _racksim_summary(path: Path) -> bool:
    """Is `path` a summary.json that racksim run wrote (its own keys, not just the name)?"""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"requests_completed", "sim_events",
                                       "gpu_time_fraction"} <= data.keys()


def check_out(out: Path, kind: Kind, force: bool = False) -> bool:
    """May racksim write its `kind` results into `out` (`--out`)? Raises a SpecError naming the
    folder and the fix when not. Returns True when the results must go in beside files that
    are not racksim's (`force`): each written file replaces only a file of the same name."""
    out = Path(out)
    target, here = out.resolve(), Path.cwd().resolve()
    example = f"--out out/{kind}"

    def refuse(problem: str, fix: str) -> SpecError:
        return SpecError(problem, file="command line", key="--out", fix=fix)

    if target == here or target in here.parents:
        raise refuse(f"{out} is the current folder or holds it; racksim would write its "
                     "results among your files", f"give them a folder of their own, e.g. "
                                                 f"{example}")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise refuse(f"{existing} is a file, not a folder", f"name a folder, e.g. {example}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise refuse(f"cannot write into {existing} (permission denied)",
                     f"choose a folder you can write into, e.g. {example}")
    foreign = _foreign(out, kind) if existing == out else []
    if not foreign:
        return False
    if force:
        return True
    names = [p.name + ("/" if p.is_dir() else "") for p in foreign]
    held = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise refuse(f"{out}/ holds files racksim did not write ({held}); racksim never deletes "
                 "or replaces them",
                 f"choose a new or empty folder, e.g. --out {out / kind}; or add --force to "
                 f"write the results into {out}/ beside the files there (files of the same "
                 "names are replaced, nothing is deleted)")


def write_results(res: EngineResult, tables: Tables, out: Path, *, plots: bool = True,
                  trace: bool = True, fmt: str = "png", merge: bool = False) -> list[Path]:
    """Write a run folder all or nothing: into a temporary sibling folder first, then swapped
    into place, so an interruption leaves either the complete new folder or the old one.
    With `merge` (`--force` into a folder holding other files, see `check_out`) the files are
    written into `out` one by one, each atomically, and nothing else there is touched."""
    out = Path(out)
    if merge:
        return _write_files(res, tables, out, plots, trace, fmt)
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
    marker = {"files": sorted(p.name for p in written),
              "note": "the files racksim run wrote here; a folder holding nothing else is "
                      "racksim's to replace"}
    atomic_write(out / RUN_MARKER, lambda p: p.write_text(json.dumps(marker, indent=1) + "\n"))
    return written
