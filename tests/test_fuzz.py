"""Fuzz: mutated scenarios give a valid scenario (and a roofline) or a clean SpecError,
never any other exception."""

import copy
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BASE
from sim import roofline as rf
from sim.spec import scenario_from_dict
from sim.spec.errors import RacksimError


def paths(node, prefix=()):
    """Every key path of a nested mapping."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out.extend(paths(v, prefix + (k,)))
    return out


ALL_PATHS = paths(BASE)

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["8 TB/s", "20 ms", "-5 GB", "1e400", "nan", "inf s", "0", "", "poisson",
                     "continuous", "deepseek-v3", "gb200-nvl72", "../../etc/passwd",
                     "!!python/object:os.system"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)

mutation = st.tuples(st.sampled_from(["set", "delete", "add"]),
                     st.sampled_from(ALL_PATHS), junk, st.text(min_size=1, max_size=8))


def mutate(data, op, path, value, newkey):
    node = data
    for k in path[:-1]:
        if not isinstance(node, dict) or k not in node:
            return data
        node = node[k]
    if not isinstance(node, dict):
        return data
    if op == "set":
        node[path[-1]] = value
    elif op == "delete":
        node.pop(path[-1], None)
    else:
        node[newkey] = value
    return data


@settings(max_examples=3000, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # CI reproducible; vary seeds by hand
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_scenarios_are_valid_or_clean_errors(mutations):
    data = copy.deepcopy(BASE)
    for m in mutations:
        data = mutate(data, *m)
    try:
        s = scenario_from_dict(data)
    except RacksimError as exc:
        text = str(exc)
        assert text and "Traceback" not in text
        return
    try:
        r = rf.for_scenario(s)
    except RacksimError:
        return
    assert math.isfinite(r.step_time_s) and r.step_time_s > 0
