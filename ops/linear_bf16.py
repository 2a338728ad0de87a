"""LinearBF16 (ai.mxport, version 1): A times a bfloat16 weight stored as a Linear layer stores it, in float32.

Schema
    LinearBF16(A: float[..., K], W: bfloat16[N, K]) -> float[..., N]
    no attributes

    Y = A · float32(W)ᵀ   (every bfloat16 is exact in float32: the product is float32 math on the stored bytes)

W is [out, in]: the layout of a checkpoint's Linear weight (torch.nn.Linear, safetensors) and of a tied head's
embedding table [V, H], so both are used as stored, with no transposed copy.

Function body: CastLike(W, A), Transpose, MatMul. Runtimes fold the Cast and Transpose of a constant W once at
load (ONNX Runtime: up to its 1 GiB folding limit) and then read float32, twice the bytes; mxport's native kernel
(ops/csrc, registered by ops/native.py) reads the bf16 bytes as stored and converts in registers: one sequential
read of W per decode step. `--dense bfloat16` (exporter/lower/bf16.py) writes this op for the dense matrices of a
checkpoint stored in bf16.

It replaces MatMulBF16 (W [K, N]), which earlier exports carry with its function body: they still run, through
that body, at float32 speed.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx.reference.op_run import OpRun
from onnxscript import BFLOAT16, FLOAT, script
from onnxscript import opset23 as op

from mxport.ops import DOMAIN, OPSET


@script(OPSET, default_opset=op)
def LinearBF16(A: FLOAT, W: BFLOAT16) -> FLOAT:
    """LinearBF16(A float[..., K], W bfloat16[N, K]) -> float[..., N]."""
    return op.MatMul(A, op.Transpose(op.CastLike(W, A), perm=[1, 0]))


def as_float32(w: np.ndarray) -> np.ndarray:
    """bfloat16 weights (ml_dtypes, or onnx.reference's uint16-backed bfloat16) -> float32, exactly."""
    w = np.asarray(w)
    if w.dtype == ml_dtypes.bfloat16:
        return w.astype(np.float32)
    if w.dtype.itemsize == 2 and w.dtype.kind in "uV":  # raw bf16 bits
        return (w.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return w.astype(np.float32)


def _linear_bf16(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """NumPy kernel: A[..., K] · float32(W[N, K])ᵀ."""
    if w.ndim != 2 or a.shape[-1] != w.shape[1]:
        raise ValueError(f"ai.mxport.LinearBF16: expected A[..., K] and W[N, K], found {a.shape=} {w.shape=}")
    return np.matmul(a, as_float32(w).astype(a.dtype, copy=False).T)


FUNCTIONS = (LinearBF16,)
HELPERS = ()


class LinearBF16(OpRun):  # noqa: F811
    """onnx.reference kernel for ai.mxport.LinearBF16."""

    op_domain = DOMAIN

    def _run(self, a, w):
        return (_linear_bf16(a, w),)
