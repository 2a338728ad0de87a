"""LinearQ4 (ai.mxport, version 1): A times 4-bit weights in super-blocks, stored as a Linear layer stores them.

Schema
    LinearQ4(A: float[..., K], W: uint8[N, S, 136], D: float[N, S]) -> float[..., N]      S = ceil(K / 256)
    no attributes (K is A's last dimension)

    weight row n is S super-blocks of 256 values; super-block s is 8 sub-blocks of 32:
        W[n, s, 0:8]    sub-scales sc[j] (uint8), j = 0..7
        W[n, s, 8:136]  4 chunks of 32 bytes; byte i of chunk c holds q of value 64c + i (low nibble) and of value
                        64c + 32 + i (high nibble): sub-blocks 2c and 2c + 1
        value(n, 256 s + 32 j + i) = D[n, s] · sc[j] · (q − 8),  q in 0..15
    values at K and beyond (the last super-block's padding) are zero and ignored.

    Y = A · Wᵀ (W decoded to float32; every decoded value is exact in float32).

Why this layout (docs/BENCHMARKS.md, "int4 against genai int4"): a decode step of ORT's MatMulNBits (4 bits, a
float32 scale per 32) is bound by its arithmetic on this class of CPU, two integer multiplies and a float
conversion per 32 weights. Here the sub-block scales are integers, so the native kernel sums a whole super-block
in int32 (maddubs, then madd by the sub-scales) and converts once per 256; the zero point is one small dot per
super-block with the activations' block sums. Each row of W is one sequential read (one stream per thread), with
the small D beside it: 4.375 bits per weight.

Kernels: mxport's native kernel (ops/csrc/mx_q4.c) quantizes each row of A to int8 per super-block (scale
max|a| / 127, round half to even: `quantize_activations`), as ORT's MatMulNBits does at accuracy_level 4; the
NumPy kernel below computes that same product (integer sums, float32 scales). The function body decodes W and
runs a float32 MatMul on A as given, so a host without mxport's kernels gets float activations: slightly
different (more accurate) numbers, at float32 speed. `--dense q4` (exporter/lower/q4.py) writes this op.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper
from onnx.reference.op_run import OpRun
from onnxscript import FLOAT, UINT8, script
from onnxscript import opset23 as op

from mxport.ops import DOMAIN, OPSET
from mxport.ops.int4 import Q_MAX, Q_MIN, ZERO, best_scales

SUPER = 256  # values per super-block
SUB = 32  # values per sub-block (one uint8 scale each)
SUBS = SUPER // SUB
BYTES = SUBS + SUPER // 2  # 136 bytes per super-block

_BYTES = np.arange(256, dtype=np.uint8)
# uint8 byte -> (low nibble − 8, high nibble − 8) as float32 [256, 2]: one Gather per byte (see DequantizeMXFP4)
_PAIR_TABLE = numpy_helper.from_array(
    np.stack([(_BYTES & 15).astype(np.float32) - ZERO, (_BYTES >> 4).astype(np.float32) - ZERO], axis=1), "q4_pairs")
_I = {name: numpy_helper.from_array(np.array(v, np.int64), name) for name, v in
      (("zero", [0]), ("subs", [SUBS]), ("bytes", [BYTES]), ("two", [2]), ("one", [1]), ("minus1", [-1]),
       ("chunks", [0, 0, 4, SUB, 2]), ("blocks", [0, 0, SUBS, SUB]), ("rows", [0, -1]), ("last", [-1]))}


@script(OPSET, default_opset=op)
def LinearQ4(A: FLOAT, W: UINT8, D: FLOAT) -> FLOAT:
    """LinearQ4(A float[..., K], W uint8[N, S, 136], D float[N, S]) -> float[..., N]."""
    two = op.Constant(value=_I["two"])
    scales = op.Cast(op.Slice(W, op.Constant(value=_I["zero"]), op.Constant(value=_I["subs"]), two), to=1)  # [N,S,8]
    nibbles = op.Slice(W, op.Constant(value=_I["subs"]), op.Constant(value=_I["bytes"]), two)  # [N, S, 128]
    pairs = op.Gather(op.Constant(value=_PAIR_TABLE), op.Cast(nibbles, to=6))  # [N, S, 128, 2]: (low, high) − 8
    pairs = op.Reshape(pairs, op.Constant(value=_I["chunks"]))  # [N, S, 4 chunks, 32, low|high]
    q = op.Reshape(op.Transpose(pairs, perm=[0, 1, 2, 4, 3]), op.Constant(value=_I["blocks"]))  # [N, S, 8, 32]
    scale = op.Mul(scales, op.Unsqueeze(D, op.Constant(value=_I["last"])))  # [N, S, 8]
    w = op.Mul(q, op.Unsqueeze(scale, op.Constant(value=_I["last"])))  # [N, S, 8, 32]
    w = op.Reshape(w, op.Constant(value=_I["rows"]))  # [N, S·256]
    k = op.Shape(A, start=-1)
    w = op.Slice(w, op.Constant(value=_I["zero"]), k, op.Constant(value=_I["one"]))  # [N, K]
    return op.MatMul(A, op.Transpose(w, perm=[1, 0]))


# ---- the format (pure NumPy): used by the exporter, the NumPy kernel and the tests -------------------------------
def super_blocks(k: int) -> int:
    return -(-k // SUPER)


QUANTIZE_VALUES = 1 << 19  # values quantized per step (2 MB of float32): the candidate search stays in cache


def quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float W [N, K] -> (uint8 [N, S, 136], float32 D [N, S]).

    Each sub-block of 32 gets the scale of ops/int4.best_scales (absmax/t, the least squared error); a
    super-block's D is its largest sub-block scale / 255 and each sub-scale is round(scale / D) (1..255, 0 for an
    all-zero sub-block); the values are then rounded to nearest on D·sc and clipped to −8..7. Rows are quantized
    a few at a time: memory beyond W and the result stays a few MB."""
    n, k = w.shape
    s = super_blocks(k)
    out, d = np.empty((n, s, BYTES), np.uint8), np.empty((n, s), np.float32)
    step = max(1, QUANTIZE_VALUES // max(1, s * SUPER))
    for r0 in range(0, n, step):
        out[r0 : r0 + step], d[r0 : r0 + step] = _quantize_rows(np.asarray(w[r0 : r0 + step], dtype=np.float32))
    return out, d


def _quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, k = w.shape
    s = super_blocks(k)
    padded = np.zeros((n, s * SUPER), np.float32)
    padded[:, :k] = w
    blocks = padded.reshape(n, s, SUBS, SUB)
    amax = np.abs(blocks).max(axis=-1)  # [N, S, 8]
    best = np.where(amax > 0, best_scales(blocks), 0.0).astype(np.float32)  # the int4 search (ops/int4.py)
    d = (best.max(axis=-1) / np.float32(255)).astype(np.float32)  # [N, S]
    sub = np.where(d[..., None] > 0, np.rint(best / np.where(d > 0, d, 1.0)[..., None]), 0)
    sub = np.clip(sub, np.where(amax > 0, 1, 0), 255).astype(np.uint8)
    step = (d[..., None] * sub.astype(np.float32)).astype(np.float32)  # [N, S, 8]
    q = np.clip(np.rint(blocks / np.where(step > 0, step, 1.0)[..., None]), Q_MIN, Q_MAX)
    q = np.where(step[..., None] > 0, q, 0).astype(np.int16) + ZERO  # [N, S, 8, 32], 0..15
    chunks = q.astype(np.uint8).reshape(n, s, 4, 2, SUB)
    out = np.empty((n, s, BYTES), np.uint8)
    out[..., :SUBS] = sub
    out[..., SUBS:] = (chunks[:, :, :, 0] | (chunks[:, :, :, 1] << 4)).reshape(n, s, SUPER // 2)
    return out, d


def codes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 W [N, S, 136] -> (q − 8 as int8 [N, S, 8, 32], sub-scales uint8 [N, S, 8])."""
    w = np.asarray(w, dtype=np.uint8)
    nib = w[..., SUBS:].reshape(w.shape[:2] + (4, SUB))
    q = np.stack([nib & 15, nib >> 4], axis=3).reshape(w.shape[:2] + (SUBS, SUB))
    return (q.astype(np.int8) - ZERO), w[..., :SUBS]


def dequantize(w: np.ndarray, d: np.ndarray, k: int) -> np.ndarray:
    """uint8 W [N, S, 136] + D [N, S] -> float32 [N, K] (the values the function body computes)."""
    q, sub = codes(w)
    scale = (np.asarray(d, np.float32)[..., None] * sub.astype(np.float32)).astype(np.float32)
    return (q.astype(np.float32) * scale[..., None]).reshape(w.shape[0], -1)[:, :k]


def quantize_activations(a: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 A [M, K] -> (int8 [M, S, 256] zero-padded, float32 scales [M, S]): per super-block, scale
    max|a| / 127 and round(a · (1 / scale)) half to even, in float32 (the native kernel's arithmetic). A NaN or
    inf makes its super-block's scale NaN or inf (so the product is too, as in float32) and quantizes to 0."""
    a = np.asarray(a, dtype=np.float32)
    m, k = a.shape
    padded = np.zeros((m, s * SUPER), np.float32)
    padded[:, :k] = a
    blocks = padded.reshape(m, s, SUPER)
    with np.errstate(invalid="ignore"):
        scale = (np.abs(blocks).max(axis=-1) / np.float32(127)).astype(np.float32)  # NaN / inf propagate
        ok = np.isfinite(scale) & (scale > 0)
        inv = np.where(ok, np.float32(1) / np.where(ok, scale, 1), 0).astype(np.float32)
        q = np.rint(np.where(np.isfinite(blocks), blocks, 0) * inv[..., None])
    return q.astype(np.int8), scale


def _linear_q4(a: np.ndarray, w: np.ndarray, d: np.ndarray) -> np.ndarray:
    """NumPy kernel: the native kernel's product (int8 activations per super-block, exact integer sums)."""
    if w.ndim != 3 or w.shape[2] != BYTES or d.shape != w.shape[:2] or super_blocks(a.shape[-1]) != w.shape[1]:
        raise ValueError(f"ai.mxport.LinearQ4: expected A[..., K], W[N, ceil(K/256), {BYTES}] and D[N, ceil(K/256)], "
                         f"found {a.shape=} {w.shape=} {d.shape=}")
    lead, k = a.shape[:-1], a.shape[-1]
    n, s = w.shape[:2]
    qa, da = quantize_activations(a.reshape(-1, k), s)  # [M, S, 256], [M, S]
    q, sub = codes(w)
    # integer sum per (m, n, s): Σ_j sc[j] Σ_i q[j, i] qa[j, i]; every partial fits float64 exactly
    wq = (q.astype(np.float64) * sub.astype(np.float64)[..., None]).reshape(n, s, SUPER)
    isum = np.einsum("msk,nsk->mns", qa.astype(np.float64), wq)
    scale = (d[None, :, :].astype(np.float32) * da[:, None, :]).astype(np.float32)  # float32, as the kernel
    with np.errstate(invalid="ignore"):  # inf · 0 = NaN for a non-finite activation, as in float32 math
        y = (scale.astype(np.float64) * isum).sum(axis=-1)
    return y.astype(np.float32).reshape(lead + (n,))


FUNCTIONS = (LinearQ4,)
HELPERS = ()


class LinearQ4(OpRun):  # noqa: F811
    """onnx.reference kernel for ai.mxport.LinearQ4."""

    op_domain = DOMAIN

    def _run(self, a, w, d):
        return (_linear_q4(a, w, d),)
