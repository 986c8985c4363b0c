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


CHUNK_ROWS = 65_536


def _check(values: np.ndarray, first_row: int, last_arrival: float, file: str) -> None:
    """Validate one chunk; `first_row` is its first line number in the file."""
    bad = ~np.isfinite(values)
    if bad.any():
        row = first_row + int(np.argwhere(bad)[0][0])
        raise SpecError(f"row {row} has an empty or non-finite value", file=file,
                        fix="every row needs three numbers")
    a, p, o = values.T
    if (a < 0).any():
        raise SpecError(f"row {first_row + int(np.argmax(a < 0))}: negative arrival_s",
                        file=file, fix="times are seconds from the start of the run, >= 0")
    back = np.diff(np.concatenate([[last_arrival], a])) < 0
    if back.any():
        raise SpecError(f"row {first_row + int(np.argmax(back))}: arrival_s goes backwards",
                        file=file, fix="sort the trace by arrival_s")
    for name, col in (("prompt_tokens", p), ("output_tokens", o)):
        wrong = (col < 1) | (col != np.round(col))
        if wrong.any():
            raise SpecError(f"row {first_row + int(np.argmax(wrong))}: {name} must be a whole "
                            "number >= 1", file=file, fix="fix that row")


def iter_trace(path: Path, key: str = "workload.arrival.path", chunk_rows: int = CHUNK_ROWS):
    """Yield RequestTrace chunks in file order, each checked, so a trace of any size streams
    with bounded memory."""
    file = str(path)
    if not path.is_file():
        raise SpecError(f"trace file {file!r} not found", key=key,
                        fix="give the CSV's path relative to the scenario file")
    if path.stat().st_size > MAX_TRACE_BYTES:
        raise SpecError(f"trace is larger than {MAX_TRACE_BYTES / 1e9:.0f} GB", file=file,
                        fix="split the trace or sample it")
    try:
        reader = pd.read_csv(path, usecols=lambda c: c in COLUMNS, dtype="float64",
                             chunksize=chunk_rows)
        first_row, last, seen = 2, 0.0, False
        for df in reader:
            missing = [c for c in COLUMNS if c not in df.columns]
            if missing:
                raise SpecError(f"trace lacks column(s) {missing}", file=file,
                                fix=f"the header must name {', '.join(COLUMNS)}")
            values = df[list(COLUMNS)].to_numpy()
            _check(values, first_row, last, file)
            if len(values):
                seen = True
                last = float(values[-1, 0])
                yield RequestTrace(values[:, 0], values[:, 1].astype(np.int64),
                                   values[:, 2].astype(np.int64))
            first_row += len(values)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the trace as CSV ({str(exc).splitlines()[0]})", file=file,
                        fix=f"write a CSV with a header row {', '.join(COLUMNS)} and numbers "
                            "below it") from None
    if not seen:
        raise SpecError("trace has no rows", file=file, fix="add at least one request")
