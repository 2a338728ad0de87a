"""MoE and MoEMXFP4 (ai.mxport, version 1): top-k routed SwiGLU experts, float or MXFP4 weights.

Schema
    MoE(x: float[T, H], router_logits: float[T, E], w1: float[E, 2I, H], b1: float[E, 2I],
        w2: float[E, H, I], b2: float[E, H]) -> y: float[T, H]
    MoEMXFP4(x, router_logits, w1_blocks: uint8[E, 2I, H/32, 16], w1_scales: uint8[E, 2I, H/32], b1,
             w2_blocks: uint8[E, H, I/32, 16], w2_scales: uint8[E, H, I/32], b2) -> y: float[T, H]
    Weights are out-major (rows are outputs). Attributes (both ops):
      k                          experts per token (required)
      normalize_routing_weights  1: softmax of the k chosen logits (gpt-oss, Qwen3-MoE with norm_topk_prob)
                                 0: softmax over all E, the chosen probabilities unnormalised      default 1
      swiglu_interleaved         1: gate = h[0::2], up = h[1::2]; 0: gate = h[:I], up = h[I:]         default 0
      swiglu_limit               0: no clamp; else gate = min(gate, limit), up = clip(up, ±limit)      default 0
                                 (negative is invalid: the kernel raises, the body treats it as 0)
      activation_alpha, _beta    act = gate * sigmoid(alpha * gate) * (up + beta)            default 1.0, 0.0
                                 (gpt-oss: interleaved, limit 7, alpha 1.702, beta 1; plain SwiGLU: 1, 0)

    chosen[t] = TopK(router_logits[t], k)  (largest, sorted; ties -> lower expert index)
    y[t]      = Σ_{e in chosen[t]} weight[t, e] · (W2[e] · act(W1[e] · x[t] + b1[e]) + b2[e])

Function body: each chosen expert is gathered (and, for MoEMXFP4, dequantized) once per call, never per token:

    router_logits ─ MoERouting ─► top_idx [T, k], top_w [T, k]
                                    │ Unique(top_idx) ─► experts [U]   (U <= min(E, T*k))
    y = 0 [T, H] ── Loop u in 0..U-1, e = experts[u] ──────────────────────────────────────────────────────┐
    │   hit   = top_idx == e                    [T, k]  (TopK indices are distinct: one hit per row at most)  │
    │   rows  = NonZero(any(hit))               [n]     tokens that chose e                                   │
    │   w_e   = Σ_k where(hit, top_w, 0)[rows]  [n]                                                           │
    │   W1_e, W2_e = w1[e], w2[e]   (MoEMXFP4: DequantizeMXFP4(blocks[e], scales[e]))                          │
    │   y_rows = SwiGLUExpert(x[rows], W1_e, b1[e], W2_e, b2[e]) * w_e    [n, H]                              │
    └── y = ScatterND(y, rows, y_rows, reduction=add) ◄─────────────────────────────────────────────────────┘

Attributes become tensors before the Loop (Constant with ref_attr, in SwiGLUParams / SwiGLUIndices / MoERouting),
so the Loop body only references outer-scope values and computes nothing per iteration that does not depend on
the expert. (ORT 1.32 and onnx.reference 1.23 both also accept a ref_attr inside a Loop body in a function,
tried; onnx.reference needs the Loop's `cond` input spelled out, see ops/__init__.py.)
Prefill touches U experts, decode (T=1) touches k: the graph never materialises all E dequantized experts.
The per-expert sums run in expert-index order, not top-k rank order: float32 results differ from a per-token
loop only by summation order (~1e-7 relative).
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper
from onnx.reference.op_run import OpRun
from onnxscript import FLOAT, INT64, UINT8, script
from onnxscript import opset23 as op

from mxport.ops import DOMAIN, OPSET
from mxport.ops.dequantize_mxfp4 import FUNCTIONS as _DEQUANTIZE
from mxport.ops.dequantize_mxfp4 import _dequantize_mxfp4

(dequantize_mxfp4,) = _DEQUANTIZE  # the DequantizeMXFP4 function body (its module name is the kernel class)

_AXIS1 = numpy_helper.from_array(np.array([1], np.int64))
_SCALAR = numpy_helper.from_array(np.zeros(0, np.int64))  # Reshape target shape [] (a scalar)
_FLAT = numpy_helper.from_array(np.array([-1], np.int64))
_ZERO_I = numpy_helper.from_array(np.array(0, np.int64))
_ONE_I = numpy_helper.from_array(np.array(1, np.int64))
_TWO_I = numpy_helper.from_array(np.array(2, np.int64))
_ZERO_F = numpy_helper.from_array(np.array(0.0, np.float32))
_INF_F = numpy_helper.from_array(np.array(np.inf, np.float32))


# ---- helper functions (ai.mxport, used only inside the MoE bodies) -------------------------------------------
@script(OPSET, default_opset=op)
def MoERouting(router_logits: FLOAT, k: int, normalize_routing_weights: int):
    """MoERouting(router_logits[T, E]) -> (top_idx int64[T, k], top_w float[T, k]); attributes as in MoE."""
    top_logits, top_idx = op.TopK(
        router_logits, op.Reshape(op.Constant(value_int=k), op.Constant(value=_FLAT)), axis=-1, largest=1, sorted=1
    )
    chosen_softmax = op.Softmax(top_logits, axis=-1)  # normalize_routing_weights=1
    full_softmax = op.GatherElements(op.Softmax(router_logits, axis=-1), top_idx, axis=1)  # =0
    normalize = op.Cast(op.Constant(value_int=normalize_routing_weights), to=9)  # to=BOOL
    top_w = op.Where(normalize, chosen_softmax, full_softmax)
    return top_idx, top_w


@script(OPSET, default_opset=op)
def SwiGLUExpert(
    x: FLOAT, w1: FLOAT, b1: FLOAT, w2: FLOAT, b2: FLOAT, gate_idx: INT64, up_idx: INT64, limit: FLOAT,
    alpha: FLOAT, beta: FLOAT,
) -> FLOAT:
    """SwiGLUExpert(x[n, H], w1[2I, H], b1[2I], w2[H, I], b2[H], gate_idx[I], up_idx[I], limit, alpha, beta) -> [n, H].

    limit = +inf means no clamp; gate_idx / up_idx select the interleaved or the split halves of h.
    """
    h = op.Gemm(x, w1, b1, transB=1)  # [n, 2I]
    gate = op.Min(op.Gather(h, gate_idx, axis=1), limit)  # [n, I]
    up = op.Clip(op.Gather(h, up_idx, axis=1), op.Neg(limit), limit)  # [n, I]
    act = gate * op.Sigmoid(alpha * gate) * (up + beta)
    return op.Gemm(act, w2, b2, transB=1)  # [n, H]


@script(OPSET, default_opset=op)
def SwiGLUParams(x: FLOAT, swiglu_limit: float, activation_alpha: float, activation_beta: float):
    """SwiGLUParams(x) -> (limit, alpha, beta) as scalars of x's type; limit 0 (no clamp) becomes +inf."""
    limit = op.CastLike(op.Constant(value_float=swiglu_limit), x)
    no_clamp = op.LessOrEqual(limit, op.CastLike(op.Constant(value=_ZERO_F), x))
    limit = op.Where(no_clamp, op.CastLike(op.Constant(value=_INF_F), x), limit)
    alpha = op.CastLike(op.Constant(value_float=activation_alpha), x)
    beta = op.CastLike(op.Constant(value_float=activation_beta), x)
    return limit, alpha, beta


