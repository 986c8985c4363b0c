"""Requests, queues and microbatch slots: who is admitted, what a step processes, and what it
produces. Sequences live in numpy arrays per slot; no per-request Python work per decode step.

Policies (documented in docs/architecture.md):
- admission is FIFO per replica, bounded by `max_batch` sequences per microbatch and by KV
  capacity; a request reserves its whole KV (prompt + output tokens) when admitted, so no
  preemption is ever needed; a request that could never fit is dropped and counted.
- `chunked` prefill: a step carries every decoding sequence plus up to `chunk_tokens` prompt
  tokens (a per-step budget, FIFO over prompts); `separate`: a step with prompt work carries
  only prompt tokens (same budget).
- the step that finishes a prompt produces the request's first output token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

WAITING, RUNNING, DONE, DROPPED, FAILED = 0, 1, 2, 3, 4   # FAILED: killed by a fault


class RequestTable:
    """Growable columns, one row per request ever created."""

    def __init__(self, capacity: int = 1024):
        self.n = 0
        self._cols = ("arrival", "admitted", "first_token", "finish", "failed_at")
        for c in self._cols:
            setattr(self, c, np.full(capacity, np.nan))
        self.prompt = np.zeros(capacity, dtype=np.int64)
        self.output = np.zeros(capacity, dtype=np.int64)
        self.replica = np.zeros(capacity, dtype=np.int64)
        self.status = np.zeros(capacity, dtype=np.int8)
        self.cause = np.zeros(capacity, dtype=np.int32)  # FAILED: 1 + index of the stop event

    def _grow(self, need: int) -> None:
        cap = len(self.prompt)
        if need <= cap:
            return
        new = max(need, 2 * cap)
        for c in (*self._cols, "prompt", "output", "replica", "status", "cause"):
            old = getattr(self, c)
            fill = np.nan if old.dtype.kind == "f" else 0
            arr = np.full(new, fill, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, c, arr)

    def add(self, arrival, prompt, output, replica) -> np.ndarray:
        arrival = np.atleast_1d(np.asarray(arrival, dtype=float))
        k = len(arrival)
        self._grow(self.n + k)
        rows = slice(self.n, self.n + k)
        self.arrival[rows] = arrival
        self.prompt[rows] = prompt
        self.output[rows] = output
        self.replica[rows] = replica
        self.n += k
        return np.arange(rows.start, rows.stop)


@dataclass
class StepPlan:
    """What one microbatch step processes."""

    decode: np.ndarray        # mask over the slot's sequences
    take: np.ndarray          # prompt tokens each sequence prefills this step
    tokens: int               # tokens through the model: decode + prefill
    prefill_tokens: int
    kv_tokens: float          # context tokens whose KV is read
    attn_pairs: float         # query x context token pairs (attention FLOPs)
    sequences: int = 0        # sequences with work this step (decoding or prefilling)
    decode_kv: float = 0.0    # of kv_tokens, those the decoding sequences read
    prefill_pairs: float = 0.0   # of attn_pairs, the prefill's
    # per attention-data-parallel rank (`ranks` given to Slot.plan): kernels.StepWork's
    # figures (tokens, decoding sequences, their KV, prompt tokens, their KV and pairs)
    rank_work: tuple | None = None

    def work(self) -> tuple:
        """The step's StepWork figures for the whole microbatch (numbers, not arrays)."""
        decode = self.tokens - self.prefill_tokens
        return (float(self.tokens), float(decode), self.decode_kv, float(self.prefill_tokens),
                self.kv_tokens - self.decode_kv, self.prefill_pairs)


