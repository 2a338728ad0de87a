"""Checks shared by the family tests: relative error, the presents of one call, cached decoding against one
full forward pass."""

from __future__ import annotations

import numpy as np

from mxport.contract.io import make_feeds


def rel_err(a, b) -> float:
    """max|a - b| / max|b|"""
    return float(np.abs(a - b).max() / np.abs(b).max())


def ids_for(vocab: int, shape, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, vocab, shape)


def presents(cfg, out):
    """[(key, value)] per layer from one call's outputs: the next call's past."""
    return [(out[f"present.{i}.key"], out[f"present.{i}.value"]) for i in range(cfg.num_hidden_layers)]


def cached_decoding_error(runner, cfg) -> float:
    """Relative error of a 6-token prefill plus 5 cached one-token steps against one 11-token forward pass
    (2 rows)."""
    ids = np.random.default_rng(4).integers(4, cfg.vocab_size, (2, 11))
    full = runner.infer(make_feeds(ids, cfg=cfg))["logits"]
    out = runner.infer(make_feeds(ids[:, :6], cfg=cfg))
    steps = [out["logits"]]
    for t in range(6, 11):
        out = runner.infer(make_feeds(ids[:, t : t + 1], np.ones((2, t + 1), np.int64), presents(cfg, out), cfg=cfg))
        steps.append(out["logits"])
    return rel_err(np.concatenate(steps, axis=1), full)
