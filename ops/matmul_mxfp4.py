"""MatMulMXFP4 (ai.mxport, version 1): A times an MXFP4 weight, transposed.

Schema
    MatMulMXFP4(A: float[..., K], blocks: uint8[N, K/32, 16], scales: uint8[N, K/32]) -> float[..., N]
    no attributes

    Y = A · Wᵀ with W = DequantizeMXFP4(blocks, scales)  [N, K]  (out-major, as Linear weights are stored)

Function body: DequantizeMXFP4 (the ai.mxport function, so functions() carries both), CastLike to A's float
type, Transpose, MatMul. Runtimes with a fused MXFP4 GEMM rewrite this node; the body is the portable meaning.
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun
from onnxscript import FLOAT, UINT8, script
from onnxscript import opset23 as op

from mxport.ops import DOMAIN, OPSET
from mxport.ops.dequantize_mxfp4 import FUNCTIONS as _DEQUANTIZE
from mxport.ops.dequantize_mxfp4 import _dequantize_mxfp4

(dequantize_mxfp4,) = _DEQUANTIZE  # the DequantizeMXFP4 function body (its module name is the kernel class)


@script(OPSET, default_opset=op)
def MatMulMXFP4(A: FLOAT, blocks: UINT8, scales: UINT8) -> FLOAT:
    """MatMulMXFP4(A float[..., K], blocks uint8[N, K/32, 16], scales uint8[N, K/32]) -> float[..., N]."""
    weight = op.CastLike(dequantize_mxfp4(blocks, scales), A)  # [N, K]
    return op.MatMul(A, op.Transpose(weight, perm=[1, 0]))  # [..., N]


def _matmul_mxfp4(a: np.ndarray, blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """NumPy kernel: A[..., K] · W[N, K]ᵀ in A's dtype."""
    if blocks.ndim != 3 or scales.ndim != 2:
        raise ValueError(
            f"{DOMAIN}.MatMulMXFP4: weight must be blocks [N, K/32, 16] and scales [N, K/32], "
            f"found {blocks.shape=} {scales.shape=}"
        )
    weight = _dequantize_mxfp4(blocks, scales)  # [N, K]
    if a.shape[-1] != weight.shape[1]:
        raise ValueError(f"{DOMAIN}.MatMulMXFP4: {a.shape=} does not end in K={weight.shape[1]} of {blocks.shape=}")
    return np.matmul(a, weight.astype(a.dtype, copy=False).T)


FUNCTIONS = (MatMulMXFP4,)  # the function body; the kernel class below takes the op's name (see dequantize_mxfp4.py)
HELPERS = ()


class MatMulMXFP4(OpRun):  # noqa: F811
    """onnx.reference kernel for ai.mxport.MatMulMXFP4."""

    op_domain = DOMAIN

    def _run(self, a, blocks, scales):
        return (_matmul_mxfp4(a, blocks, scales),)
