"""MoE_2 and MoEMXFP4_2 (ai.mxport, version 1 domain): MoE / MoEMXFP4 without expert biases.

Version 2 of the MoE ops (docs/STYLE.md "Versions are new names": a new signature is a new name; MoE and MoEMXFP4
keep their meaning for the families that have expert biases, gpt-oss). Families whose experts have no bias
(Qwen3-MoE) call these: no zero bias tensors in the file, no bias Add per expert.

Schema
    MoE_2(x: float[T, H], router_logits: float[T, E], w1: float|bfloat16[E, 2I, H], w2: float|bfloat16[E, H, I])
        -> y: float[T, H]
    MoEMXFP4_2(x, router_logits, w1_blocks: uint8[E, 2I, H/32, 16], w1_scales: uint8[E, 2I, H/32],
               w2_blocks: uint8[E, H, I/32, 16], w2_scales: uint8[E, H, I/32]) -> y: float[T, H]
    Weights are out-major (rows are outputs). MoE_2's float weights may be stored as bfloat16 (or any float type):
    each chosen expert is cast to x's type after it is gathered, so a bf16 checkpoint's experts stay bf16 in the
    file and the math is float32 (exact: bf16 -> float32 is lossless).
    Attributes: exactly those of MoE (ops/moe.py): k (required), normalize_routing_weights (default 1),
    swiglu_interleaved (0), swiglu_limit (0 = no clamp), activation_alpha (1.0), activation_beta (0.0).
    Qwen3-MoE: normalize_routing_weights = norm_topk_prob, swiglu_interleaved 0 (gate rows first), limit 0,
    alpha 1, beta 0 (plain SwiGLU: silu(gate) * up).

    chosen[t] = TopK(router_logits[t], k)  (largest, sorted; ties -> lower expert index)
    y[t]      = Σ_{e in chosen[t]} weight[t, e] · W2[e] · act(W1[e] · x[t])

Function body: the MoE body's expert loop (ops/moe.py diagram) with the bias inputs gone; each chosen expert is
gathered (MoEMXFP4_2: and dequantized) once per call, and cast to x's type.
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun
from onnxscript import FLOAT, INT64, UINT8, script
from onnxscript import opset23 as op

from mxport.ops import DOMAIN, OPSET
from mxport.ops.dequantize_mxfp4 import _dequantize_mxfp4
from mxport.ops.moe import _AXIS1, _FLAT, ExpertRows, MoERouting, SwiGLUIndices, SwiGLUParams, _moe_loop
from mxport.ops.moe import dequantize_mxfp4


# ---- helper (ai.mxport, used only inside the bodies) ----------------------------------------------------------
@script(OPSET, default_opset=op)
def SwiGLUExpertNoBias(
    x: FLOAT, w1: FLOAT, w2: FLOAT, gate_idx: INT64, up_idx: INT64, limit: FLOAT, alpha: FLOAT, beta: FLOAT,
) -> FLOAT:
    """SwiGLUExpertNoBias(x[n, H], w1[2I, H], w2[H, I], gate_idx[I], up_idx[I], limit, alpha, beta) -> [n, H]."""
    h = op.Gemm(x, w1, transB=1)  # [n, 2I]
    gate = op.Min(op.Gather(h, gate_idx, axis=1), limit)  # [n, I]
    up = op.Clip(op.Gather(h, up_idx, axis=1), op.Neg(limit), limit)  # [n, I]
    act = gate * op.Sigmoid(alpha * gate) * (up + beta)
    return op.Gemm(act, w2, transB=1)  # [n, H]


# ---- MoE_2 ---------------------------------------------------------------------------------------------------
@script(OPSET, default_opset=op)
def MoE_2(
    x: FLOAT, router_logits: FLOAT, w1: FLOAT, w2: FLOAT,
    k: int, normalize_routing_weights: int = 1, swiglu_interleaved: int = 0, swiglu_limit: float = 0.0,
    activation_alpha: float = 1.0, activation_beta: float = 0.0,
) -> FLOAT:
    """MoE_2(x[T, H], router_logits[T, E], w1[E, 2I, H], w2[E, H, I]) -> y[T, H]; MoE without expert biases."""
    top_idx, top_w = MoERouting(router_logits, k=k, normalize_routing_weights=normalize_routing_weights)
    experts = op.Unique(op.Reshape(top_idx, op.Constant(value=_FLAT)), sorted=1)  # [U]
    gate_idx, up_idx = SwiGLUIndices(op.Shape(w1, start=1, end=2), swiglu_interleaved=swiglu_interleaved)
    limit, alpha, beta = SwiGLUParams(
        x, swiglu_limit=swiglu_limit, activation_alpha=activation_alpha, activation_beta=activation_beta
    )
    y = op.CastLike(op.ConstantOfShape(op.Shape(x)), x)  # [T, H] zeros
    for u in range(op.Size(experts)):
        e = op.Gather(experts, u, axis=0)
        rows, weight = ExpertRows(top_idx, top_w, e)
        y_rows = SwiGLUExpertNoBias(
            op.Gather(x, rows, axis=0), op.CastLike(op.Gather(w1, e, axis=0), x),
            op.CastLike(op.Gather(w2, e, axis=0), x), gate_idx, up_idx, limit, alpha, beta,
        )
        y = op.ScatterND(y, op.Unsqueeze(rows, op.Constant(value=_AXIS1)),
                         y_rows * op.Unsqueeze(weight, op.Constant(value=_AXIS1)), reduction="add")
    return y


# ---- MoEMXFP4_2 ----------------------------------------------------------------------------------------------
@script(OPSET, default_opset=op)
def MoEMXFP4_2(
    x: FLOAT, router_logits: FLOAT, w1_blocks: UINT8, w1_scales: UINT8, w2_blocks: UINT8, w2_scales: UINT8,
    k: int, normalize_routing_weights: int = 1, swiglu_interleaved: int = 0, swiglu_limit: float = 0.0,
    activation_alpha: float = 1.0, activation_beta: float = 0.0,
) -> FLOAT:
    """MoEMXFP4_2(x[T, H], router_logits[T, E], w1_blocks[E, 2I, H/32, 16], w1_scales[E, 2I, H/32],
    w2_blocks[E, H, I/32, 16], w2_scales[E, H, I/32]) -> y[T, H]; MoEMXFP4 without expert biases."""
    top_idx, top_w = MoERouting(router_logits, k=k, normalize_routing_weights=normalize_routing_weights)
    experts = op.Unique(op.Reshape(top_idx, op.Constant(value=_FLAT)), sorted=1)  # [U]
    gate_idx, up_idx = SwiGLUIndices(op.Shape(w1_blocks, start=1, end=2), swiglu_interleaved=swiglu_interleaved)
    limit, alpha, beta = SwiGLUParams(
        x, swiglu_limit=swiglu_limit, activation_alpha=activation_alpha, activation_beta=activation_beta
    )
    y = op.CastLike(op.ConstantOfShape(op.Shape(x)), x)  # [T, H] zeros
    for u in range(op.Size(experts)):
        e = op.Gather(experts, u, axis=0)
        rows, weight = ExpertRows(top_idx, top_w, e)
        w1 = op.CastLike(dequantize_mxfp4(op.Gather(w1_blocks, e, axis=0), op.Gather(w1_scales, e, axis=0)), x)
        w2 = op.CastLike(dequantize_mxfp4(op.Gather(w2_blocks, e, axis=0), op.Gather(w2_scales, e, axis=0)), x)
        y_rows = SwiGLUExpertNoBias(op.Gather(x, rows, axis=0), w1, w2, gate_idx, up_idx, limit, alpha, beta)
        y = op.ScatterND(y, op.Unsqueeze(rows, op.Constant(value=_AXIS1)),
                         y_rows * op.Unsqueeze(weight, op.Constant(value=_AXIS1)), reduction="add")
    return y


HELPERS = (SwiGLUExpertNoBias,)  # MoERouting, SwiGLUParams, SwiGLUIndices, ExpertRows: ops/moe.py's HELPERS


# ---- NumPy kernels -------------------------------------------------------------------------------------------
def _moe_2(x, router_logits, w1, w2, k, normalize, interleaved, limit, alpha, beta) -> np.ndarray:
    """MoE_2 kernel, float experts w1[E, 2I, H], w2[E, H, I] (any float dtype, cast to x's per chosen expert)."""
    if w1.ndim != 3 or w2.ndim != 3 or w1.shape[0] != router_logits.shape[-1] or w2.shape[0] != w1.shape[0]:
        raise ValueError(f"{DOMAIN}.MoE_2: expected w1[E, 2I, H], w2[E, H, I] with E={router_logits.shape[-1]}, "
                         f"found {w1.shape=} {w2.shape=}")
    return _moe_loop(x, router_logits, lambda e: (w1[e].astype(x.dtype), w2[e].astype(x.dtype)), None, None,
                     k, normalize, interleaved, limit, alpha, beta)


def _moe_mxfp4_2(x, router_logits, w1_blocks, w1_scales, w2_blocks, w2_scales, k, normalize, interleaved, limit,
                 alpha, beta) -> np.ndarray:
    """MoEMXFP4_2 kernel: dequantizes only the chosen experts, each once."""
    if w1_blocks.ndim != 4 or w2_blocks.ndim != 4 or w1_blocks.shape[0] != router_logits.shape[-1]:
        raise ValueError(f"{DOMAIN}.MoEMXFP4_2: expected w1_blocks[E, 2I, H/32, 16], w2_blocks[E, H, I/32, 16] "
                         f"with E={router_logits.shape[-1]}, found {w1_blocks.shape=} {w2_blocks.shape=}")

    def expert_weights(e):
        return (_dequantize_mxfp4(w1_blocks[e], w1_scales[e]).astype(x.dtype),
                _dequantize_mxfp4(w2_blocks[e], w2_scales[e]).astype(x.dtype))

    return _moe_loop(x, router_logits, expert_weights, None, None, k, normalize, interleaved, limit, alpha, beta)


FUNCTIONS = (MoE_2, MoEMXFP4_2)  # the function bodies; the kernel classes below take the op names


class MoE_2(OpRun):  # noqa: F811, N801
    """onnx.reference kernel for ai.mxport.MoE_2."""

    op_domain = DOMAIN

    def _run(self, x, router_logits, w1, w2, k=None, normalize_routing_weights=1, swiglu_interleaved=0,
             swiglu_limit=0.0, activation_alpha=1.0, activation_beta=0.0):
        return (_moe_2(x, router_logits, w1, w2, int(k), int(normalize_routing_weights), int(swiglu_interleaved),
                       float(swiglu_limit), float(activation_alpha), float(activation_beta)),)


class MoEMXFP4_2(OpRun):  # noqa: F811, N801
    """onnx.reference kernel for ai.mxport.MoEMXFP4_2."""

    op_domain = DOMAIN

    def _run(self, x, router_logits, w1_blocks, w1_scales, w2_blocks, w2_scales, k=None, normalize_routing_weights=1,
             swiglu_interleaved=0, swiglu_limit=0.0, activation_alpha=1.0, activation_beta=0.0):
        return (_moe_mxfp4_2(x, router_logits, w1_blocks, w1_scales, w2_blocks, w2_scales, int(k),
                             int(normalize_routing_weights), int(swiglu_interleaved), float(swiglu_limit),
                             float(activation_alpha), float(activation_beta)),)
