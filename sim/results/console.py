"""Where the command line prints: tables that never cut a cell, on a terminal or off it.

- **On a terminal**: rich tables as wide as the terminal; a cell too long for its column
  folds onto the next line (`overflow="fold"`), never cut with an ellipsis.
- **Off a terminal** (a pipe or a file, `racksim compare ... > out.txt`): the same tables,
  laid out for `OFF_TERMINAL_WIDTH` columns instead of rich's fallback of 80, so a table is
  as wide as its cells need: every cell whole on one line, columns aligned, no colour codes.
  A table wider than that still folds, never cuts.

Machine-readable output is `--json` on each command, not this.
"""

from __future__ import annotations

import rich.table
from rich.console import Console

OFF_TERMINAL_WIDTH = 1000   # columns a table may take in a file; rows stay one line each


def stdout_console() -> Console:
    """The console for stdout: the terminal's width on a terminal, wide off it."""
    console = Console()
    return console if console.is_terminal else Console(width=OFF_TERMINAL_WIDTH)


class Table(rich.table.Table):
    """A rich `Table` whose columns fold a long cell instead of cutting it with an ellipsis
    (unless a column asks for another `overflow`)."""

    def add_column(self, *args, overflow="fold", **kwargs) -> None:
        super().add_column(*args, overflow=overflow, **kwargs)
