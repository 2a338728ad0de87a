"""Block quantizers for ONNX Runtime's MatMulNBits and QMoE: the one home of the numbers a quantized export holds.

    BLOCK                                32 values along K per scale (MatMulNBits and QMoE block_size)
    int8_quantize(w) / int8_dequantize   symmetric, scale absmax/127, stored q + 128              [..., K]
    int4_quantize(w) / int4_dequantize   symmetric, scale per block minimising its squared error (ops/int4),
                                         stored q + 8, two per byte, low nibble first               [..., K/2]
    int4_from_mxfp4(blocks, scales)      int4_quantize(mxfp4.decode(...)), fast, on MXFP4 experts
    int8_exact(blocks, scales)           MXFP4 -> 8 bit, exact (ops.mxfp4.exact_int8)
    quantize(w, bits) / dequantize(...)  either width, by `bits`

The exporter writes these (exporter/lower/dense.py for MatMulNBits, exporter/lower/moe.py for QMoE) and the NumPy
reference reads them back (runtime/oracle/quantized.py), so a lossy export is judged on exactly its own numbers.
An all-zero block is given absmax 1 (scale 1/127 for 8 bits; ops/int4 does the same for 4): any scale represents it
exactly, and both quantizers, the dense one and the experts' one, now agree on it. Pure NumPy.
"""

from __future__ import annotations

import numpy as np

from mxport.ops import int4, mxfp4

BLOCK = 32


def int8_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float [..., K] -> (uint8 [..., K] = q + 128, float32 scales [..., K/32]): symmetric per block of 32, scale
    absmax/127, round half to even (lossy; MXFP4 experts take int8_exact instead)."""
    blocks = np.asarray(w, dtype=np.float32).reshape(w.shape[:-1] + (-1, BLOCK))
    amax = np.abs(blocks).max(axis=-1)
    scale = (np.where(amax > 0, amax, np.float32(1)) / np.float32(127)).astype(np.float32)
    q = np.clip(np.rint(blocks / scale[..., None]), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8).reshape(w.shape), scale


def int8_dequantize(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """uint8 q + 128 [..., K] and float32 scales [..., K/32] -> float32 [..., K]."""
    q = packed.astype(np.int16) - 128
    blocks = q.reshape(q.shape[:-1] + (-1, BLOCK)).astype(np.float32) * scales[..., None]
    return blocks.reshape(q.shape)


def int8_exact(blocks: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MXFP4 [E,N,K/32,16] + [E,N,K/32] -> QMoE 8-bit (uint8 [E,N,K] = q+128, float32 scales [E,N,K/32]), exact."""
    q, scale = mxfp4.exact_int8(blocks, scales)
    return (q.astype(np.int16) + 128).astype(np.uint8), scale


def int4_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float [..., K] -> (uint8 [..., K/2] packed q+8 low nibble first, float32 scales [..., K/32]).

    Symmetric int4 per block of 32 with the scale absmax/t, t from ops/int4.SCALE_DIVISORS, chosen per block to
    minimise the block's squared error (round-to-nearest for each candidate: ops/int4.best_scales).
    """
    shape = w.shape
    blocks = np.asarray(w, dtype=np.float32).reshape(-1, BLOCK)  # (M, 32)
    packed = np.empty((len(blocks), BLOCK // 2), dtype=np.uint8)
    scales = np.empty(len(blocks), dtype=np.float32)
    chunk = 1 << 14  # blocks per step: the candidate search stays in cache
    for lo in range(0, len(blocks), chunk):
        b = blocks[lo : lo + chunk]
        best_scale = int4.best_scales(b)
        q = np.clip(np.rint(b / best_scale[:, None]), int4.Q_MIN, int4.Q_MAX).astype(np.int16) + int4.ZERO
        u = q.astype(np.uint8)
        packed[lo : lo + len(b)] = (u[:, 0::2] & 0x0F) | (u[:, 1::2] << 4)
        scales[lo : lo + len(b)] = best_scale
    return packed.reshape(shape[:-1] + (shape[-1] // 2,)), scales.reshape(shape[:-1] + (shape[-1] // BLOCK,))


def int4_dequantize(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Inverse of int4_quantize: uint8 [..., K/2] and float32 scales [..., K/32] -> float32 [..., K]."""
    q = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), dtype=np.int16)
    q[..., 0::2] = packed & 0x0F
    q[..., 1::2] = packed >> 4
    q -= int4.ZERO
    blocks = q.reshape(q.shape[:-1] + (-1, BLOCK)).astype(np.float32) * scales[..., None]
    return blocks.reshape(q.shape)


