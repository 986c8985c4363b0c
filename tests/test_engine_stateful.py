"""Hypothesis *stateful* tests of the engine (issue 9, item 5): random sequences of actions,
with invariants checked after every step.

- `NetworkMachine` drives `sim.engine.network.Network` directly: flows start (random link
  subsets and loads, zero loads, latency paid before the fluid phase, reused `Prepared`
  transfers, bursts of identical flows), the SimPy clock advances by random amounts or to the
  next event, statistics are brought up to date mid-run. After every step: no link carries
  more than its capacity, every flow still moving is held by a saturated link on which no
  flow gets more (max-min) and gets at least its fair share, bytes delivered never exceed a
  flow's load and never go backwards, finished flows delivered exactly their load (per link,
  in the link integrals), no flow beats its solo closed form max(load / capacity), and no
  link's utilisation integral exceeds the elapsed window.
- `ServingMachine` runs a tiny scenario through `sim.api` (dotted overrides, short runs)
  while rules change the arrival rate, network bandwidth, FLOP/s, seed and batching policy.
  After every run: arrivals = completed + dropped + in flight (the summary against the
  requests table), every utilisation and time fraction in [0, 1]. Rules compare pairs of
  runs: more bandwidth or FLOP/s is never slower, more load never shortens a queue wait, and
  the same seed writes byte-identical files.

Both are derandomized (as test_fuzz.py) so CI explores the same cases every time.
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import simpy
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)

import sim.api as rs
from conftest import BASE, TOY_MOE
from sim.cluster.topology import build_cluster
from sim.engine import collectives as coll
from sim.engine.network import Network
from test_network import hw as network_hw

# ==================================================================== the network

REL = 1e-9          # relative slack for float sums
SOLO_REL = 2e-9     # a flow counts as finished with 1e-9 of it left (network.py)

CAPACITIES = [1e9, 2.5e9, 1e10, 5e10, 4e11]
LOADS = st.one_of(st.just(0.0), st.sampled_from([1.0, 1e3, 1e6, 3e7]),
                  st.floats(1.0, 5e7, allow_nan=False, allow_infinity=False))


class Tracked:
    """What the test knows of one started flow, independently of the Network."""

    def __init__(self, load: np.ndarray, start: float, solo: float, flow, done):
        self.load = load           # bytes per link (full length, zeros off its path)
        self.start = start         # when its fluid phase began (after its latency)
        self.solo = solo           # max(load / capacity): its time alone
        self.flow = flow           # the Network's Flow (None when it moves nothing)
        self.done = done           # the Network's completion event
        self.delivered = 0.0       # fraction delivered at the last look
        self.finish = None         # when `done` was processed

    @property
    def finished(self) -> bool:
        return self.done.triggered

    @property
    def fraction(self) -> float:
        """Share of its load delivered, as the Network last brought it up to date."""
        return 1.0 if self.finished else 1.0 - self.flow.remaining


class NetworkMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tracked: list[Tracked] = []
        self.prepared: list = []   # (Prepared, load vector) for reuse
        self.prev_bytes = None
        self.synced = True         # statistics brought up to now since the last clock move

    # ------------------------------------------------------------ set-up

    @initialize(kind=st.sampled_from(["links", "cluster"]),
                caps=st.lists(st.sampled_from(CAPACITIES), min_size=2, max_size=6),
                tiers=st.lists(st.integers(0, 1), min_size=6, max_size=6),
                stats_from=st.sampled_from([0.0, 0.0, 1e-5, 2e-3]))
    def setup(self, kind, caps, tiers, stats_from):
        self.env = simpy.Environment()
        if kind == "cluster":  # 2 racks x 4 GPUs, 2-GPU domains: three tiers of links
            self.cluster = build_cluster(network_hw(per_rack=4, domain=2, so_bw=5e10,
                                                    up_bw=4e11, over=2.0), 2)
            cap, tier = self.cluster.capacity, self.cluster.tier
        else:
            self.cluster = None
            cap, tier = np.array(caps, dtype=float), np.array(tiers[:len(caps)])
        self.stats_from = stats_from
        self.net = Network(self.env, cap, tier, stats_from=stats_from)
        self.cap = self.net.capacity
        self.prev_bytes = np.zeros(len(self.cap))

    # ------------------------------------------------------------ flows

    def _launch(self, prep, load: np.ndarray, latency: float) -> None:
        solo = float(np.max(load / self.cap))

        def go():
            if latency:
                yield self.env.timeout(latency)
            before = set(map(id, self.net.flows))
            done = self.net.start(prep, "test")
            new = [f for f in self.net.flows if id(f) not in before]
            assert len(new) == (0 if prep is None else 1)
            tr = Tracked(load, self.env.now, solo, new[0] if new else None, done)
            self.tracked.append(tr)

            def finished(_e):
                tr.finish = self.env.now
            done.callbacks.append(finished)

        self.env.process(go())
        if latency == 0:   # start now: step the process in without moving the clock
            self.env.run(until=self.env.event().succeed())

    @rule(data=st.data(), latency=st.sampled_from([0.0, 0.0, 1e-6, 3e-4]))
    def start_flow(self, data, latency):
        """A transfer over a random subset of links (unique ids), some loads zero."""
        n = len(self.cap)
        if self.cluster is not None and data.draw(st.booleans(), "collective"):
            gpus = data.draw(st.lists(st.integers(0, 7), min_size=2, max_size=8,
                                      unique=True), "gpus")
            m = data.draw(st.lists(LOADS, min_size=len(gpus) ** 2,
                                   max_size=len(gpus) ** 2), "pairs")
            m = np.array(m).reshape(len(gpus), len(gpus))
            np.fill_diagonal(m, 0.0)
            t = coll.pair_loads(self.cluster, np.array(gpus), m)
            links, loads = np.asarray(t.links), np.asarray(t.load, dtype=float)
        else:
            links = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1,
                                                max_size=n, unique=True), "links"))
            loads = np.array(data.draw(st.lists(LOADS, min_size=len(links),
                                                max_size=len(links)), "loads"))
        full = np.zeros(n)
        full[links] = loads
        prep = self.net.prepare(links, loads)
        if prep is not None:
            self.prepared.append((prep, full))
        self._launch(prep, full, latency)

    @precondition(lambda self: self.prepared)
    @rule(data=st.data(), copies=st.integers(1, 4))
    def reuse_prepared(self, data, copies):
        """The engine starts one Prepared many times (every MoE layer): a burst of identical
        flows at the same instant."""
        prep, full = data.draw(st.sampled_from(self.prepared), "prepared")
        for _ in range(copies):
            self._launch(prep, full, 0.0)

    # ------------------------------------------------------------ the clock

    def _moved(self):
        self.synced = False

    @rule(dt=st.one_of(st.sampled_from([1e-12, 1e-9, 1e-6]), st.floats(1e-7, 5e-3)))
    def advance(self, dt):
        self.env.run(until=self.env.now + dt)
        self._moved()

    @precondition(lambda self: self.env.peek() < math.inf)
    @rule()
    def to_next_event(self):
        """Land exactly on the next scheduled event (a completion or a latency ending)."""
        self.env.step()
        self._moved()

    @precondition(lambda self: self.env.peek() < math.inf)
    @rule(short=st.sampled_from([1e-3, 1e-5, 1e-9, 1e-12]))
    def just_before_next_event(self, short):
        """Stop a hair before the next event (a flow about to finish), where rounding and
        early-retirement bugs live."""
        t = self.env.now + (self.env.peek() - self.env.now) * (1 - short)
        if t > self.env.now:
            self.env.run(until=t)
            self._moved()

    @rule()
    def drain(self):
        """Run until nothing is scheduled: every flow must have finished (liveness)."""
        self.env.run()
        self._moved()
        assert not self.net.flows, "flows left moving with nothing scheduled"
        assert all(t.finish is not None for t in self.tracked)
        assert self.net.bytes_delivered == pytest.approx(self.net.bytes_injected, rel=REL)

    @rule()
    def sync_stats(self):
        """finish_stats() mid-run (it brings the link integrals up to now, idempotently)."""
        self.net.finish_stats()
        self.synced = True

    # ------------------------------------------------------------ invariants

    @invariant()
    def no_link_above_capacity(self):
        if not hasattr(self, "net"):
            return
        per_link = np.zeros(len(self.cap))
        for f in self.net.flows:
            per_link[f.prep.links] += f.rate * f.prep.size * f.prep.load
        assert (per_link <= self.cap * (1 + REL)).all(), per_link / self.cap
        util = self.net.utilisation()
        assert (util >= 0).all() and (util <= 1 + REL).all()
        # the utilisation the Network reports is the rates' sum
        assert util == pytest.approx(per_link / self.cap, rel=1e-6, abs=1e-12)

    @invariant()
    def max_min_fair(self):
        """Every moving flow has a saturated link on which no other flow moves more bytes/s
        (progressive filling froze it there), and so at least min over its links of
        capacity / (flows on the link)."""
        if not hasattr(self, "net") or not self.net.flows:
            return
        flows = self.net.flows
        util = self.net.utilisation()
        bps = np.array([f.rate * f.prep.size for f in flows])
        on = np.zeros((len(flows), len(self.cap)), dtype=bool)
        for i, f in enumerate(flows):
            on[i, f.prep.links] = True
        n_on = on.sum(axis=0)
        for i, f in enumerate(flows):
            links = f.prep.links
            fair = float(np.min(self.cap[links] / n_on[links]))
            assert bps[i] >= fair * (1 - 1e-6), (bps[i], fair)
            bottleneck = [j for j in links if util[j] >= 1 - 1e-6
                          and bps[i] >= bps[on[:, j]].max() * (1 - 1e-6)]
            assert bottleneck, f"flow {i} could go faster: no bottleneck link"

    @invariant()
    def delivered_within_load_and_monotone(self):
        if not hasattr(self, "net"):
            return
        for t in self.tracked:
            if t.flow is None:
                continue
            frac = t.fraction
            assert -REL <= frac <= 1 + REL, frac
            assert frac >= t.delivered - REL, "bytes delivered went backwards"
            t.delivered = frac
            if t.finished:  # it was retired only with (almost) nothing left: sent = received
                f = t.flow
                assert f.remaining <= max(1e-9, f.rate * 4 * math.ulp(max(self.env.now, 1.0))) \
                    * (1 + 1e-6), (f.remaining, f.rate)

    @invariant()
    def finished_flows_not_faster_than_alone(self):
        if not hasattr(self, "net"):
            return
        tick = 4 * math.ulp(max(self.env.now, 1.0))
        for t in self.tracked:
            if t.finish is not None and t.flow is not None:
                assert t.finish - t.start >= t.solo * (1 - SOLO_REL) - tick, \
                    (t.finish - t.start, t.solo)

    @invariant()
    def bytes_conserved(self):
        """Bytes injected = the loads of every started flow; bytes delivered = the whole
        loads of the finished ones (sent = received), no more, no less; the rest is exactly
        the flows still moving."""
        if not hasattr(self, "net"):
            return
        net = self.net
        started = [t for t in self.tracked if t.flow is not None]
        injected = sum(float(t.load.sum()) for t in started)
        delivered = sum(float(t.load.sum()) for t in started if t.finished)
        moving = sum(float(f.prep.total) for f in net.flows)
        assert net.bytes_injected == pytest.approx(injected, rel=REL, abs=1e-6)
        assert net.bytes_delivered == pytest.approx(delivered, rel=REL, abs=1e-6)
        assert net.bytes_delivered + moving == pytest.approx(net.bytes_injected, rel=REL,
                                                             abs=1e-6)
        assert {id(t.flow) for t in started if not t.finished} == set(map(id, net.flows))

    @invariant()
    def link_integrals(self):
        """Per link: bytes counted never decrease, utilisation integral <= the window, time
        saturated <= the window, peak <= 1; after finish_stats with statistics from time 0,
        each link counted exactly the bytes the flows put on it."""
        if not hasattr(self, "net"):
            return
        st_ = self.net.stats
        window = max(0.0, self.env.now - self.stats_from)
        slack = 1e-12 + REL * window
        assert (st_.bytes >= self.prev_bytes * (1 - REL) - 1e-9).all()
        self.prev_bytes = st_.bytes.copy()
        assert (st_.bytes / self.cap <= window + slack).all(), (st_.bytes / self.cap, window)
        assert (st_.saturated <= window + slack).all()
        assert (st_.tier_saturated <= window + slack).all()
        # a tier is saturated while any of its links is (a union of intervals, merged by
        # finish_stats, so checked once the statistics are brought up to date)
        for t in range(self.net.n_tiers if self.synced else 0):
            own = st_.saturated[self.net.tier == t]
            if len(own):
                assert own.max() - slack <= st_.tier_saturated[t] <= own.sum() + slack
        assert (st_.peak <= 1 + REL).all() and (st_.peak >= 0).all()
        series = np.frombuffer(st_.series_util, dtype=float)
        assert (series >= -REL).all() and (series <= 1 + 1e-6).all()
        assert (np.diff(np.frombuffer(st_.series_t, dtype=float)) >= 0).all()
        if self.synced and self.stats_from == 0.0:
            expect = np.zeros(len(self.cap))
            for t in self.tracked:
                if t.flow is None:
                    continue
                expect += t.load * t.fraction
            assert st_.bytes == pytest.approx(expect, rel=1e-7, abs=1e-3)


NETWORK_SETTINGS = settings(max_examples=250, stateful_step_count=40, deadline=None,
                            derandomize=True,
                            suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.filter_too_much])


def test_network_machine():
    run_state_machine_as_test(NetworkMachine, settings=NETWORK_SETTINGS)


# ==================================================================== serving, through sim.api

T_INTERVAL = 0.02
# conftest's MoE with 16 experts and 8 layers (fewer events per step: runs stay short)
MOE16 = {**TOY_MOE, "layers": 8, "moe": {"experts": 16, "top_k": 2, "moe_layers": 8}}
LAYOUTS = {
    # EP 16 over both racks: every MoE layer crosses scale-out; one microbatch
    "ep16": {"expert_parallel": 16},
    # conftest's layout: EP 8 per rack, two pipeline stages (the boundary on scale-out)
    "ep8_pp2": BASE["layout"],
}
BANDWIDTH_KEYS = {"scale_out": "hardware.scale_out.bandwidth_per_gpu",
                  "scale_up": "hardware.scale_up.bandwidth_per_gpu",
                  "hbm": "hardware.gpu.hbm_bandwidth"}
FLOPS_KEY = "hardware.gpu.flops"
# light (trains leave nearly empty) to overloaded (the queue bound turns arrivals away)
RATES = st.sampled_from([400.0, 20.0, 150.0, 1500.0, 20000.0])
STEP_TOLERANCE = 0.05   # batches differ once the schedule does: means move a little
FRACTIONS_OK = 1e-9


def serving_base() -> dict:
    """A tiny scenario: a fifth of a simulated second, a few hundredths of a wall second."""
    d = copy.deepcopy(BASE)
    d["model"] = MOE16
    d["workload"] = {"arrival": {"process": "poisson", "rate_per_s": 400},
                     "prompt_tokens": {"dist": "fixed", "value": 64},
                     "output_tokens": {"dist": "fixed", "value": 4},
                     "duration_s": 0.2, "warmup_s": 0.05}
    return d


def batching(policy: str, max_queue: int | None = None) -> dict:
    b = ({"policy": "fixed_interval", "interval": T_INTERVAL, "max_batch": 32}
         if policy == "fixed_interval" else {"policy": "continuous", "max_batch": 32})
    if max_queue is not None:
        b["max_queue"] = max_queue
    return b


def poisson_times(rate: float, seed: int, until: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, size=int(rate * until * 2) + 20))
    return t[t < until]


def write_trace(path: Path, times: np.ndarray) -> str:
    path.write_text("arrival_s,prompt_tokens,output_tokens\n"
                    + "".join(f"{t!r},64,4\n" for t in times.tolist()))
    return str(path)


def check_requests_conserved(run) -> None:
    """Arrivals after warm-up = completed + dropped + in flight, once the requests that
    arrived during warm-up and are still counted (in flight, or completed after it) are
    added; the summary's counts are those of the requests table."""
    sm, req, res = run.summary, run.requests, run.result
    t0 = sm["window_s"][0]
    status = req.status.astype(str)
    in_flight = status.isin(["waiting", "running"])
    completed = (status == "completed") & (req.finish_s >= t0)
    early = req.arrival_s < t0
    carried = int((early & (in_flight | completed)).sum())
    assert sm["requests_completed"] == int(completed.sum())
    assert sm["requests_in_flight"] == int(in_flight.sum())
    assert sm["requests_dropped"] == int(((status == "dropped") & ~early).sum()) \
        + res.dropped_in_window
    assert sm["requests_arrived"] + carried == \
        sm["requests_completed"] + sm["requests_dropped"] + sm["requests_in_flight"]
    if t0 == 0:
        assert carried == 0
    # every row is in exactly one state, and in order: arrival <= admitted <= first
    # token <= finish
    assert status.isin(["waiting", "running", "completed", "dropped"]).all()
    done = req[status == "completed"]
    assert (done.admitted_s >= done.arrival_s).all()
    assert (done.first_token_s >= done.admitted_s).all()
    assert (done.finish_s >= done.first_token_s).all()