@script(OPSET, default_opset=op)
def SwiGLUIndices(two_i: INT64, swiglu_interleaved: int):
    """SwiGLUIndices(2I as int64[1] or scalar) -> (gate_idx int64[I], up_idx int64[I]) for the interleaved or split layout."""
    one = op.Constant(value=_ONE_I)
    two = op.Constant(value=_TWO_I)
    zero = op.Constant(value=_ZERO_I)
    two_i = op.Reshape(two_i, op.Constant(value=_SCALAR))  # Range takes scalars
    half = op.Div(two_i, two)
    interleaved = op.Cast(op.Constant(value_int=swiglu_interleaved), to=9)  # to=BOOL
    gate_idx = op.Where(interleaved, op.Range(zero, two_i, two), op.Range(zero, half, one))
    up_idx = op.Add(gate_idx, op.Where(interleaved, one, half))
    return gate_idx, up_idx


@script(OPSET, default_opset=op)
def ExpertRows(top_idx: INT64, top_w: FLOAT, expert: INT64):
    """ExpertRows(top_idx[T, k], top_w[T, k], expert scalar) -> (rows int64[n], weight float[n]): who chose it."""
    hit = op.Equal(top_idx, expert)  # [T, k]
    chose = op.ReduceMax(op.Cast(hit, to=7), op.Constant(value=_AXIS1), keepdims=0)  # to=INT64; [T]
    rows = op.Reshape(op.NonZero(chose), op.Constant(value=_FLAT))  # [n]
    weight = op.ReduceSum(op.Where(hit, top_w, op.CastLike(op.Constant(value=_ZERO_F), top_w)),
                          op.Constant(value=_AXIS1), keepdims=0)  # [T]
    return rows, op.Gather(weight, rows, axis=0)


