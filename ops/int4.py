"""Symmetric int4 block scales: the one search behind every 4-bit weight mxport writes.

    Q_MIN, Q_MAX, ZERO   values −8..7, stored q + 8 (a nibble)
    SCALE_DIVISORS       candidate divisors t of a block's absmax
    best_scales(blocks)  per block (last axis), the scale absmax/t whose round-to-nearest has the least squared error

Used by MatMulNBits and QMoE int4 (exporter/lower/moe.int4_quantize, int4_from_mxfp4's tables) and by LinearQ4's
sub-blocks (ops/linear_q4.py). Pure NumPy and light: no onnx or onnxscript import.
"""

from __future__ import annotations

import numpy as np

Q_MIN, Q_MAX, ZERO = -8, 7, 8
SCALE_DIVISORS = np.linspace(4.0, 8.0, 17)


def best_scales(blocks: np.ndarray) -> np.ndarray:
    """float32 blocks [..., B] -> float32 scales [...]: absmax/t for the t in SCALE_DIVISORS whose
    clip(round(x / scale), −8, 7) · scale is closest to the block (squared error; the first t wins a tie). An
    all-zero block is given absmax 1 (any scale represents it exactly)."""
    amax = np.abs(blocks).max(axis=-1)
    amax = np.where(amax > 0, amax, 1.0).astype(np.float32)
    best_err = np.full(amax.shape, np.inf, dtype=np.float32)
    best = amax / Q_MAX
    for t in SCALE_DIVISORS:
        sc = (amax / np.float32(t)).astype(np.float32)
        q = np.clip(np.rint(blocks / sc[..., None]), Q_MIN, Q_MAX)
        err = np.square(q * sc[..., None] - blocks).sum(axis=-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, sc, best)
    return best
