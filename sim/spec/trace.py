"""Request traces: a CSV of arrival_s, prompt_tokens, output_tokens, one row per request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import SpecError

COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
MAX_TRACE_BYTES = 2_000_000_000  # read in chunks; this bounds the file, not memory use


@dataclass(frozen=True)
class RequestTrace:
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray


def read_trace(path: Path, key: str = "workload.arrival.path") -> RequestTrace:
    file = str(path)
    if not path.is_file():
        raise SpecError(f"trace file {file!r} not found", key=key,
                        fix="give the CSV's path relative to the scenario file")
    if path.stat().st_size > MAX_TRACE_BYTES:
        raise SpecError(f"trace is larger than {MAX_TRACE_BYTES / 1e9:.0f} GB", file=file,
                        fix="split the trace or sample it")
    try:
        df = pd.read_csv(path, usecols=lambda c: c in COLUMNS, dtype="float64")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the trace as CSV ({str(exc).splitlines()[0]})", file=file,
                        fix=f"write a CSV with a header row {', '.join(COLUMNS)} and numbers "
                            "below it") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise SpecError(f"trace lacks column(s) {missing}", file=file,
                        fix=f"the header must name {', '.join(COLUMNS)}")
    if df.empty:
        raise SpecError("trace has no rows", file=file, fix="add at least one request")
    values = df[list(COLUMNS)].to_numpy()
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise SpecError(f"row {row + 2} has an empty or non-finite value", file=file,
                        fix="every row needs three numbers")
    a, p, o = values.T
    if (a < 0).any():
        raise SpecError(f"row {int(np.argmax(a < 0)) + 2}: negative arrival_s", file=file,
                        fix="times are seconds from the start of the run, >= 0")
    if (np.diff(a) < 0).any():
        raise SpecError(f"row {int(np.argmax(np.diff(a) < 0)) + 3}: arrival_s goes backwards",
                        file=file, fix="sort the trace by arrival_s")
    for name, col in (("prompt_tokens", p), ("output_tokens", o)):
        if (col < 1).any() or (col != np.round(col)).any():
            row = int(np.argmax((col < 1) | (col != np.round(col)))) + 2
            raise SpecError(f"row {row}: {name} must be a whole number >= 1", file=file,
                            fix="fix that row")
    return RequestTrace(a, p.astype(np.int64), o.astype(np.int64))