# ---- MoE -----------------------------------------------------------------------------------------------------
@script(OPSET, default_opset=op)
def MoE(
    x: FLOAT, router_logits: FLOAT, w1: FLOAT, b1: FLOAT, w2: FLOAT, b2: FLOAT,
    k: int, normalize_routing_weights: int = 1, swiglu_interleaved: int = 0, swiglu_limit: float = 0.0,
    activation_alpha: float = 1.0, activation_beta: float = 0.0,
) -> FLOAT:
    """MoE(x[T, H], router_logits[T, E], w1[E, 2I, H], b1[E, 2I], w2[E, H, I], b2[E, H]) -> y[T, H]."""
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
        y_rows = SwiGLUExpert(
            op.Gather(x, rows, axis=0), op.Gather(w1, e, axis=0), op.Gather(b1, e, axis=0),
            op.Gather(w2, e, axis=0), op.Gather(b2, e, axis=0), gate_idx, up_idx, limit, alpha, beta,
        )
        y = op.ScatterND(y, op.Unsqueeze(rows, op.Constant(value=_AXIS1)),
                         y_rows * op.Unsqueeze(weight, op.Constant(value=_AXIS1)), reduction="add")
    return y


# ---- MoEMXFP4 ------------------------------------------------------------------------------------------------
@script(OPSET, default_opset=op)
def MoEMXFP4(
    x: FLOAT, router_logits: FLOAT, w1_blocks: UINT8, w1_scales: UINT8, b1: FLOAT, w2_blocks: UINT8,
    w2_scales: UINT8, b2: FLOAT,
    k: int, normalize_routing_weights: int = 1, swiglu_interleaved: int = 0, swiglu_limit: float = 0.0,
    activation_alpha: float = 1.0, activation_beta: float = 0.0,
) -> FLOAT:
    """MoEMXFP4(x[T, H], router_logits[T, E], w1_blocks[E, 2I, H/32, 16], w1_scales[E, 2I, H/32], b1[E, 2I],
    w2_blocks[E, H, I/32, 16], w2_scales[E, H, I/32], b2[E, H]) -> y[T, H]; MoE with MXFP4 expert weights."""
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
        y_rows = SwiGLUExpert(
            op.Gather(x, rows, axis=0), w1, op.Gather(b1, e, axis=0), w2, op.Gather(b2, e, axis=0),
            gate_idx, up_idx, limit, alpha, beta,
        )
        y = op.ScatterND(y, op.Unsqueeze(rows, op.Constant(value=_AXIS1)),
                         y_rows * op.Unsqueeze(weight, op.Constant(value=_AXIS1)), reduction="add")
    return y


HELPERS = (MoERouting, SwiGLUParams, SwiGLUIndices, ExpertRows, SwiGLUExpert)  # function bodies the op bodies call


# ---- NumPy kernels -------------------------------------------------------------------------------------------
def _route(router_logits: np.ndarray, k: int, normalize: int) -> tuple[np.ndarray, np.ndarray]:
    """router_logits[T, E] -> (top_idx int64[T, k], top_w[T, k]): TopK largest, sorted, ties -> lower index."""
    t, e = router_logits.shape
    if not 1 <= k <= e:
        raise ValueError(f"{DOMAIN}.MoE: attribute k={k} must be in [1, E={e}] ({router_logits.shape=})")
    top_idx = np.argsort(-router_logits, axis=-1, kind="stable")[:, :k].astype(np.int64)  # [T, k]
    top_logits = np.take_along_axis(router_logits, top_idx, axis=-1)

    def softmax(z):
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)

    top_w = softmax(top_logits) if normalize else np.take_along_axis(softmax(router_logits), top_idx, axis=-1)
    return top_idx, top_w.astype(router_logits.dtype)


def _swiglu_expert(x, w1, b1, w2, b2, interleaved: int, limit: float, alpha: float, beta: float) -> np.ndarray:
    """x[n, H] through one expert: w1[2I, H], b1[2I], w2[H, I], b2[H] -> [n, H]."""
    h = x @ w1.T  # [n, 2I]
    if b1 is not None:  # MoE_2 / MoEMXFP4_2 (ops/moe_2.py) have no biases
        h = h + b1
    half = h.shape[-1] // 2
    gate, up = (h[:, 0::2], h[:, 1::2]) if interleaved else (h[:, :half], h[:, half:])
    if limit > 0:
        gate = np.minimum(gate, limit)
        up = np.clip(up, -limit, limit)
    act = gate * (1.0 / (1.0 + np.exp(-alpha * gate))) * (up + beta)
    y = act @ w2.T
    return y if b2 is None else y + b2


