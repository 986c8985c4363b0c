"""Service-level objectives: latency percentiles a deployment must meet.

One vocabulary for the scenario's `slo:` mapping, the `--slo` option of `racksim capacity`
and `racksim compare`, and the summary's verdict. A key is METRIC_pQQ (`ttft_p99`,
`tpot_p50`, `e2e_p90`, ...): the QQth percentile of that per-request latency, over the
requests that arrived after warm-up and completed, must not exceed the limit.

Goodput (vLLM's term, requests per second meeting the SLO) judges each request on its own:
a request counts when each latency named in the SLO is within that metric's limit (the
loosest limit when several percentiles of one metric are given, since the tighter ones are
percentile targets that a share of requests may miss).
"""

from __future__ import annotations

from pydantic import Field

from .base import Seconds, Spec
from .errors import SpecError
from .units import UnitError, parse_quantity

METRICS = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s"}   # SLO name -> summary key
PERCENTILES = ("p50", "p90", "p99")
KEYS = tuple(f"{m}_{q}" for m in METRICS for q in PERCENTILES)


class SLO(Spec):
    """Latency limits; every key optional (an empty SLO is met by any stable run)."""

    ttft_p50: Seconds | None = Field(None, description="TTFT median limit, e.g. 500 ms")
    ttft_p90: Seconds | None = None
    ttft_p99: Seconds | None = Field(None, description="TTFT p99 limit, e.g. 2 s")
    tpot_p50: Seconds | None = None
    tpot_p90: Seconds | None = None
    tpot_p99: Seconds | None = Field(None, description="time per output token p99, e.g. 50 ms")
    e2e_p50: Seconds | None = None
    e2e_p90: Seconds | None = None
    e2e_p99: Seconds | None = None

    def targets(self) -> dict[str, float]:
        """The keys that are set, in KEYS order: {"ttft_p99": 2.0, ...}."""
        return {k: getattr(self, k) for k in KEYS if getattr(self, k) is not None}

    def request_limits(self) -> dict[str, float]:
        """Per-request thresholds for goodput: summary latency key -> loosest limit given."""
        out: dict[str, float] = {}
        for key, limit in self.targets().items():
            col = METRICS[key.split("_")[0]]
            out[col] = max(out.get(col, 0.0), limit)
        return out

    def misses(self, summary: dict) -> list[str]:
        """Each target the run's percentiles miss, in words ("TTFT p99 3.1 s > 2 s")."""
        from .units import format_quantity as fq  # noqa: PLC0415

        out = []
        for key, limit in self.targets().items():
            metric, q = key.split("_")
            v = (summary.get(METRICS[metric]) or {}).get(q)
            if v is None:
                out.append(f"{metric.upper()} {q}: no request completed")
            elif v > limit:
                out.append(f"{metric.upper()} {q} {fq(v, 's')} > {fq(limit, 's')}")
        return out

    def describe(self) -> str:
        return ",".join(f"{k}={v:g}s" for k, v in self.targets().items()) or "(none)"


def parse_slo(text: str | None, key: str = "--slo") -> SLO:
    """`tpot_p99=50ms,ttft_p99=2s` -> SLO(tpot_p99=0.05, ttft_p99=2.0)."""
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in KEYS:
            raise SpecError(f"cannot read SLO {part!r}", file="command line", key=key,
                            fix=f"write KEY=TIME with KEY one of {', '.join(KEYS)}, e.g. "
                                f"{key} ttft_p99=2s,tpot_p99=50ms")
        if name in values:
            raise SpecError(f"{name} is given twice", file="command line", key=key,
                            fix="give each key once")
        try:
            values[name] = parse_quantity(value.strip(), "time")
        except (UnitError, ValueError) as exc:
            raise SpecError(str(exc), file="command line", key=key,
                            fix=f"e.g. {key} tpot_p99=50ms") from None
        if not values[name] > 0:
            raise SpecError(f"{name} must be a positive time", file="command line", key=key,
                            fix=f"e.g. {key} tpot_p99=50ms")
    return SLO(**values)