def check_fractions(run) -> None:
    """Every utilisation and time fraction of a run in [0, 1]; GPU time adds up to the
    window; the network delivered or still holds every byte injected."""
    sm, links, gpus = run.summary, run.links, run.gpus
    for col in ("mean_utilisation", "peak_utilisation", "saturated_fraction"):
        v = links[col].to_numpy()
        assert ((v >= 0) & (v <= 1 + FRACTIONS_OK)).all(), (col, v.max())
    for tier, u in sm["link_utilisation"].items():
        for k, v in u.items():
            assert 0 <= v <= 1 + FRACTIONS_OK, (tier, k, v)
    frac = sm["gpu_time_fraction"]
    assert all(-FRACTIONS_OK <= v <= 1 + FRACTIONS_OK for v in frac.values()), frac
    assert sum(frac.values()) == pytest.approx(1.0, abs=1e-9)
    assert -FRACTIONS_OK <= sm["bubble_fraction"] <= 1 + FRACTIONS_OK
    t0, t1 = sm["window_s"]
    used = gpus[gpus.role == "serving"]
    per_gpu = used[["compute_s", "memory_s", "network_s", "bubble_s", "idle_s"]]
    assert (per_gpu.to_numpy() >= -1e-12).all()
    assert np.allclose(per_gpu.sum(axis=1), t1 - t0)
    net = run.result.network
    assert net.bytes_delivered + sum(f.prep.total for f in net.flows) == \
        pytest.approx(net.bytes_injected, rel=1e-9)