def _moe_loop(x, router_logits, expert_weights, b1, b2, k, normalize, interleaved, limit, alpha, beta):
    """The shared kernel loop; expert_weights(e) -> (w1[2I, H], w2[H, I]) is called once per chosen expert.
    b1[E, 2I], b2[E, H], or both None (ops/moe_2.py)."""
    if x.ndim != 2 or router_logits.ndim != 2 or router_logits.shape[0] != x.shape[0]:
        raise ValueError(f"{DOMAIN}.MoE: expected x[T, H] and router_logits[T, E], found {x.shape=} {router_logits.shape=}")
    if limit < 0:
        raise ValueError(f"{DOMAIN}.MoE: swiglu_limit={limit} must be >= 0 (0 = no clamp)")
    top_idx, top_w = _route(router_logits, k, normalize)
    y = np.zeros_like(x)
    for e in np.unique(top_idx):
        rows, slot = np.nonzero(top_idx == e)  # tokens that chose e, and where in their top-k
        w1, w2 = expert_weights(e)
        y_rows = _swiglu_expert(x[rows], w1, None if b1 is None else b1[e], w2, None if b2 is None else b2[e],
                                interleaved, limit, alpha, beta)
        np.add.at(y, rows, y_rows * top_w[rows, slot][:, None])
    return y


def _moe(x, router_logits, w1, b1, w2, b2, k, normalize, interleaved, limit, alpha, beta) -> np.ndarray:
    """MoE kernel, float experts w1[E, 2I, H], w2[E, H, I]."""
    if w1.ndim != 3 or w2.ndim != 3 or w1.shape[0] != router_logits.shape[-1]:
        raise ValueError(f"{DOMAIN}.MoE: expected w1[E, 2I, H], w2[E, H, I] with E={router_logits.shape[-1]}, "
                         f"found {w1.shape=} {w2.shape=}")
    return _moe_loop(x, router_logits, lambda e: (w1[e], w2[e]), b1, b2, k, normalize, interleaved, limit, alpha, beta)


def _moe_mxfp4(x, router_logits, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, k, normalize, interleaved,
               limit, alpha, beta) -> np.ndarray:
    """MoEMXFP4 kernel: dequantizes only the chosen experts, each once."""
    if w1_blocks.ndim != 4 or w2_blocks.ndim != 4 or w1_blocks.shape[0] != router_logits.shape[-1]:
        raise ValueError(f"{DOMAIN}.MoEMXFP4: expected w1_blocks[E, 2I, H/32, 16], w2_blocks[E, H, I/32, 16] with "
                         f"E={router_logits.shape[-1]}, found {w1_blocks.shape=} {w2_blocks.shape=}")

    def expert_weights(e):
        return (_dequantize_mxfp4(w1_blocks[e], w1_scales[e]).astype(x.dtype),
                _dequantize_mxfp4(w2_blocks[e], w2_scales[e]).astype(x.dtype))

    return _moe_loop(x, router_logits, expert_weights, b1, b2, k, normalize, interleaved, limit, alpha, beta)


FUNCTIONS = (MoE, MoEMXFP4)  # the function bodies; the kernel classes below take the op names


class MoE(OpRun):  # noqa: F811
    """onnx.reference kernel for ai.mxport.MoE."""

    op_domain = DOMAIN

    def _run(self, x, router_logits, w1, b1, w2, b2, k=None, normalize_routing_weights=1, swiglu_interleaved=0,
             swiglu_limit=0.0, activation_alpha=1.0, activation_beta=0.0):
        return (_moe(x, router_logits, w1, b1, w2, b2, int(k), int(normalize_routing_weights),
                     int(swiglu_interleaved), float(swiglu_limit), float(activation_alpha), float(activation_beta)),)


class MoEMXFP4(OpRun):  # noqa: F811
    """onnx.reference kernel for ai.mxport.MoEMXFP4."""

    op_domain = DOMAIN

    def _run(self, x, router_logits, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, k=None,
             normalize_routing_weights=1, swiglu_interleaved=0, swiglu_limit=0.0, activation_alpha=1.0,
             activation_beta=0.0):
        return (_moe_mxfp4(x, router_logits, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, int(k),
                           int(normalize_routing_weights), int(swiglu_interleaved), float(swiglu_limit),
                           float(activation_alpha), float(activation_beta)),)
