"""GroupQueryAttention (ai.mxport, version 1): com.microsoft.GroupQueryAttention's contract, for the inputs mxport's
CPU lowering gives it, with a native kernel that reads each KV head's cache once per step.

Schema (onnxruntime 1.32's com.microsoft.GroupQueryAttention with its quantized-cache and Q/K-norm inputs left out)
    GroupQueryAttention(query: float[B, S, Hq*D], key: float[B, S, Hkv*D], value: float[B, S, Hkv*D],
                        past_key: float[B, Hkv, P, D], past_value: float[B, Hkv, P, D],
                        seqlens_k: int32[B], total_sequence_length: int32[] (T),
                        cos_cache: float[rows, D/2]?, sin_cache: float[rows, D/2]?, position_ids: int64[B, S]?,
                        attention_bias: float[B|1, Hq|1, S, T]?, head_sink: float[Hq]?, query_seqlens: int32[B]?)
        -> (output: float[B, S, Hq*D], present_key: float[B, Hkv, max(P, T), D], present_value: the same)
    Attributes: num_heads (Hq), kv_num_heads (Hkv, divides Hq), local_window_size (-1: none; W: query slot i sees
                key slots i - W < j), do_rotary (0|1), scale (0.0: 1/√D).

    Every row's seqlens_k is T - 1 and its query_seqlens (required here) is S: the new tokens sit in slots
    [T - S, T) of every row, and padding is masked through attention_bias (the form exporter/lower/attention.py
    writes). Inputs
    outside that form are an error of the native and NumPy kernels (the function body, ORT's op, accepts more).
    do_rotary = 1: q and k are rotated (rotate-half pairs (i, i + D/2)) by rows position_ids[b, s] of the tables,
    which count up by one over [B, S] in row-major order (the lowering gives b·S + s: one table row per token;
    ORT's kernel does not read every position, and agrees on this form).
    present = past with the new (rotated) keys and values written over slots [T - S, T): in place when the caller
    binds one buffer as both past and present (ORT's shared buffer: P >= T), else a copy ([B, Hkv, T, D] for a
    growing cache, P = T - S).
    score[b, h, s, j] = scale · q[b, h, s] · k[b, h // (Hq/Hkv), j] + attention_bias[b, h, s, j], for slots
    j <= i = T - S + s (and i - W < j); softmax over those slots and, when head_sink is given, head_sink[h] as one
    more logit (dropped after the softmax); output[b, s, h] = Σ_j p[j] · v[b, h // (Hq/Hkv), j]. The bias adds
    as it is: a slot masked by float32's lowest gets weight 0 exactly, and a row it masks whole (a left-padding
    query row, whose output the I/O contract leaves unspecified) averages its values, as transformers' eager
    attention does (ORT's kernel gives zeros on some paths).

Why an op of mxport's own: onnxruntime 1.32's CPU kernel streams a decode step's cache at ~12 GB/s (2 threads) and
~7 GB/s (1 thread) once it is out of the last-level cache, each query head reading its KV head's keys again; the
native kernel (ops/csrc/gqa_op.c) reads them once for the group. The function body is the com.microsoft node
itself, so a host without mxport's library runs ORT's kernel, with the same numbers up to float32 summation order.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from onnx.reference.op_run import OpRun

from mxport.ops import DOMAIN, STANDARD_OPSET, VERSION

MS_DOMAIN = "com.microsoft"
INPUTS = ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "cos_cache",
          "sin_cache", "position_ids", "attention_bias", "head_sink", "query_seqlens")
OUTPUTS = ("output", "present_key", "present_value")
# com.microsoft.GroupQueryAttention's inputs: ours, with k_scale, v_scale, q_norm_weight, k_norm_weight absent
_MS_INPUTS = (*INPUTS[:12], "", "", "", "", INPUTS[12])
_REQUIRED = ("num_heads", "kv_num_heads")
_DEFAULTS = {"local_window_size": -1, "do_rotary": 0, "scale": 0.0}


class _Body:
    """The function body: one com.microsoft.GroupQueryAttention node (built with onnx.helper: onnxscript has no
    schema for contrib ops)."""

    name = "GroupQueryAttention"

    def to_function_proto(self) -> onnx.FunctionProto:
        refs = []
        for attr in (*_REQUIRED, *_DEFAULTS):
            kind = onnx.AttributeProto.FLOAT if attr == "scale" else onnx.AttributeProto.INT
            ref = onnx.AttributeProto(name=attr, ref_attr_name=attr, type=kind)
            refs.append(ref)
        node = helper.make_node("GroupQueryAttention", list(_MS_INPUTS), list(OUTPUTS), domain=MS_DOMAIN)
        node.attribute.extend(refs)
        return helper.make_function(
            DOMAIN, self.name, list(INPUTS), list(OUTPUTS), [node],
            [helper.make_opsetid("", STANDARD_OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
            attributes=list(_REQUIRED),
            attribute_protos=[helper.make_attribute(k, v) for k, v in _DEFAULTS.items()])


FUNCTIONS = (_Body(),)
HELPERS = ()
assert VERSION == 1


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x [..., D] by cos, sin [..., D/2] broadcast over its heads: pairs (i, i + D/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(np.float32)


def group_query_attention(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos_cache=None,
                          sin_cache=None, position_ids=None, attention_bias=None, head_sink=None, query_seqlens=None,
                          *, num_heads: int, kv_num_heads: int, local_window_size: int = -1, do_rotary: int = 0,
                          scale: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy kernel (float32 math); present is always a new array (no shared buffer in NumPy)."""
    name = f"{DOMAIN}.GroupQueryAttention"
    b, s, qd = query.shape
    if num_heads <= 0 or kv_num_heads <= 0 or num_heads % kv_num_heads:
        raise ValueError(f"{name}: num_heads={num_heads} must be a positive multiple of kv_num_heads={kv_num_heads}")
    hkv, g = kv_num_heads, num_heads // kv_num_heads
    p, d = past_key.shape[2], past_key.shape[3]
    if (qd != num_heads * d or key.shape != (b, s, hkv * d) or value.shape != key.shape
            or past_key.shape != (b, hkv, p, d) or past_value.shape != past_key.shape):
        raise ValueError(f"{name}: shapes disagree: {query.shape=} {key.shape=} {value.shape=} {past_key.shape=} "
                         f"{past_value.shape=} with num_heads={num_heads}, kv_num_heads={kv_num_heads}")
    t = int(np.asarray(total_sequence_length).reshape(-1)[0])
    if t < s or p < t - s:
        raise ValueError(f"{name}: total_sequence_length={t} must be at least S={s} and at most P={p} + S")
    if np.asarray(seqlens_k).shape != (b,) or np.any(np.asarray(seqlens_k) != t - 1):
        raise ValueError(f"{name}: seqlens_k must be total_sequence_length - 1 = {t - 1} for each of the {b} rows "
                         "(padding goes through attention_bias)")
    if query_seqlens is None or np.asarray(query_seqlens).shape != (b,) or np.any(np.asarray(query_seqlens) != s):
        raise ValueError(f"{name}: query_seqlens must be given, S = {s} for each row (without it ORT's kernel reads "
                         "a first prompt otherwise)")
    q = query.reshape(b, s, hkv, g, d)
    k = key.reshape(b, s, hkv, d)
    if do_rotary:
        if cos_cache is None or sin_cache is None or position_ids is None or cos_cache.shape[-1] != d // 2:
            raise ValueError(f"{name}: do_rotary=1 needs cos_cache and sin_cache [rows, D/2 = {d // 2}] and "
                             "position_ids [B, S]")
        pos = np.asarray(position_ids).reshape(b, s)
        if pos.min() < 0 or pos.max() >= cos_cache.shape[0]:
            raise ValueError(f"{name}: position_ids outside the {cos_cache.shape[0]} rows of cos_cache")
        if np.any(np.diff(pos.reshape(-1)) != 1):  # mxport's b*S + s; ORT's kernel does not read every one
            raise ValueError(f"{name}: position_ids must count up by one over [B, S] in row-major order")
        cos, sin = cos_cache[pos], sin_cache[pos]  # [B,S,D/2]
        q = _rotate(q, cos[:, :, None, None], sin[:, :, None, None])
        k = _rotate(k, cos[:, :, None], sin[:, :, None])
    present = max(p, t)
    present_key = np.zeros((b, hkv, present, d), np.float32)
    present_value = np.zeros((b, hkv, present, d), np.float32)
    present_key[:, :, :p], present_value[:, :, :p] = past_key, past_value
    present_key[:, :, t - s:t] = k.transpose(0, 2, 1, 3)
    present_value[:, :, t - s:t] = value.reshape(b, s, hkv, d).transpose(0, 2, 1, 3)
    keys, values = present_key[:, :, :t], present_value[:, :, :t]
    scale = np.float32(scale if scale != 0 else 1.0 / np.sqrt(np.float32(d)))
    scores = np.einsum("bskgd,bkld->bkgsl", q, keys) * scale  # [B,Hkv,G,S,T]
    if attention_bias is not None:
        if (attention_bias.ndim != 4 or attention_bias.shape[0] not in (1, b) or attention_bias.shape[1] not in (1, num_heads)
                or attention_bias.shape[2:] != (s, t)):
            raise ValueError(f"{name}: attention_bias must be [B or 1, num_heads or 1, S, T], found {attention_bias.shape}")
        bias = np.broadcast_to(attention_bias, (b, num_heads, s, t)).reshape(b, hkv, g, s, t)
        scores = scores + bias
    q_slot = np.arange(t - s, t)[:, None]
    k_slot = np.arange(t)[None, :]
    keep = (k_slot <= q_slot) & ((local_window_size <= 0) | (k_slot > q_slot - local_window_size))
    scores = np.where(keep, scores, -np.inf).astype(np.float32)
    if head_sink is not None:
        if np.asarray(head_sink).shape != (num_heads,):
            raise ValueError(f"{name}: head_sink must have num_heads = {num_heads} values")
        sink_col = np.broadcast_to(head_sink.reshape(1, hkv, g, 1, 1), scores.shape[:-1] + (1,))
        scores = np.concatenate([scores, sink_col], axis=-1)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = (probs / probs.sum(axis=-1, keepdims=True))[..., :t]
    out = np.einsum("bkgsl,bkld->bskgd", probs, values).reshape(b, s, num_heads * d)
    return out.astype(np.float32), present_key, present_value


class GroupQueryAttention(OpRun):
    """onnx.reference kernel for ai.mxport.GroupQueryAttention."""

    op_domain = DOMAIN
    op_schema = None

    def _run(self, query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos_cache=None,
             sin_cache=None, position_ids=None, attention_bias=None, head_sink=None, query_seqlens=None,
             num_heads=None, kv_num_heads=None, local_window_size=-1, do_rotary=0, scale=0.0):
        return group_query_attention(
            query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos_cache, sin_cache,
            position_ids, attention_bias, head_sink, query_seqlens, num_heads=int(num_heads),
            kv_num_heads=int(kv_num_heads), local_window_size=int(local_window_size), do_rotary=int(do_rotary),
            scale=float(scale))
