"""The repository stands alone: its README and docs name no file outside it, and every
repository file they name in backquotes exists."""

from __future__ import annotations

import re

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# files the docs name that a command writes (not in a fresh checkout)
WRITTEN = {"benchmarks/results.json"}
NAMED = re.compile(r"`((?:docs|sim|scenarios|topologies|models|validation|benchmarks|tests|"
                   r"notebooks)/[A-Za-z0-9_./-]+)`")


def test_docs_point_nowhere_outside_the_repository():
    for f in DOCS:
        text = f.read_text()
        assert "../shared" not in text, f"{f.name} sends readers outside the repository"


def test_files_the_docs_name_exist():
    missing = []
    for f in DOCS:
        for path in NAMED.findall(f.read_text()):
            p = path.rstrip(".")
            if any(c in p for c in "*<>") or p.endswith("/") or "NAME" in p or p in WRITTEN:
                continue
            if not (REPO / p).exists() and not (REPO / p.split(":")[0]).exists():
                missing.append(f"{f.name}: {p}")
    assert not missing, missing
