"""User-facing errors: one paragraph naming the file, the key path, what is wrong and the fix.

The CLI turns any `RacksimError` into that paragraph on stderr and exit status 2, never a
traceback. Code that finds a user's mistake raises `SpecError`; nothing else should.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RacksimError(Exception):
    """Base of every error that is the user's to fix (exit status 2)."""


class SpecError(RacksimError):
    """A scenario, hardware or model file that cannot be used as written."""

    def __init__(self, problem: str, *, file: str | None = None, key: str | None = None,
                 fix: str | None = None):
        self.problem = problem
        self.file = file
        self.key = key
        self.fix = fix
        super().__init__(self.paragraph())

    def paragraph(self) -> str:
        where = self.file or ("command line" if _is_option(self.key) else None)
        head = ": ".join(x for x in (where, self.key) if x)
        text = (head + ": " if head else "") + _sentence(self.problem)
        if self.fix:
            text += " Fix: " + _sentence(self.fix)
        return text

    def within(self, file: str | None = None, prefix: str | None = None) -> SpecError:
        """The same error seen from an enclosing file or key (e.g. an inline model)."""
        key = self.key
        if prefix:
            key = f"{prefix}.{key}" if key else prefix
        return SpecError(self.problem, file=self.file or file, key=key, fix=self.fix)

    def moved(self, *, file: str | None, key: str | None) -> SpecError:
        """The same problem blamed on another file and key (where the value really came from:
        a scenario's override of a preset, a `--set` on the command line)."""
        return SpecError(self.problem, file=file, key=key, fix=self.fix)


def _is_option(key: str | None) -> bool:
    """A key that names a command-line option (`--bytes`, `--set layout.x`) or argument
    (`KIND`): such an error is the command line's, not a file's."""
    return bool(key) and (key.startswith("-") or key.isupper())


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else text + "."


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' Did you mean X?' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""
