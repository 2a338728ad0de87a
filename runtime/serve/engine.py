"""Continuous batching: one engine thread runs one generation step per token for every active request.

    submit(job) ──► pending (bounded: QueueFull when --max-queue jobs wait)
                        │  each loop: admit while active < max_batch
                        ▼
    prefill the admitted jobs together: step(prompts left-padded [n,S0], mask [n,S0], empty cache) -> first
                        │  tokens, cache(S0); merge them into the running batch (below). With a prefix cache
                        │  (prefix.py) a job whose prompt starts with stored KV of m tokens is prefilled alone
                        │  from it: step(prompt[m:] [1,S], mask [1,m+S], that cache); every row's prompt KV is
                        │  stored after its prefill, and its prompt + fed tokens when it leaves the batch
                        │  (and a branch point off a stored sequence: prefilled in two calls, stored between)
                        ▼
    decode step for all rows: step(last ids [B,1], mask + [1], pos = cumsum(mask) - 1, cache) -> next ids [B]
                        │  per row: sample (its own temperature / top_k / top_p / seed), hand the token to the
                        │  job's handler (text, stop strings, chat parsing), stop on its stop ids or max_tokens
                        ▼
    finished or cancelled (client gone) rows leave: their batch index is dropped from every cache and the mask,
    then mask columns that are padding in every row are trimmed.

Merging rows of different lengths (ARCHITECTURE.md: absolute slots, left padding, window-sized caches):

    mask [B,P]:              row r is left-padded with zeros to the batch's P = max(P_batch, P_r)
    layer cache [B,KV,L,D]:  every layer is left-padded with zero slots to L = max(L_batch, L_r)

For a full layer L = P, so its pad slots are the mask's pad columns. A sliding layer of a window-cache export holds
L = min(P, W-1) slots, the *last* L columns of the mask, and max(min(P_a, W-1), min(P_b, W-1)) = min(P, W-1): the
padded cache is again the last min(P, W-1) columns, and its pad slots (if any) fall on the mask's pad columns, which
the attention excludes. Positions come from cumsum(mask) - 1, so padding never shifts a row's positions. The same
rule read backwards trims: dropping k leading all-pad columns shortens a layer to min(L, P - k).

The engine knows nothing of text: a job's `handler` turns tokens into output (see app.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from mxport.contract.io import position_ids
from mxport.errors import MxportError
from mxport.runtime.generation.sampling import SamplingConfig, sample, token_logprobs
from mxport.runtime.execution.step_model import StepModel, cache_arrays
from mxport.runtime.serve.prefix import BRANCH_TOKENS, Hit, PrefixCache


class QueueFull(Exception):
    """The engine's waiting queue is full (the server answers 503)."""


class Handler(Protocol):
    def token(self, token_id: int) -> bool:
        """One generated token (stop tokens are not passed). Returns True to stop here (e.g. a stop string)."""

    def logprob(self, token_id: int, logprob: float, top: list[tuple[int, float]]) -> None:
        """Only for a job with top_logprobs set, before token(): the chosen token's log-probability and the
        top_logprobs most likely tokens (id, logprob), from the logits before any grammar mask."""

    def finish(self, reason: str, completion_tokens: int, stop_token: int | None) -> None:
        """The job ended: reason 'stop' | 'length' | 'cancelled' | 'error: ...'; stop_token: the stop id that
        ended it (None for a stop string, the length limit, ...)."""


@dataclass
class Job:
    prompt: list[int]
    max_tokens: int
    handler: Handler
    sampling: SamplingConfig = SamplingConfig()
    stop_ids: frozenset[int] = frozenset()
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: int = 0  # tokens sampled so far (a stop token included)
    last: int = -1  # the token the next step feeds
    fed: list[int] = field(default_factory=list)  # the tokens decode steps fed (after the prompt)
    rng: np.random.Generator | None = None
    constraint: Any = None  # runtime.generation.constrain.Constraint: masks the logits, follows the tokens
    top_logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the k most likely (Handler.logprob)

    done: bool = False

    def cancel(self) -> None:
        self.cancelled.set()

    def finish(self, reason: str, stop_token: int | None = None) -> None:
        """Tell the handler once."""
        if not self.done:
            self.done = True
            self.handler.finish(reason, self.generated, stop_token)


