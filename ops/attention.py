"""Attention (ai.mxport, version 1): grouped-query attention with a KV cache, sliding window, padding mask, sinks.

Schema
    Attention(query: float[B, S, Hq*D], key: float[B, S, Hkv*D], value: float[B, S, Hkv*D],
              past_key: float[B, Hkv, P, D], past_value: float[B, Hkv, P, D], attention_mask: int64[B, P+S],
              sinks: float[Hq])
        -> (output: float[B, S, Hq*D], present_key: float[B, Hkv, P+S, D], present_value: float[B, Hkv, P+S, D])
    Attributes: num_heads (Hq), kv_num_heads (Hkv, divides Hq), scale (0.0 = 1/√D, the default),
                window (0 = none; else query slot i sees key slots j with i - window < j).
    Inputs are after RoPE; the output projection is not part of the op.

    present = concat(past, new) along the slot axis; query row s sits in slot i = P + s.
    keep[b, i, j] = (j <= i) and (window == 0 or j > i - window) and attention_mask[b, j] == 1
    score[b, h, s, j] = scale * q[b, h, s] · k[b, h // (Hq/Hkv), j]  + (0 if keep else float32 min)
    p = softmax([score[b, h, s, :], sinks[h]])[:-1]     (the sink column joins the softmax, then is dropped)
    output[b, s, h*D:(h+1)*D] = Σ_j p[j] · v[b, h // (Hq/Hkv), j]

Dataflow of the function body (G = Hq/Hkv query heads per KV head; grouped, KV heads are never repeated):

    query ─ Reshape [B,S,Hq,D] ─ Transpose ─ [B,Hq,S,D] ─ Reshape [B,Hkv,G,S,D] ──┐
    key   ─ Reshape/Transpose [B,Hkv,S,D] ─ Concat(past_key) = present_key ─ [B,Hkv,1,L,D]
                                                                               MatMul ᵀ · scale   [B,Hkv,G,S,L]
    mask (causal & window & attention_mask) ─ Where(0, float32 min) [B,1,1,S,L] ─ Add
    sinks [Hq] ─ Reshape [1,Hkv,G,1,1] ─ Expand [B,Hkv,G,S,1] ────────────────── Concat(-1) [B,Hkv,G,S,L+1]
                                                                               Softmax(-1), Slice [..., :L]
    value ─ ... ─ present_value ─ [B,Hkv,1,L,D] ─────────────────────────────── MatMul [B,Hkv,G,S,D]
                                                             Reshape [B,Hq,S,D] ─ Transpose ─ Reshape [B,S,Hq*D]

Why standard ops and not the opset-23 `Attention` op: it has no sink input (a per-head logit that joins the
softmax), and a sink cannot be expressed as a mask; ORT's fused kernel for sinks is the contrib
GroupQueryAttention (head_sink), which the lowering rules target. Why an additive float32-min bias and not -inf:
a fully masked row (a left-padding query row) then stays finite: with a finite sink all weight goes to the sink
(output 0), with -inf sinks the row averages the values; -inf would give NaN (transformers' eager path also adds
the dtype minimum).
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper
from onnx.reference.op_run import OpRun
from onnxscript import FLOAT, INT64, script
from onnxscript import opset23 as op

from mxport.ops import DOMAIN, OPSET

MASKED = np.finfo(np.float32).min  # additive bias of a masked slot

_MASKED = numpy_helper.from_array(np.array(MASKED, np.float32))
_ZERO_F = numpy_helper.from_array(np.array(0.0, np.float32))
_ONE_F = numpy_helper.from_array(np.array(1.0, np.float32))
_ZERO_I = numpy_helper.from_array(np.array(0, np.int64))
_ONE_I = numpy_helper.from_array(np.array(1, np.int64))
_VEC = numpy_helper.from_array(np.array([1], np.int64))  # Reshape target [1]
_SCALAR = numpy_helper.from_array(np.zeros(0, np.int64))  # Reshape target []
_KEEP2 = numpy_helper.from_array(np.array([0, 0], np.int64))  # Reshape: copy B, S
_MINUS_ONE = numpy_helper.from_array(np.array([-1], np.int64))
_AXIS0 = numpy_helper.from_array(np.array([0], np.int64))
_AXIS1 = numpy_helper.from_array(np.array([1], np.int64))
_AXIS2 = numpy_helper.from_array(np.array([2], np.int64))
_AXES_MASK = numpy_helper.from_array(np.array([1, 2, 3], np.int64))  # attention_mask [B, L] -> [B, 1, 1, 1, L]
_SINK_SHAPE_TAIL = numpy_helper.from_array(np.array([-1, 1, 1], np.int64))  # sinks -> [1, Hkv, G, 1, 1]
_LAST_AXIS = numpy_helper.from_array(np.array([-1], np.int64))


@script(OPSET, default_opset=op)
def Attention(
    query: FLOAT, key: FLOAT, value: FLOAT, past_key: FLOAT, past_value: FLOAT, attention_mask: INT64,
    sinks: FLOAT, num_heads: int, kv_num_heads: int, scale: float = 0.0, window: int = 0,
):
    """Attention(query, key, value, past_key, past_value, attention_mask, sinks) -> (output, present_key, present_value)."""
    hq = op.Reshape(op.Constant(value_int=num_heads), op.Constant(value=_VEC))  # [1]
    hkv = op.Reshape(op.Constant(value_int=kv_num_heads), op.Constant(value=_VEC))  # [1]
    keep_bs = op.Constant(value=_KEEP2)
    minus_one = op.Constant(value=_MINUS_ONE)

    q = op.Transpose(op.Reshape(query, op.Concat(keep_bs, hq, minus_one, axis=0)), perm=[0, 2, 1, 3])  # [B,Hq,S,D]
    k = op.Transpose(op.Reshape(key, op.Concat(keep_bs, hkv, minus_one, axis=0)), perm=[0, 2, 1, 3])  # [B,Hkv,S,D]
    v = op.Transpose(op.Reshape(value, op.Concat(keep_bs, hkv, minus_one, axis=0)), perm=[0, 2, 1, 3])
    present_key = op.Concat(past_key, k, axis=2)  # [B,Hkv,L,D]
    present_value = op.Concat(past_value, v, axis=2)

    # Grouped query heads: head h = kv * G + g uses KV head kv = h // G.
    b_dim = op.Shape(q, start=0, end=1)
    s_dim = op.Shape(q, start=2, end=3)
    d_dim = op.Shape(q, start=3, end=4)
    l_dim = op.Shape(present_key, start=2, end=3)
    q5 = op.Reshape(q, op.Concat(b_dim, hkv, minus_one, s_dim, d_dim, axis=0))  # [B,Hkv,G,S,D]
    axis2 = op.Constant(value=_AXIS2)
    k5 = op.Unsqueeze(present_key, axis2)  # [B,Hkv,1,L,D]
    v5 = op.Unsqueeze(present_value, axis2)

    scale_attr = op.Constant(value_float=scale)
    default_scale = op.Div(op.Constant(value=_ONE_F), op.Sqrt(op.Cast(d_dim, to=1)))  # 1/√D, [1]
    scale_value = op.Where(op.Greater(scale_attr, op.Constant(value=_ZERO_F)), scale_attr, default_scale)
    scores = op.Mul(op.MatMul(q5, op.Transpose(k5, perm=[0, 1, 2, 4, 3])), scale_value)  # [B,Hkv,G,S,L]

    # keep[b, s, j]: causal, window, padding. Query row s sits in slot P + s, P = L - S.
    length = op.Reshape(l_dim, op.Constant(value=_SCALAR))
    one = op.Constant(value=_ONE_I)
    q_slot = op.Unsqueeze(op.Range(op.Reshape(op.Sub(l_dim, s_dim), op.Constant(value=_SCALAR)), length, one),
                          op.Constant(value=_AXIS1))  # [S,1]
    k_slot = op.Unsqueeze(op.Range(op.Constant(value=_ZERO_I), length, one), op.Constant(value=_AXIS0))  # [1,L]
    win = op.Constant(value_int=window)
    in_window = op.Or(op.LessOrEqual(win, op.Constant(value=_ZERO_I)), op.Greater(k_slot, op.Sub(q_slot, win)))
    keep_sl = op.And(op.LessOrEqual(k_slot, q_slot), in_window)  # [S,L]
    not_pad = op.Unsqueeze(op.Equal(attention_mask, op.CastLike(one, attention_mask)),
                           op.Constant(value=_AXES_MASK))  # [B,1,1,1,L]
    keep = op.And(keep_sl, not_pad)  # [B,1,1,S,L]
    scores = op.Add(scores, op.Where(keep, op.Constant(value=_ZERO_F), op.Constant(value=_MASKED)))

    # Sink column: one more logit per head, in the softmax, dropped after it.
    sink5 = op.Reshape(sinks, op.Concat(op.Constant(value=_VEC), hkv, op.Constant(value=_SINK_SHAPE_TAIL), axis=0))
    sink_col = op.Expand(sink5, op.Concat(op.Shape(scores, start=0, end=4), op.Constant(value=_VEC), axis=0))
    probs = op.Softmax(op.Concat(scores, sink_col, axis=-1), axis=-1)  # [B,Hkv,G,S,L+1]
    probs = op.Slice(probs, op.Constant(value=_AXIS0), l_dim, op.Constant(value=_LAST_AXIS))  # [B,Hkv,G,S,L]

    out = op.MatMul(probs, v5)  # [B,Hkv,G,S,D]
    out = op.Transpose(op.Reshape(out, op.Concat(b_dim, hq, s_dim, d_dim, axis=0)), perm=[0, 2, 1, 3])  # [B,S,Hq,D]
    output = op.Reshape(out, op.Concat(keep_bs, minus_one, axis=0))  # [B,S,Hq*D]
    return output, present_key, present_value


def _attention(query, key, value, past_key, past_value, attention_mask, sinks, num_heads: int, kv_num_heads: int,
               scale: float, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy kernel (float32 math, same grouping and bias as the body)."""
    b, s, qd = query.shape
    if num_heads <= 0 or kv_num_heads <= 0 or num_heads % kv_num_heads or qd % num_heads:
        raise ValueError(f"{DOMAIN}.Attention: num_heads={num_heads} must be a multiple of kv_num_heads={kv_num_heads} "
                         f"and divide {query.shape=}[-1]")
    d = qd // num_heads
    hkv, g = kv_num_heads, num_heads // kv_num_heads
    if key.shape != (b, s, hkv * d) or value.shape != key.shape:
        raise ValueError(f"{DOMAIN}.Attention: expected key/value [B, S, kv_num_heads*D] = {(b, s, hkv * d)}, "
                         f"found {key.shape=} {value.shape=}")
    p = past_key.shape[2]
    if past_key.shape != (b, hkv, p, d) or past_value.shape != past_key.shape:
        raise ValueError(f"{DOMAIN}.Attention: expected past_key/past_value [B, Hkv, P, D] = {(b, hkv, 'P', d)}, "
                         f"found {past_key.shape=} {past_value.shape=}")
    if attention_mask.shape != (b, p + s) or sinks.shape != (num_heads,):
        raise ValueError(f"{DOMAIN}.Attention: expected attention_mask [B, P+S] = {(b, p + s)} and sinks [{num_heads}], "
                         f"found {attention_mask.shape=} {sinks.shape=}")
    q = query.reshape(b, s, hkv, g, d)  # head h = kv * G + g
    present_key = np.concatenate([past_key, key.reshape(b, s, hkv, d).transpose(0, 2, 1, 3)], axis=2)  # [B,Hkv,L,D]
    present_value = np.concatenate([past_value, value.reshape(b, s, hkv, d).transpose(0, 2, 1, 3)], axis=2)
    scale = np.float32(scale if scale > 0 else 1.0 / np.sqrt(np.float32(d)))
    scores = np.einsum("bskgd,bkld->bkgsl", q, present_key) * scale  # [B,Hkv,G,S,L]
    q_slot = np.arange(p, p + s)[:, None]
    k_slot = np.arange(p + s)[None, :]
    keep = (k_slot <= q_slot) & ((window <= 0) | (k_slot > q_slot - window))  # [S,L]
    keep = keep[None, None, None] & (attention_mask == 1)[:, None, None, None, :]  # [B,1,1,S,L]
    scores = scores + np.where(keep, np.float32(0), MASKED)
    sink_col = np.broadcast_to(sinks.reshape(1, hkv, g, 1, 1), scores.shape[:-1] + (1,))
    logits = np.concatenate([scores, sink_col], axis=-1)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = (probs / probs.sum(axis=-1, keepdims=True))[..., :-1]
    out = np.einsum("bkgsl,bkld->bskgd", probs, present_value).reshape(b, s, num_heads * d)
    return out.astype(query.dtype), present_key, present_value


FUNCTIONS = (Attention,)  # the function body; the kernel class below takes the op's name
HELPERS = ()


class Attention(OpRun):  # noqa: F811
    """onnx.reference kernel for ai.mxport.Attention."""

    op_domain = DOMAIN
    op_schema = None  # onnx.reference looks schemas up by class name: keep the standard Attention's attributes out

    def _run(self, query, key, value, past_key, past_value, attention_mask, sinks, num_heads=None,
             kv_num_heads=None, scale=0.0, window=0):
        return _attention(query, key, value, past_key, past_value, attention_mask, sinks, int(num_heads),
                          int(kv_num_heads), float(scale), int(window))