class ServingMachine(RuleBasedStateMachine):
    LAYOUT = "ep16"   # one machine per layout (the test is parametrized over LAYOUTS)

    def __init__(self):
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="racksim-stateful-"))
        self.last = None

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------ running

    def simulate(self, **extra):
        """One run of the current scenario (with `extra` overrides); every run made, not
        only the latest, must keep the invariants of one run."""
        run = rs.simulate(rs.load(self.data, {**self.overrides, **extra}))
        check_requests_conserved(run)
        check_fractions(run)
        return run

    def rerun(self):
        self.last = self.simulate()

    @initialize(policy=st.sampled_from(["fixed_interval", "fixed_interval", "continuous"]),
                warmup=st.sampled_from([0.0, 0.05]), rate=RATES,
                seed=st.integers(0, 2**16))
    def setup(self, policy, warmup, rate, seed):
        self.data = serving_base()
        self.layout = self.LAYOUT
        self.policy = policy
        self.overrides = {"layout": LAYOUTS[self.layout], "workload.warmup_s": warmup,
                          "batching": batching(policy), "seed": seed,
                          "workload.arrival.rate_per_s": rate}
        self.rerun()

    @rule(rate=RATES)
    def set_rate(self, rate):
        self.overrides["workload.arrival.rate_per_s"] = rate
        self.rerun()

    @rule(which=st.sampled_from(sorted(BANDWIDTH_KEYS)),
          factor=st.sampled_from([0.05, 0.25, 1.0, 4.0]))
    def scale_bandwidth(self, which, factor):
        """Scale-out, scale-up or HBM bandwidth set to `factor` x conftest's figure."""
        key = BANDWIDTH_KEYS[which]
        self.overrides[key] = self._value(key, base=True) * factor
        self.rerun()

    @rule(factor=st.sampled_from([0.02, 0.2, 1.0, 5.0]))
    def scale_flops(self, factor):
        self.overrides[FLOPS_KEY] = self._value(FLOPS_KEY, base=True) * factor
        self.rerun()

    @rule(seed=st.integers(0, 2**16))
    def set_seed(self, seed):
        self.overrides["seed"] = seed
        self.rerun()

    @rule(policy=st.sampled_from(["fixed_interval", "continuous"]))
    def set_policy(self, policy):
        self.policy = policy
        self.overrides["batching"] = batching(policy)
        self.rerun()

    def _value(self, key, base=False):
        if key in self.overrides and not base:
            return self.overrides[key]
        node = self.data
        for k in key.split("."):
            node = node[k]
        return float(node)

    # ------------------------------------------------------------ invariants of one run

    @invariant()
    def requests_are_conserved(self):
        if self.last is not None:
            check_requests_conserved(self.last)

    @invariant()
    def fractions_within_zero_and_one(self):
        if self.last is not None:
            check_fractions(self.last)

    # ------------------------------------------------------------ pairs of runs

    def _faster_is_not_slower(self, key, factor):
        slow = self.last
        fast = self.simulate(**{key: self._value(key) * factor})
        a, b = slow.steps, fast.steps
        same_trains = (len(a) == len(b) and len(a) > 0 and
                       (a[["microbatch", "start", "tokens", "prefill_tokens"]].to_numpy() ==
                        b[["microbatch", "start", "tokens", "prefill_tokens"]].to_numpy()).all())
        if self.policy == "fixed_interval" and self.layout == "ep16" and len(a) and \
                (a.duration_s < T_INTERVAL * (1 - 1e-6)).all():
            # every train was back before the next departed: a faster cluster runs the
            # very same trains (same departures, same batches, same routing draws)
            assert same_trains, "the train schedule changed although every step fit"
        if same_trains:
            assert (b.duration_s.to_numpy() <= a.duration_s.to_numpy() * (1 + 1e-9)).all()
        ms, mf = slow.summary["step_time_s"]["mean"], fast.summary["step_time_s"]["mean"]
        if ms is not None and mf is not None:
            assert mf <= ms * (1 + STEP_TOLERANCE), (key, factor, ms, mf)
        assert fast.summary["output_tokens_per_s"] >= \
            slow.summary["output_tokens_per_s"] * (1 - STEP_TOLERANCE) - 1e-9
        return same_trains

    @rule(factor=st.sampled_from([2.0, 8.0]))
    def more_scale_out_is_never_slower(self, factor):
        """Both layouts cross scale-out (EP 16 every MoE layer, PP 2 at the boundary)."""
        self._faster_is_not_slower(BANDWIDTH_KEYS["scale_out"], factor)

    @rule(which=st.sampled_from(["hbm", "scale_up"]), factor=st.sampled_from([2.0, 8.0]))
    def more_bandwidth_is_never_slower(self, which, factor):
        self._faster_is_not_slower(BANDWIDTH_KEYS[which], factor)

    @rule(factor=st.sampled_from([2.0, 8.0]))
    def more_flops_is_never_slower(self, factor):
        self._faster_is_not_slower(FLOPS_KEY, factor)

    @rule(extra=st.sampled_from([0.1, 1.0, 3.0]), arrival_seed=st.integers(0, 2**16))
    def more_load_never_shortens_a_queue_wait(self, extra, arrival_seed):
        """Fixed-interval trains, no queue bound: add an independent Poisson stream of
        requests (extra x the current rate) to the current one. FIFO admission into trains
        that leave on a clock: no request of the lighter load is admitted earlier (one never
        admitted counts as an infinite wait)."""
        rate = self.overrides["workload.arrival.rate_per_s"]
        base = poisson_times(rate, arrival_seed, 0.2)
        added = poisson_times(rate * extra, arrival_seed + 1, 0.2)
        times = np.concatenate([base, added])
        mine = np.concatenate([np.ones(len(base), bool), np.zeros(len(added), bool)])
        order = np.argsort(times, kind="stable")
        times, mine = times[order], mine[order]
        runs = []
        for name, t in (("light", base), ("heavy", times)):
            runs.append(self.simulate(**{
                "workload.arrival": {"process": "trace",
                                     "path": write_trace(self.tmp / f"{name}.csv", t)},
                "batching": batching("fixed_interval", max_queue=10**6)}))
        light, heavy = (r.requests for r in runs)
        assert len(light) == len(base) and len(heavy) == len(times), "no request dropped"
        heavy = heavy[mine]
        w_light = (light.admitted_s - light.arrival_s).fillna(np.inf).to_numpy()
        w_heavy = (heavy.admitted_s - heavy.arrival_s).fillna(np.inf).to_numpy()
        assert (w_heavy >= w_light - 1e-12).all(), np.flatnonzero(w_heavy < w_light - 1e-12)
        # (finish times are not compared: a bigger batch draws other routings, and its step
        # can be shorter; the admission schedule is what load may only delay)

    @rule()
    def same_seed_same_bytes_on_disk(self):
        """Two runs with the same seed write byte-identical files (wall time aside); another
        seed changes the requests."""
        outs = []
        for k in range(2):
            r = self.simulate()
            r.summary["wall_time_s"] = None
            outs.append(self.tmp / f"run{k}")
            r.write(outs[-1], plots=False)
        names = sorted(p.name for p in outs[0].iterdir())
        assert names == sorted(p.name for p in outs[1].iterdir())
        assert {"summary.json", "requests.csv", "steps.csv", "links.csv", "gpus.csv",
                "trace.json"} <= set(names)
        for name in names:
            assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
        other = self.simulate(seed=self.overrides["seed"] + 1)
        if len(other.requests) or len(self.last.requests):
            assert not other.requests.equals(self.last.requests), "the seed changed nothing"


SERVING_SETTINGS = settings(max_examples=12, stateful_step_count=8, deadline=None,
                            derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_serving_machine(layout):
    machine = type(f"ServingMachine_{layout}", (ServingMachine,), {"LAYOUT": layout})
    run_state_machine_as_test(machine, settings=SERVING_SETTINGS)