@dataclass
class Batch:
    """The running batch: rows, their mask [B,P] and per-layer caches [B,KV,L_i,D] (ORT values or numpy)."""

    jobs: list[Job] = field(default_factory=list)
    mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    cache: list[Any] = field(default_factory=list)


class Engine:
    """The scheduler thread. `model` is a runtime.execution.step_model step model (OrtStepModel or InferStepModel)."""

    def __init__(self, model: StepModel, *, pad_token_id: int = 0, max_batch: int = 16, max_queue: int = 64,
                 prefix_cache: PrefixCache | None = None) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, found {max_batch}, {max_queue}")
        self.model = model
        self.pad = int(pad_token_id)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch = Batch()
        self.steps = 0  # decode steps run (for tests and stats)
        self.rows_decoded = 0  # sum over decode steps of the rows they ran
        self.prefills = 0  # prefill calls
        self.seconds = {"prefill": 0.0, "decode": 0.0, "batch": 0.0}  # model calls, batch surgery
        self.max_rows_seen = 0  # the largest batch a decode step ran with
        self.max_prefill_rows = 0  # the most jobs prefilled in one call
        self.finished: Counter[str] = Counter()  # jobs ended, by reason: stop, length, cancelled, error
        self._pending: deque[Job] = deque()
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._wrap = _wrapper(model)
        self.prefix = prefix_cache if prefix_cache is not None and prefix_cache.max_bytes else None
        self.observe: Callable[[Job], Handler] | None = None  # each accepted job's handler goes through it (metrics)

    # ---- the API --------------------------------------------------------------------------------------------
    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="mxport-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        with self._wake:
            if len(self._pending) >= self.max_queue + max(0, self.max_batch - len(self.batch.jobs)):
                raise QueueFull(f"{len(self._pending)} requests are waiting (--max-queue {self.max_queue})")
            job.rng = job.sampling.rng()
            if self.observe is not None:
                job.handler = self.observe(job)
            self._pending.append(job)
            self._wake.notify_all()

    @property
    def active(self) -> int:
        return len(self.batch.jobs)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def stats(self) -> dict:
        """Counters since start: calls, rows, seconds in model calls and in batch surgery, finish reasons."""
        return {"active": self.active, "waiting": self.waiting, "decode_steps": self.steps,
                "rows_decoded": self.rows_decoded, "prefills": self.prefills,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "finished": dict(self.finished),
                "prefix_cache": self.prefix.stats() if self.prefix is not None else None}

    # ---- the loop -------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self._pending and not self.batch.jobs:
                    self._wake.wait()
                if self._stop:
                    break
                admit = []
                while self._pending and len(self.batch.jobs) + len(admit) < self.max_batch:
                    admit.append(self._pending.popleft())
            try:
                if admit:
                    self._prefill(admit)
                if self.batch.jobs:
                    self._decode()
            except Exception as exc:  # a failing step fails the rows it ran for; the server keeps serving
                for job in [*admit, *self.batch.jobs]:
                    self._end(job, f"error: {type(exc).__name__}: {exc}")
                self.batch = Batch()
        for job in [*self._pending, *self.batch.jobs]:
            self._end(job, "cancelled")

    def _prefill(self, jobs: list[Job]) -> None:
        """Prefill the new jobs together (left-padded to their longest prompt), then merge them into the batch; a
        job with a prefix-cache hit is prefilled alone from the stored KV (rows with different cached lengths
        would need padding between a row's cache and its new tokens, which the window rule does not allow)."""
        for job in [j for j in jobs if j.cancelled.is_set()]:
            self._end(job, "cancelled")
        jobs = [j for j in jobs if not j.done]
        hits = [self._hit(j) for j in jobs]
        for job, hit in zip(jobs, hits):
            if hit is not None:
                ids = np.asarray([job.prompt[hit.length:]], np.int64)
                kv = [self._wrap(arr) for arr in hit.kv]
                self._prefill_rows([job], ids, np.ones((1, len(job.prompt)), np.int64), kv)
        jobs = [j for j, hit in zip(jobs, hits) if hit is None]
        if not jobs:
            return
        S0 = max(len(j.prompt) for j in jobs)
        ids = np.full((len(jobs), S0), self.pad, np.int64)
        mask = np.zeros((len(jobs), S0), np.int64)
        for r, job in enumerate(jobs):
            ids[r, S0 - len(job.prompt):] = job.prompt
            mask[r, S0 - len(job.prompt):] = 1
        self._prefill_rows(jobs, ids, mask, self.model.new_cache(len(jobs)))

    def _hit(self, job: Job) -> Hit | None:
        """The prefix cache's hit for the job's prompt; past a branch point BRANCH_TOKENS beyond it (prefix.py),
        the prompt up to there is prefilled first (from the hit) and stored, and that is the hit."""
        if self.prefix is None:
            return None
        hit = self.prefix.lookup(job.prompt)
        m, d = hit.length if hit is not None else 0, self.prefix.shared(job.prompt)
        if d - m < BRANCH_TOKENS:
            return hit
        mask = np.ones((1, d), np.int64)
        cache = [self._wrap(arr) for arr in hit.kv] if hit is not None else self.model.new_cache(1)
        t0 = time.perf_counter()
        _, cache = self.model.step(np.asarray([job.prompt[m:d]], np.int64), mask, position_ids(mask, d - m), cache)
        self.seconds["prefill"] += time.perf_counter() - t0
        self.prefills += 1
        arrays = [np.array(arr) for arr in cache_arrays(self.model, cache, d)]
        self.prefix.store(job.prompt[:d], arrays)
        return Hit(d, arrays)

    def _prefill_rows(self, jobs: list[Job], ids: np.ndarray, mask: np.ndarray, cache: list[Any]) -> None:
        """One prefill call (ids [n,S] after `cache` of mask.shape[1] - S slots), then the rows join the batch."""
        t0 = time.perf_counter()
        logits, cache = self.model.step(ids, mask, position_ids(mask, ids.shape[1]), cache)
        self.seconds["prefill"] += time.perf_counter() - t0
        self.prefills += 1
        self.max_prefill_rows = max(self.max_prefill_rows, len(jobs))
        new = Batch(jobs, mask, list(cache))
        self._remember(new, range(len(jobs)))
        done = [r for r, job in enumerate(jobs) if self._take(job, logits[r : r + 1, -1, :])]
        if done:
            new = self._select(new, [r for r in range(len(jobs)) if r not in done])
        if new.jobs:
            self.batch = self._concat(self.batch, new)

    def _decode(self) -> None:
        b = self.batch
        ids = np.asarray([[job.last] for job in b.jobs], np.int64)
        for job in b.jobs:
            job.fed.append(job.last)
        b.mask = np.concatenate([b.mask, np.ones((len(b.jobs), 1), np.int64)], axis=1)
        t0 = time.perf_counter()
        logits, b.cache = self.model.step(ids, b.mask, position_ids(b.mask, 1), b.cache)
        self.seconds["decode"] += time.perf_counter() - t0
        self.steps += 1
        self.rows_decoded += len(b.jobs)
        self.max_rows_seen = max(self.max_rows_seen, len(b.jobs))
        done = [self._take(job, logits[i : i + 1, -1, :]) for i, job in enumerate(b.jobs)]
        self._drop([i for i, d in enumerate(done) if d])

    def _end(self, job: Job, reason: str, stop_token: int | None = None) -> None:
        if not job.done:
            self.finished[reason.split(":")[0]] += 1
        job.finish(reason, stop_token)

    def _take(self, job: Job, logits: np.ndarray) -> bool:
        """Choose the job's next token from logits [1,V], hand it over; True when the job is finished."""
        if job.cancelled.is_set():
            self._end(job, "cancelled")
            return True
        try:
            token = self._choose(job, logits)
        except MxportError as exc:  # this row's grammar failed: the other rows go on
            self._end(job, f"error: {exc}")
            return True
        job.generated += 1
        job.last = token
        if token in job.stop_ids:
            self._end(job, "stop", token)
            return True
        if job.handler.token(token):
            self._end(job, "stop")
            return True
        if job.generated >= job.max_tokens:
            self._end(job, "length")
            return True
        return False

    @staticmethod
    def _choose(job: Job, logits: np.ndarray) -> int:
        """Sample the row's token: logprobs from the logits as the model gave them, then the grammar's mask (if any),
        the row's own sampling and random stream, and the grammar follows the token."""
        masked = logits if job.constraint is None else job.constraint.mask(logits)
        token = int(sample(masked, job.sampling, job.rng)[0])
        if job.top_logprobs is not None:
            job.handler.logprob(token, *token_logprobs(logits, token, job.top_logprobs))
        if job.constraint is not None:
            job.constraint.advance(token)
        return token

    # ---- batch surgery (numpy; the cache goes back to ORT values for the next step) -------------------------
    def _concat(self, a: Batch, b: Batch) -> Batch:
        """Rows of a then rows of b; mask and every layer cache left-padded to the longer of the two."""
        if not a.jobs:
            return b
        t0 = time.perf_counter()
        P = max(a.mask.shape[1], b.mask.shape[1])
        mask = np.concatenate([_left_pad(a.mask, P, 1), _left_pad(b.mask, P, 1)], axis=0)
        cache = []
        for x, y in zip(cache_arrays(self.model, a.cache, a.mask.shape[1]),
                        cache_arrays(self.model, b.cache, b.mask.shape[1])):
            L = max(x.shape[2], y.shape[2])
            cache.append(self._wrap(np.concatenate([_left_pad(x, L, 2), _left_pad(y, L, 2)], axis=0)))
        self.seconds["batch"] += time.perf_counter() - t0
        return Batch([*a.jobs, *b.jobs], mask, cache)

    def _select(self, b: Batch, keep: list[int], arrays: list[np.ndarray] | None = None) -> Batch:
        """The rows `keep` of b, with the mask columns that are padding in all of them trimmed (`arrays`: b's
        cache_arrays when the caller has them)."""
        if not keep:
            return Batch()
        t0 = time.perf_counter()
        mask = b.mask[keep]
        k = int(np.argmax(mask.any(axis=0)))  # leading columns that are padding in every remaining row
        P = mask.shape[1] - k
        cache = []
        for arr in arrays if arrays is not None else cache_arrays(self.model, b.cache, b.mask.shape[1]):
            arr = arr[keep]
            L = min(arr.shape[2], P)
            cache.append(self._wrap(np.ascontiguousarray(arr[:, :, arr.shape[2] - L :])))
        self.seconds["batch"] += time.perf_counter() - t0
        return Batch([b.jobs[i] for i in keep], np.ascontiguousarray(mask[:, k:]), cache)

    def _drop(self, rows: list[int]) -> None:
        if rows:
            arrays = self._remember(self.batch, rows)
            self.batch = self._select(self.batch, [i for i in range(len(self.batch.jobs)) if i not in set(rows)],
                                      arrays)

    def _remember(self, b: Batch, rows) -> list[np.ndarray] | None:
        """Store the rows' tokens (prompt + fed) and KV in the prefix cache; b's cache as numpy (None: no cache)."""
        if self.prefix is None:
            return None
        t0 = time.perf_counter()
        arrays = cache_arrays(self.model, b.cache, b.mask.shape[1])
        for r in rows:
            job = b.jobs[r]
            tokens = [*job.prompt, *job.fed]
            if int(b.mask[r].sum()) == len(tokens):  # the row's slots are its tokens (else store nothing)
                self.prefix.store(tokens, [arr[r : r + 1] for arr in arrays])
        self.seconds["batch"] += time.perf_counter() - t0
        return arrays


def _left_pad(x: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Zeros in front of axis `axis` up to `length`."""
    short = length - x.shape[axis]
    if short == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (short, 0)
    return np.pad(x, widths)


def _wrapper(model: Any):
    """numpy -> what the model's step takes as a cache entry (an ORT value on its device, or the array)."""
    ort = getattr(model, "_ort", None)
    if ort is None:
        return lambda arr: arr
    device = getattr(model, "device", "cpu")
    return lambda arr: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), device, 0)


def wait_idle(engine: Engine, timeout: float = 10.0) -> bool:
    """Poll until no job is active or waiting (tests)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not engine.active and not engine.waiting:
            return True
        time.sleep(0.01)
    return False
