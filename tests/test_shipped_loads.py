"""Every shipped scenario and benchmark states its load in a `# Load:` comment ("keeps up" or
"overloaded"), and a run of it, shortened, agrees."""

from __future__ import annotations

import re

import pytest

from conftest import REPO
from sim.api import load, simulate

FILES = sorted([*REPO.glob("scenarios/*.yaml"), *REPO.glob("benchmarks/scenarios/*.yaml"),
                *REPO.glob("benchmarks/extra/*.yaml")])
LOAD = re.compile(r"^# Load: (keeps up|overloaded)\b", re.MULTILINE)
# The window a shortened benchmark keeps (they simulate 65 s; their load shows sooner). The
# shipped scenarios run as written: a user runs them so, and some need their whole window
# for a request to complete (two-racks-pp2: end-to-end latencies of about 27 s).
SHORT_S, SHORT_WARMUP_S = 8.0, 1.0


def stated(path) -> str:
    found = LOAD.findall(path.read_text())
    assert len(found) == 1, f"{path.name}: one '# Load: keeps up|overloaded' comment"
    return found[0]


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.stem}" for p in FILES])
def test_shipped_file_states_its_load_honestly(path):
    claim = stated(path)
    s = load(path)
    w = s.workload
    over = {}
    if (path.parent.parent.name == "benchmarks" and w.duration_s is not None
            and w.duration_s > SHORT_S and not s.spec.faults):
        over = {"workload.duration_s": SHORT_S,
                "workload.warmup_s": min(w.warmup_s, SHORT_WARMUP_S)}
    sm = simulate(load(path, **over)).summary
    assert sm["overloaded"] == (claim == "overloaded"), (path.name, sm["load"])
