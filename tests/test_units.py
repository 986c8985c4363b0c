import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.spec.units import UnitError, format_quantity, parse_quantity


@pytest.mark.parametrize("text,kind,expected", [
    ("8 TB/s", "bandwidth", 8e12),
    ("400 Gb/s", "bandwidth", 50e9),
    ("1.8TB/s", "bandwidth", 1.8e12),
    ("20 ms", "time", 0.02),
    ("5 us", "time", 5e-6),
    ("2 min", "time", 120.0),
    ("186 GB", "bytes", 186e9),
    ("80 GiB", "bytes", 80 * 2**30),
    ("2.5 PFLOP/s", "flops", 2.5e15),
    ("989 TFLOPS", "flops", 989e12),
    ("8e12", "bandwidth", 8e12),      # PyYAML reads 8e12 as a string; it must still work
    (1.8e12, "bandwidth", 1.8e12),
    (64, "count", 64.0),
    ("4k", "count", 4000.0),
])
def test_parses_units(text, kind, expected):
    assert parse_quantity(text, kind) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("text,kind", [
    ("8 TB", "bandwidth"),     # bytes where a rate is needed
    ("20 parsecs", "time"),
    ("fast", "bandwidth"),
    ("nan", "bytes"),
    ("inf GB", "bytes"),
    (True, "count"),
    ("2.2e-311", "flops"),     # subnormal: overflows anything divided by it
    ([1, 2], "bytes"),
])
def test_rejects_wrong_units(text, kind):
    with pytest.raises(UnitError):
        parse_quantity(text, kind)


@given(st.floats(min_value=1e-9, max_value=1e18, allow_nan=False),
       st.sampled_from(["", "k", "M", "G", "T", "P"]))
def test_prefixes_scale_exactly(x, prefix):
    factor = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}[prefix]
    assert math.isclose(parse_quantity(f"{x!r} {prefix}B", "bytes"), x * factor, rel_tol=1e-12)
    assert math.isclose(parse_quantity(f"{x!r} {prefix}b/s", "bandwidth"), x * factor / 8,
                        rel_tol=1e-12)


@given(st.floats(min_value=1e-8, max_value=1e17))
def test_format_round_trips(x):
    assert math.isclose(parse_quantity(format_quantity(x, "B", digits=15), "bytes"), x,
                        rel_tol=1e-9)