def quantize(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """int4_quantize or int8_quantize of float [..., K], by `bits` (4 or 8)."""
    return int4_quantize(w) if bits == 4 else int8_quantize(w)


def dequantize(packed: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """The float32 values quantize(w, bits) holds."""
    return int4_dequantize(packed, scales) if bits == 4 else int8_dequantize(packed, scales)


def int4_from_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MXFP4 [..., NB, 16] + [..., NB] -> the same result as int4_quantize(decode(...)), fast.

    A block's values are E2M1 code values times 2^X, so its best int4 scale (relative to 2^X) depends only on its
    code histogram and its largest magnitude: every candidate's squared error is hist @ table, and the int4 code of
    an element is a table lookup. One expert tensor of gpt-oss-20b takes seconds instead of minutes.
    """
    mxfp4.check_shapes(blocks, scales)
    lead = scales.shape  # [..., NB]
    flat_blocks = blocks.reshape(-1, mxfp4.BYTES_PER_BLOCK)  # (M, 16)
    flat_scales = scales.reshape(-1)
    values = mxfp4.FP4_VALUES  # code -> value in units of 2^X; |value| ranks as code & 7 (0, .5, 1, ... 6)
    mags = np.abs(values[:8])
    # tables over (largest magnitude a, code c, candidate t): int4 code and squared error, in units of 2^X
    s = (np.where(mags > 0, mags, 1.0)[:, None, None] / int4.SCALE_DIVISORS[None, None, :]).astype(np.float32)
    q_table = np.clip(np.rint(values[None, :, None] / s), int4.Q_MIN, int4.Q_MAX)  # (8, 16, T)
    e_table = np.square(q_table * s - values[None, :, None]).astype(np.float32)  # (8, 16, T)
    packed = np.empty((len(flat_blocks), mxfp4.BYTES_PER_BLOCK), dtype=np.uint8)
    scale = np.empty(len(flat_blocks), dtype=np.float32)
    chunk = 1 << 15  # blocks per step: bounded temporaries, cache-friendly
    for lo in range(0, len(flat_blocks), chunk):
        codes = mxfp4.unpack_codes(flat_blocks[lo : lo + chunk])  # (n, 32)
        n = len(codes)
        a_index = (codes & 7).max(axis=1)  # index of the block's largest magnitude
        hist = np.bincount((np.arange(n)[:, None] * 16 + codes).ravel(), minlength=n * 16).reshape(n, 16)
        best_t = np.empty(n, dtype=np.int64)
        for a in np.unique(a_index):
            rows = a_index == a
            best_t[rows] = np.argmin(hist[rows].astype(np.float32) @ e_table[a], axis=1)  # first minimum
        q_rows = q_table[a_index, :, best_t]  # (n, 16): int4 code of each E2M1 code in this block
        q = np.take_along_axis(q_rows, codes.astype(np.intp), axis=1).astype(np.int16) + int4.ZERO  # (n, 32)
        u = q.astype(np.uint8)
        packed[lo : lo + n] = (u[:, 0::2] & 0x0F) | (u[:, 1::2] << 4)
        exponent = flat_scales[lo : lo + n].astype(np.int32) - mxfp4.E8M0_BIAS
        scale[lo : lo + n] = np.ldexp(s[a_index, 0, best_t], exponent)
    return packed.reshape(lead[:-1] + (-1,)), scale.reshape(lead)
