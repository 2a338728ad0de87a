"""Next-token choice: greedy or sampled (temperature, top-k, top-p) from one step's logits.

The order is the one transformers uses: temperature, then top-k, then top-p (nucleus), then a draw.
Randomness comes only from the `numpy.random.Generator` passed in, so one seed gives one sequence.

    logits [B, V] float  ->  ids [B] int64
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mxport.errors import MxportError


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick a token. temperature 0 means greedy (top_k / top_p are then ignored)."""

    temperature: float = 0.0  # 0 = greedy argmax; > 0 divides the logits before the softmax
    top_k: int = 0  # keep the k most likely tokens (0 = all)
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p (1.0 = all)
    seed: int | None = None  # seed of the numpy Generator made for each generate() call

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise MxportError(f"--temperature must be a finite number >= 0, found {self.temperature}")
        if self.top_k < 0:
            raise MxportError(f"--top-k must be >= 0 (0 = no limit), found {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise MxportError(f"--top-p must be in (0, 1], found {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def greedy(logits: np.ndarray) -> np.ndarray:
    """[B, V] -> [B] int64 argmax (first index on ties)."""
    return np.argmax(logits, axis=-1).astype(np.int64)


def filter_logits(logits: np.ndarray, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """[B, V] float64 -> the same with excluded tokens set to -inf (top-k first, then top-p)."""
    out = np.array(logits, dtype=np.float64, copy=True)
    vocab = out.shape[-1]
    if 0 < top_k < vocab:
        kth = np.partition(out, vocab - top_k, axis=-1)[:, vocab - top_k][:, None]  # k-th largest per row
        out[out < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(-out, axis=-1, kind="stable")  # descending
        sorted_logits = np.take_along_axis(out, order, axis=-1)
        probs = _softmax(sorted_logits)
        # Keep a token if the mass before it is below top_p (so the most likely token is always kept).
        before = np.cumsum(probs, axis=-1) - probs
        drop_sorted = before >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        out[drop] = -np.inf
    return out


def sample(logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """Choose one token per row: logits [B, V] -> ids [B] int64."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"sample expects logits [batch, vocab], found shape {logits.shape}")
    if config.greedy:
        return greedy(logits)
    scaled = logits.astype(np.float64) / config.temperature
    probs = _softmax(filter_logits(scaled, config.top_k, config.top_p))
    # Inverse-CDF draw, one uniform per row and step: the same seed and batch give the same tokens.
    u = rng.random(probs.shape[0])
    cdf = np.cumsum(probs, axis=-1)
    ids = np.array([np.searchsorted(cdf[b], u[b] * cdf[b, -1], side="right") for b in range(probs.shape[0])])
    return np.minimum(ids, probs.shape[-1] - 1).astype(np.int64)


MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs


def token_logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of `token` and its `top` most likely tokens (id, logprob; ties by id) from one
    row of logits [V] or [1, V]: a log-softmax of the logits as they are (no temperature, top-k/p or mask)."""
    row = np.asarray(logits, np.float64).reshape(-1)
    m = np.max(row)
    logp = row - (m + np.log(np.sum(np.exp(row - m))))
    k = min(top, row.shape[0])
    best = np.argpartition(-logp, k - 1)[:k] if k > 0 else np.zeros(0, np.int64)
    best = best[np.lexsort((best, -logp[best]))]  # most likely first
    return float(logp[token]), [(int(i), float(logp[i])) for i in best]


def _softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=-1, keepdims=True)