class Slot:
    """One microbatch's sequences."""

    def __init__(self):
        self.ids = np.zeros(0, dtype=np.int64)
        self.ctx = np.zeros(0, dtype=np.int64)   # tokens in the KV cache
        self.rem = np.zeros(0, dtype=np.int64)   # output tokens still to produce
        self.pre = np.zeros(0, dtype=np.int64)   # prompt tokens still to prefill

    def __len__(self) -> int:
        return len(self.ids)

    def admit(self, ids: np.ndarray, prompt: np.ndarray, output: np.ndarray,
              prefilled: bool = False, cached: np.ndarray | None = None) -> None:
        """Add sequences; `prefilled` ones (disaggregated prefill) arrive with their
        prompt's KV and only decode; otherwise the first `cached` prompt tokens are prefix-
        cache hits, in KV from the start, and the rest is prefilled."""
        if prefilled:
            cached = prompt
        elif cached is None:
            cached = np.zeros(len(ids), dtype=np.int64)
        self.ids = np.concatenate([self.ids, ids])
        self.ctx = np.concatenate([self.ctx, cached])
        self.rem = np.concatenate([self.rem, output])
        self.pre = np.concatenate([self.pre, prompt - cached])

    def plan(self, prefill: str, chunk_tokens: int, step_tokens: int | None = None,
             ranks: int = 1) -> StepPlan:
        """The next step: decoding sequences, plus prompt tokens up to `chunk_tokens`, and
        with a per-step token budget (`step_tokens`, TensorRT-LLM's max_num_tokens) no more
        than what the decoding sequences leave of it. With `ranks` > 1 (attention data
        parallelism) each sequence lives whole on rank `id % ranks`, both budgets hold per
        rank (as TensorRT-LLM's max_num_tokens and SGLang's chunked-prefill size do per
        attention-DP rank), and the plan carries each rank's tokens, KV read and attention
        pairs (their imbalance is real)."""
        rank = self.ids % ranks
        budgets = np.full(ranks, chunk_tokens, dtype=np.int64)
        if step_tokens is not None:
            decoding = np.bincount(rank[self.pre == 0], minlength=ranks)
            budgets = np.minimum(budgets, np.maximum(step_tokens - decoding, 0))
        decode, take, n_dec, n_pre, dec_ctx, pre_ctx, pre_pairs, n_seq = _plan(
            self.pre, self.ctx, rank, budgets, prefill == "separate")
        work = None
        if ranks > 1:
            ctx = self.ctx.astype(float)
            prefilling = take > 0
            work = tuple(np.bincount(rank, weights=w, minlength=ranks) for w in (
                (decode + take).astype(float), decode.astype(float),
                np.where(decode, ctx, 0.0), take.astype(float),
                np.where(prefilling, ctx + take, 0.0), take * (ctx + (take + 1) / 2.0)))
        return StepPlan(decode, take, n_dec + n_pre, n_pre, float(dec_ctx + pre_ctx),
                        dec_ctx + pre_pairs, n_seq, float(dec_ctx), pre_pairs, work)

    def advance(self, plan: StepPlan) -> tuple[np.ndarray, np.ndarray, int]:
        """Apply a finished step. Returns (ids with a first token now, ids finished now,
        output tokens produced)."""
        first_ids, done_ids, produced, keep = _advance(self.ids, self.ctx, self.rem,
                                                       self.pre, plan.decode, plan.take)
        if keep < len(self.ids):
            self.ids, self.ctx = self.ids[:keep], self.ctx[:keep]
            self.rem, self.pre = self.rem[:keep], self.pre[:keep]
        return first_ids, done_ids, produced


@numba.njit(cache=True, nogil=True)
def _plan(pre, ctx, rank, budgets, separate):   # pragma: no cover
    """A step's plan in one compiled pass: sequences with their prompt done decode; prompt
    tokens are taken FIFO up to the budget of the sequence's rank (`budgets[rank[i]]`);
    under `separate` a step with prompt work carries only that. Returns (decode mask,
    tokens taken per sequence, decoding sequences, prompt tokens, context tokens the
    decoding sequences read, context tokens the prefilling ones read, the prefill's query x
    context pairs, sequences with work)."""
    n = len(pre)
    decode = np.empty(n, np.bool_)
    take = np.empty(n, np.int64)
    before = np.zeros(len(budgets), np.int64)
    any_take = False
    for i in range(n):
        r = rank[i]
        take[i] = min(max(budgets[r] - before[r], 0), pre[i])
        before[r] += pre[i]
        decode[i] = pre[i] == 0
        any_take |= take[i] > 0
    if separate and any_take:
        for i in range(n):
            decode[i] = False
    n_dec = n_pre = dec_ctx = pre_ctx = n_seq = 0
    pre_pairs = 0.0
    for i in range(n):
        n_seq += decode[i] or take[i] > 0
        if decode[i]:
            n_dec += 1
            dec_ctx += ctx[i]
        if take[i] > 0:
            n_pre += take[i]
            pre_ctx += ctx[i] + take[i]
            pre_pairs += take[i] * (ctx[i] + (take[i] + 1) / 2.0)
    return decode, take, n_dec, n_pre, dec_ctx, pre_ctx, pre_pairs, n_seq


@numba.njit(cache=True, nogil=True)
def _advance(ids, ctx, rem, pre, decode, take):   # pragma: no cover
    """Apply a step in place (compiled): prompt tokens taken join the context; a sequence
    that decoded, or finished its prompt, produced a token. Finished sequences are
    dropped by moving the rest forward (order kept). Returns (ids with a first token,
    ids finished, tokens produced, sequences kept)."""
    n = len(ids)
    n_first = n_done = produced = 0
    for i in range(n):
        ctx[i] += take[i]
        pre[i] -= take[i]
        first = take[i] > 0 and pre[i] == 0
        if decode[i] or first:
            ctx[i] += 1
            rem[i] -= 1
            produced += 1
        n_first += first
        n_done += rem[i] <= 0
    first_ids = np.empty(n_first, np.int64)
    done_ids = np.empty(n_done, np.int64)
    a = b = keep = 0
    for i in range(n):
        if take[i] > 0 and pre[i] == 0:
            first_ids[a] = ids[i]
            a += 1
        if rem[i] <= 0:
            done_ids[b] = ids[i]
            b += 1
        else:
            ids[keep], ctx[keep], rem[keep], pre[keep] = ids[i], ctx[i], rem[i], pre[i]
            keep += 1
    return first_ids, done_ids, produced, keep
