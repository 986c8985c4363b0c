"""Traffic and batching: request arrivals, prompt/output lengths, batching policy."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import (NonNegativeNumber, PositiveInt, PositiveNumber, Seconds, SecondsOrZero,
                   Spec)

# --------------------------------------------------------------------------- arrivals


class Poisson(Spec):
    process: Literal["poisson"]
    rate_per_s: PositiveNumber = Field(description="mean arrivals per second")


class Closed(Spec):
    process: Literal["closed"]
    concurrency: PositiveInt = Field(description="requests kept in the system at all times")
    think_time_s: SecondsOrZero = Field(0.0, description="pause before a finished client returns")


class Trace(Spec):
    process: Literal["trace"]
    path: str = Field(description="CSV with columns arrival_s, prompt_tokens, output_tokens; "
                                  "relative paths are relative to the scenario file")


Arrival = Annotated[Poisson | Closed | Trace, Field(discriminator="process")]

# --------------------------------------------------------------------------- token counts


class Fixed(Spec):
    dist: Literal["fixed"]
    value: PositiveInt

    @property
    def mean(self) -> float:
        return float(self.value)


class Uniform(Spec):
    dist: Literal["uniform"]
    low: PositiveInt
    high: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) exceeds high ({self.high})")
        return self

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2


class LogNormal(Spec):
    dist: Literal["lognormal"]
    mean_tokens: PositiveNumber = Field(description="mean of the distribution, in tokens")
    sigma: NonNegativeNumber = Field(description="sigma of the underlying normal")
    max_tokens: PositiveInt | None = Field(None, description="optional upper clip")

    @property
    def mean(self) -> float:
        return float(self.mean_tokens)


class FromTrace(Spec):
    dist: Literal["trace"]


TokenDist = Annotated[Fixed | Uniform | LogNormal | FromTrace, Field(discriminator="dist")]


class Workload(Spec):
    arrival: Arrival
    prompt_tokens: TokenDist
    output_tokens: TokenDist
    duration_s: Seconds | None = Field(None, description="simulated time (or give `requests`)")
    requests: PositiveInt | None = Field(None, description="stop after this many arrivals")
    warmup_s: SecondsOrZero = Field(0.0, description="excluded from statistics")
    prefix_cache_hit: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="share of each prompt's tokens already in the KV cache (a prefix-cache "
                    "hit) when it is admitted: they take KV but are not prefilled, and the "
                    "rest attends to them")

    @model_validator(mode="after")
    def _consistent(self) -> Workload:
        if (self.duration_s is None) == (self.requests is None):
            raise ValueError("give exactly one of duration_s and requests")
        if self.duration_s is not None and self.warmup_s >= self.duration_s:
            raise ValueError(f"warmup_s ({self.warmup_s}) must be below duration_s "
                             f"({self.duration_s})")
        is_trace = isinstance(self.arrival, Trace)
        for key in ("prompt_tokens", "output_tokens"):
            if isinstance(getattr(self, key), FromTrace) and not is_trace:
                raise ValueError(f"{key}: dist 'trace' needs arrival process 'trace'")
        return self


# --------------------------------------------------------------------------- batching

# Per-step prefill budget. Serving engines cap the tokens of one forward pass (vLLM's
# max_num_batched_tokens; its tuning guide, docs/configuration/optimization.md, "Chunked
# Prefill", advises small budgets for inter-token latency and 8192 or more for throughput).
# Without a cap, prompts arriving during a long prefill step make the next one longer still.
DEFAULT_CHUNK_TOKENS = 8192

# Admission bound: a replica whose queue holds this many waiting requests drops new arrivals
# (counted in requests_dropped). Ten full batches of every microbatch slot is far beyond what
# a deployment that keeps up ever queues, and it bounds memory under any overload.
QUEUE_BATCHES = 10
MAX_QUEUE_DOC = (f"waiting requests per replica before arrivals are dropped; default "
                 f"{QUEUE_BATCHES} x max_batch x microbatches")


class FixedInterval(Spec):
    """A step departs every `interval`, full or not (domain.md section 2's train schedule)."""

    policy: Literal["fixed_interval"]
    interval: Seconds
    max_batch: PositiveInt = Field(description="sequences per microbatch, upper bound")
    max_queue: PositiveInt | None = Field(None, description=MAX_QUEUE_DOC)


class Continuous(Spec):
    """Admit and retire sequences every step, bounded by max_batch and KV capacity."""

    policy: Literal["continuous"]
    max_batch: PositiveInt = Field(description="sequences per microbatch, upper bound")
    max_queue: PositiveInt | None = Field(None, description=MAX_QUEUE_DOC)
    prefill: Literal["chunked", "separate", "disaggregated"] = Field(
        "chunked", description="chunked: prompt chunks ride with decode steps; "
                               "separate: prefill runs as its own steps; disaggregated: "
                               "prompts are prefilled elsewhere and arrive with their KV "
                               "(a decode-only deployment; TTFT here is queueing only)")
    chunk_tokens: PositiveInt = Field(
        DEFAULT_CHUNK_TOKENS,
        description="prompt tokens a step may carry (a per-step prefill budget, decode tokens "
                    "not counted), per attention rank when layout.dense is replicated "
                    f"(attention data parallelism); default {DEFAULT_CHUNK_TOKENS}")
    max_num_tokens: PositiveInt | None = Field(
        None, description="tokens a step may carry, decode and prompt together (TensorRT-LLM's "
                          "max_num_tokens, vLLM's max_num_batched_tokens): prompt tokens "
                          "get what decoding sequences leave, up to chunk_tokens; per "
                          "attention rank when layout.dense is replicated, as TensorRT-LLM's "
                          "is per attention-DP rank; default: no such cap")


Batching = Annotated[FixedInterval | Continuous, Field(discriminator="policy")]


def mean_context(workload: Workload, trace_means: tuple[float, float] | None = None) -> float:
    """Mean context per decoding sequence: the prompt plus half the output on average."""
    prompt = workload.prompt_tokens
    output = workload.output_tokens
    if trace_means is not None:
        p = trace_means[0] if isinstance(prompt, FromTrace) else prompt.mean
        o = trace_means[1] if isinstance(output, FromTrace) else output.mean
    else:
        p, o = prompt.mean, output.mean
    return p + o / 2

