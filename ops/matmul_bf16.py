"""MatMulBF16 (ai.mxport, version 1): A times a bfloat16 weight, in float32.

Schema
    MatMulBF16(A: float[..., K], W: bfloat16[K, N]) -> float[..., N]
    no attributes

    Y = A · float32(W)   (every bfloat16 is exact in float32: the product is a float32 MatMul on the stored bytes)

Function body: CastLike(W, A), MatMul. Runtimes fold the Cast of a constant W once at load (ONNX Runtime: up to
its 1 GiB folding limit) and then read float32, twice the bytes; mxport's native kernel (ops/csrc, registered by
ops/native.py) reads the bf16 bytes as they are stored and converts in registers. `--dense bf16` (exporter/lower/
bf16.py) writes this op for the dense matrices of a checkpoint stored in bf16.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx.reference.op_run import OpRun
from onnxscript import BFLOAT16, FLOAT, script
from onnxscript import opset23 as op

from mxport.ops import DOMAIN, OPSET


@script(OPSET, default_opset=op)
def MatMulBF16(A: FLOAT, W: BFLOAT16) -> FLOAT:
    """MatMulBF16(A float[..., K], W bfloat16[K, N]) -> float[..., N]."""
    return op.MatMul(A, op.CastLike(W, A))


def as_float32(w: np.ndarray) -> np.ndarray:
    """bfloat16 weights (ml_dtypes, or onnx.reference's uint16-backed bfloat16) -> float32, exactly."""
    w = np.asarray(w)
    if w.dtype == ml_dtypes.bfloat16:
        return w.astype(np.float32)
    if w.dtype.itemsize == 2 and w.dtype.kind in "uV":  # raw bf16 bits
        return (w.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return w.astype(np.float32)


def _matmul_bf16(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """NumPy kernel: A[..., K] · float32(W[K, N])."""
    if w.ndim != 2 or a.shape[-1] != w.shape[0]:
        raise ValueError(f"ai.mxport.MatMulBF16: expected A[..., K] and W[K, N], found {a.shape=} {w.shape=}")
    return np.matmul(a, as_float32(w).astype(a.dtype, copy=False))


FUNCTIONS = (MatMulBF16,)
HELPERS = ()


class MatMulBF16(OpRun):  # noqa: F811
    """onnx.reference kernel for ai.mxport.MatMulBF16."""

    op_domain = DOMAIN

    def _run(self, a, w):
        return (_matmul_bf16(a, w),)
