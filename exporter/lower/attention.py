"""Lower ai.mxport Attention to GroupQueryAttention (on cpu, with the rotary folded in: rotary.py).

On --target cpu in float32 the node is ai.mxport.GroupQueryAttention (ops/group_query_attention.py): ORT's
contract less its quantized-cache and Q/K-norm inputs, run by mxport's native kernel (one read of each KV head's
cache per step) where the library is registered, and by its function body, the com.microsoft node, elsewhere.
Otherwise (cuda, float16 / bfloat16) it is com.microsoft.GroupQueryAttention itself.

    ai.mxport.Attention(q, k, v, past_k, past_v, attention_mask [B,T] int64, sinks [Hq]) {num_heads, kv_num_heads,
                        scale, window}
      ─► com.microsoft.GroupQueryAttention(q, k, v, past_k, past_v,
              seqlens_k = T-1 for every row (int32 [B]),   total_sequence_length = T (int32 scalar),
              attention_bias = 0 | float32 min where attention_mask == 0   [B,1,S,T],
              head_sink = sinks (absent when every sink is -inf: "no sinks"),
              query_seqlens = S for every row (int32 [B]))
           {num_heads, kv_num_heads, scale, local_window_size = window (or -1), do_rotary = 1 on cpu, else 0}

Why this spelling (checked against the NumPy kernel on CPU, onnxruntime 1.32):
  - GQA's own padding model is right padding (seqlens_k = valid length - 1). mxport's I/O is left padding, and
    cache slots are absolute: row b's slots are [0, T) with pad slots masked. Telling GQA every row is full
    (seqlens_k = T-1) and masking pad slots through attention_bias is exact, including sliding layers, whose
    window counts absolute slots in both contracts.
  - local_window_size = W makes query slot i see keys i-W < j <= i: the same as `window` (not W-1).
  - query_seqlens lifts "batch_size must be 1 when sequence_length > 1 and past is given" (chunked prefill).
  - Rotary: on --target cpu the RotaryEmbedding of q and k is folded in (do_rotary = 1) with one cos/sin row
    per token, so GQA never computes a position itself (left-padded rows have positions 0,0,..,0,1,2,..:
    cumsum(mask) - 1, clipped; its own position rule is right padding's). On cuda it stays outside (the CUDA
    kernel's rotary inputs are not checked on a GPU here).
  - A -inf sink constant (exporter/layers.attention(sinks=None): Qwen3, GPT-2) is the op's "no sinks": the
    head_sink input is left out, which is GQA's plain softmax (a -inf head_sink would be the same numbers, but
    only by the kernel's grace, and it costs a column per row).
  - Bias uses the compute dtype's most negative finite value (MASKED), not -inf: a pad query row sees only
    masked keys and the sink, and stays finite (its output is unspecified by the I/O contract, but never NaN).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .rotary import foldable, rotary_inputs
from .rules import MS_DOMAIN, Context, adopt_tape, attach_function, attr, const, replace

INT32 = ir.DataType.INT32
# The bias of a masked slot per compute dtype: very negative, finite after the cast to that dtype
# (float32's min would become -inf in float16 and bfloat16).
MASKED = {"float32": float(np.finfo(np.float32).min), "float16": float(np.finfo(np.float16).min), "bfloat16": -3.0e38}


class LowerAttention:
    name = "attention"

    def pattern(self, node: ir.Node) -> bool:
        from mxport.ops import DOMAIN

        return node.domain == DOMAIN and node.op_type == "Attention"

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if len(node.inputs) < 6 or node.inputs[5] is None:
            return "no attention_mask input: GQA needs it for seqlens_k and the padding bias"
        if any(v is None for v in node.inputs[:5]):
            return "query/key/value and past_key/past_value must all be given (GQA derives the cache from them)"
        head_size = _head_size(node)
        if head_size is not None and head_size % 8:
            return f"head_size={head_size} is not a multiple of 8 (GroupQueryAttention's CPU kernel needs it)"
        window = attr(node, "window", 0)
        if window < 0:
            return f"window={window} is negative"
        return None

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        ctx.use_ms_domain()
        q, k, v, past_k, past_v, mask = node.inputs[:6]
        sinks = node.inputs[6] if len(node.inputs) > 6 else None
        if no_sinks(sinks):
            sinks = None
        head_size = _head_size(node)
        ropes = foldable(q, k, head_size) if ctx.target == "cpu" else None  # cuda: rotary stays outside
        rotary: list[ir.Value | None] = [None, None, None]  # cos_cache, sin_cache, position_ids
        nodes: list[ir.Node] = []
        if isinstance(ropes, str):
            ctx.report.refused.append(("rotary_in_attention", node.name or "attention", ropes))
            ropes = None
        elif ropes is not None:  # rotary.py: GQA rotates q and k itself
            ctx.report.applied["rotary_in_attention"] += 1
            q, k = ropes[0].inputs[0], ropes[1].inputs[0]
            nodes, rotary = rotary_inputs(ctx, ropes[0].inputs[1], ropes[0].inputs[2], mask, head_size)
        shared, seqlens_k, total, bias, query_seqlens = _shared_inputs(ctx, mask, q)
        nodes = [*shared, *nodes]
        window = int(attr(node, "window", 0))
        attrs = {
            "num_heads": int(attr(node, "num_heads")),
            "kv_num_heads": int(attr(node, "kv_num_heads")),
            "local_window_size": window if window > 0 else -1,
            "do_rotary": 0 if ropes is None else 1,
        }
        if scale := attr(node, "scale"):  # ai.mxport: absent or 0 means 1/sqrt(D), as GQA's default
            attrs["scale"] = float(scale)
        # GQA inputs: query key value past_key past_value seqlens_k total_sequence_length cos_cache sin_cache
        #             position_ids attention_bias head_sink k_scale v_scale q_norm_weight k_norm_weight query_seqlens
        inputs = [q, k, v, past_k, past_v, seqlens_k, total, *rotary, bias, sinks]
        prefix = node.name or "attention"
        if native_attention(ctx):  # ai.mxport's: the same inputs less the four quantized-cache / norm ones
            from mxport.ops import DOMAIN

            attach_function(ctx.model, "GroupQueryAttention")
            gqa = ir.node("GroupQueryAttention", [*inputs, query_seqlens], attrs, domain=DOMAIN, num_outputs=3,
                          name=f"{prefix}/gqa")
        else:
            gqa = ir.node("GroupQueryAttention", [*inputs, None, None, None, None, query_seqlens], attrs,
                          domain=MS_DOMAIN, num_outputs=3, name=f"{prefix}/gqa")
        replace(ctx, node, [*nodes, gqa], gqa.outputs)
        if ropes is not None:
            ctx.graph.remove(list(ropes), safe=True)


def native_attention(ctx: Context) -> bool:
    """On --target cpu in float32, ai.mxport.GroupQueryAttention (ops/group_query_attention.py: ORT's contract, a
    native kernel that reads each KV head's cache once per step; its function body is ORT's node) instead of
    com.microsoft.GroupQueryAttention."""
    return ctx.target == "cpu" and ctx.dtype == "float32"


def _head_size(node: ir.Node) -> int | None:
    """D from past_key [B,Hkv,P,D], else from query [B,S,Hq*D] / num_heads; None when neither shape is static."""
    past_k, q = node.inputs[3], node.inputs[0]
    if past_k.shape is not None and past_k.shape.rank() == 4 and isinstance(past_k.shape[3], int):
        return int(past_k.shape[3])
    if q.shape is not None and q.shape.rank() == 3 and isinstance(q.shape[2], int):
        return int(q.shape[2]) // int(attr(node, "num_heads"))
    return None


def no_sinks(sinks: ir.Value | None) -> bool:
    """True when `sinks` is absent or a constant whose every value is -inf (the op's "no sinks")."""
    if sinks is None:
        return True
    tensor = const(sinks)
    if tensor is None or isinstance(tensor, ir.LazyTensor):  # a checkpoint's sinks (read only at save time)
        return False
    values = tensor.numpy()
    return values is not None and values.size > 0 and bool(np.all(np.isneginf(values)))


def _shared_inputs(ctx: Context, mask: ir.Value, query: ir.Value):
    """seqlens_k, total_sequence_length, attention_bias and query_seqlens: built once per mask, shared by layers.

    Returns the nodes to insert (empty after the first call) and the four values.
    """
    key = ("gqa_inputs", id(mask))
    if key in ctx.shared:
        return [], *ctx.shared[key]
    # one set per mask: the graph's attention_mask, and the window-sized caches' mask tails (gpt_oss.window_masks)
    count = sum(1 for k in ctx.shared if isinstance(k, tuple) and k[0] == "gqa_inputs")
    tag = "" if count == 0 else f"_{count}"
    t = ir.tape.Tape()

    def c(name: str, array) -> ir.Value:
        return t.initializer(ir.tensor(np.asarray(array), name=f"gqa{tag}/{name}"), name=f"gqa{tag}/{name}")

    shape = t.op("Shape", [mask])  # [B, T]
    batch = t.op("Slice", [shape, c("zero", [0]), c("one", [1])])  # [1]
    total64 = t.op("Gather", [shape, c("one_scalar", np.int64(1))], {"axis": 0})  # scalar T
    total = t.op("Cast", [total64], {"to": INT32})
    seqlens_k = t.op("Expand", [t.op("Sub", [total, c("one_i32", np.int32(1))]), batch])  # [B] = T-1
    seq64 = t.op("Gather", [t.op("Shape", [query]), c("one_scalar_q", np.int64(1))], {"axis": 0})  # scalar S
    query_seqlens = t.op("Expand", [t.op("Cast", [seq64], {"to": INT32}), batch])  # [B] = S
    # bias [B,1,S,T]: 0 for kept slots, float32 min for pad slots
    keep = t.op("Cast", [mask], {"to": ir.DataType.BOOL})
    big_negative = c("masked", np.float32(MASKED.get(ctx.dtype, MASKED["float32"])))
    bias2 = t.op("Where", [keep, c("kept", np.float32(0.0)), big_negative])  # [B,T]
    bias4 = t.op("Unsqueeze", [bias2, c("axes_1_2", [1, 2])])  # [B,1,1,T]
    target = t.op("Concat", [batch, c("one_dim", [1]), t.op("Reshape", [seq64, c("one_shape", [1])]),
                             t.op("Reshape", [total64, c("one_shape_t", [1])])], {"axis": 0})
    bias = t.op("Expand", [bias4, target])  # [B,1,S,T]
    nodes = adopt_tape(ctx, t, f"gqa_inputs{tag}")
    ctx.shared[key] = (seqlens_k, total, bias, query_seqlens)
    # The mask may be used before the first Attention only as a graph input; insert the shared nodes before
    # the first Attention (every later one reuses them, and graph order is topological).
    return nodes, seqlens_k, total, bias, query_seqlens
