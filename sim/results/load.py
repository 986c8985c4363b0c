"""Is the deployment keeping up with its traffic? The overload verdict, from the run itself.

A stable queue holds, on average, what Little's law says: arrival rate x mean time in the
system, and its waiting line does not grow. An overloaded one turns arrivals away at its
bound, or its waiting line grows through the window, and every latency measured on it grows
with the length of the run (the requests that finished are the lucky early ones). Three
signals, each from the request table of the run:

1. **Drops**: arrivals turned away at a full queue (`batching.max_queue`) after warm-up.
2. **Queue growth**: the mean number of requests waiting for their first token (queued for
   admission, or admitted and still prefilling) over the second half of the window against
   the first half. A stationary line's two halves differ by noise of the order of
   sqrt(mean length); growth beyond `GROWTH_SIGMAS` of that (and beyond `MIN_GROWTH`
   requests) is a line that does not settle, whether admission (batch slots, KV memory) or
   prefill is what cannot keep up.
3. **Backlog against Little's law**: requests still in flight at the end against
   `arrival rate x mean service time` (admission to last token) of the requests that
   completed, when arrivals also clearly outpace completions (`DEFICIT`): in overload the
   backlog exceeds that closed form as soon as the run outlasts one service time.

Any one of them makes the run `overloaded`. Latency percentiles cover the requests that
arrived after warm-up and completed; the summary says how many that is and how old the
unfinished ones are, so a reader can see what the percentiles leave out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

GROWTH_SIGMAS = 3.0   # queue growth, in units of sqrt(mean queue length), that is not noise
MIN_GROWTH = 2.0      # requests: growth below this is never called overload
DEFICIT = 0.10        # arrivals outpacing completions by this share, with a backlog
BACKLOG_FACTOR = 2.0  # in flight at the end beyond this multiple of Little's law
SAMPLES = 400         # points across the window where the line's length is read
SHORT_WINDOW = 3.0    # a window shorter than this many end-to-end latencies is flagged


@dataclass(frozen=True)
class LoadVerdict:
    overloaded: bool
    arrival_rate: float          # arrivals per second after warm-up, turned-away ones included
    completion_rate: float       # requests completed per second in the window
    in_flight_end: int           # waiting + running at the end of the run
    in_flight_stable: float | None   # Little's law: arrival rate x mean service time
    queue_first_half: float      # mean requests waiting for their first token, first half
    queue_second_half: float     # ... and second half of the window
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """One line for a person: the rates and what they mean."""
        head = (f"arrivals {self.arrival_rate:,.3g}/s, completions "
                f"{self.completion_rate:,.3g}/s")
        if self.overloaded:
            return f"{head}: overloaded, latencies grow with the duration"
        return f"{head}: keeps up"

    def to_json(self) -> dict:
        return {"verdict": "overloaded" if self.overloaded else "keeps up",
                "text": self.text, "reasons": list(self.reasons),
                "in_flight_stable": self.in_flight_stable,
                "queue_first_half": self.queue_first_half,
                "queue_second_half": self.queue_second_half}


def waiting_at(req: pd.DataFrame, times: np.ndarray) -> np.ndarray:
    """Requests waiting for their first token at each time: arrived, and neither given a
    first token nor gone (dropped as too large for KV memory, or failed by a fault)."""
    status = req["status"].to_numpy()
    arrival = req["arrival_s"].to_numpy(float)
    first = req["first_token_s"].to_numpy(float)
    gone = np.where(status == "dropped", arrival,
                    np.where(status == "failed", req["failed_s"].to_numpy(float), np.inf))
    leave = np.where(np.isfinite(first), first, gone)
    leave = np.where(np.isnan(leave), np.inf, leave)
    return (np.searchsorted(np.sort(arrival), times, side="right")
            - np.searchsorted(np.sort(leave), times, side="right"))


def judge(req: pd.DataFrame, window: tuple[float, float], arrived: int, dropped: int,
          completed: int, e2e_p50: float | None) -> LoadVerdict:
    """The verdict for a run whose statistics cover `window` (after warm-up)."""
    t0, t1 = window
    span = t1 - t0
    arrival_rate = arrived / span if span > 0 else 0.0
    completion_rate = completed / span if span > 0 else 0.0
    in_flight_end = int(req["status"].isin(["waiting", "running"]).sum())

    times = np.linspace(t0, t1, SAMPLES) if span > 0 else np.array([t0, t1])
    q = waiting_at(req, times).astype(float)
    half = len(q) // 2
    q1, q2 = float(q[:half].mean()), float(q[half:].mean())

    done = req["status"] == "completed"
    service = (req.loc[done, "finish_s"] - req.loc[done, "admitted_s"]).to_numpy(float)
    stable = float(arrival_rate * service.mean()) if len(service) else None

    reasons: list[str] = []
    if dropped > 0:
        reasons.append(f"{dropped:,} arrivals turned away at a full queue")
    growth = q2 - q1
    if growth > max(MIN_GROWTH, GROWTH_SIGMAS * np.sqrt(q1 + q2)):
        reasons.append(f"requests waiting for a first token grew from {q1:,.0f} to "
                       f"{q2:,.0f} (mean, first half of the window against the second)")
    outpaced = completion_rate < (1 - DEFICIT) * arrival_rate
    backlog = in_flight_end - (stable or 0.0)
    if outpaced and backlog > max(MIN_GROWTH, (BACKLOG_FACTOR - 1) * (stable or 0.0)
                                  + GROWTH_SIGMAS * np.sqrt(stable or 0.0)):
        reasons.append(f"{in_flight_end:,} requests in flight at the end, against "
                       f"{stable or 0:,.0f} in a stable queue (Little's law)")

    warnings: list[str] = []
    if completed == 0 and arrived > 0:
        warnings.append("no request completed in the window: latencies cannot be measured; "
                        "lengthen workload.duration_s or lower the load")
    elif e2e_p50 is not None and span < SHORT_WINDOW * e2e_p50:
        warnings.append(f"the window ({span:.3g} s after warm-up) is shorter than "
                        f"{SHORT_WINDOW:g} end-to-end latencies (p50 {e2e_p50:.3g} s): "
                        "percentiles cover few request lifetimes; lengthen "
                        "workload.duration_s")
    return LoadVerdict(overloaded=bool(reasons), arrival_rate=arrival_rate,
                       completion_rate=completion_rate, in_flight_end=in_flight_end,
                       in_flight_stable=stable, queue_first_half=q1, queue_second_half=q2,
                       reasons=reasons, warnings=warnings)
