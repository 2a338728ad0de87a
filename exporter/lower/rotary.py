"""Fold the RotaryEmbedding of q and k into GroupQueryAttention (`do_rotary`), on `--target cpu`.

    q_in ─ RotaryEmbedding(cos, sin) ─► q ─┐                 q_in ─┐
    k_in ─ RotaryEmbedding(cos, sin) ─► k ─┤ GQA    ==>      k_in ─┤ GQA{do_rotary=1}(..., cos_rows, sin_rows, row_ids)
                                     v ────┘                    v ─┘

cos, sin are the graph's per-token tables [B,S,D/2] (layers.rope_tables: computed from position_ids once per
graph, YaRN or linear scaling and the attention factor included). GQA's rotary reads row position_ids[b,s] of a
cos_cache [rows, D/2], so the per-token tables become that cache, one row per token:

    cos_rows = Pad(Reshape(cos, [-1, D/2]), rows + T)      row_ids = Reshape(Range(0, B*S), [B, S])

The rows come from the same tables and the kernel applies the same rotation, so the logits equal the unfolded
graph's (checked bit for bit on qwen3-0.6b shapes, left-padded and chunked batches included); any position
pattern works, because the positions were applied when the tables were made (left padding, serve's batch
surgery). The padding rows exist only because the kernel checks cos_cache rows >= total_sequence_length (T, the
mask's width); they are zeros and never read. Per step that costs T*D zero floats, against the two
RotaryEmbedding nodes per layer it removes (one node per layer instead of three; on qwen3-0.6b decode 56 nodes
and ~0.4 ms of a ~18 ms step).

Refused (the RotaryEmbedding nodes stay, GQA gets rotated q and k): head_size not a multiple of 16 (ORT's CPU
rotary needs it), interleaved or partial rotary, tables given with position_ids, a rotated q or k read by
anything else, or q and k rotated by different tables.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .rules import Context, adopt_tape, attr


def foldable(q: ir.Value, k: ir.Value, head_size: int | None) -> tuple[ir.Node, ir.Node] | str | None:
    """The RotaryEmbedding nodes producing q and k when GQA can apply them itself, else why not; None when q and k
    are not rotated at all (GPT-2: nothing to fold)."""
    ropes = (q.producer(), k.producer())
    if any(r is None or r.op_type != "RotaryEmbedding" or r.domain not in ("", "ai.onnx") for r in ropes):
        return None
    if head_size is None or head_size % 16:
        return f"head_size={head_size} is not a multiple of 16 (ORT's CPU rotary needs it)"
    for rope, value in zip(ropes, (q, k)):
        if len(rope.inputs) != 3 or attr(rope, "interleaved", 0) != 0:  # a 4th input: position_ids with a cache
            return f"{rope.name}: interleaved, or tables indexed by position_ids"
        if attr(rope, "rotary_embedding_dim", 0) not in (0, head_size):
            return f"{rope.name}: partial rotary"
        if len(value.uses()) != 1 or value.is_graph_output():
            return f"{rope.name}: its output has other readers"
    if ropes[0].inputs[1] is not ropes[1].inputs[1] or ropes[0].inputs[2] is not ropes[1].inputs[2]:
        return "q and k use different cos/sin tables"
    return ropes


def rotary_inputs(ctx: Context, cos: ir.Value, sin: ir.Value, mask: ir.Value,
                  head_size: int) -> tuple[list[ir.Node], list[ir.Value]]:
    """cos_rows, sin_rows [B*S + T, D/2] and row_ids [B,S]: built once per (tables, mask), shared by layers."""
    key = ("rotary_rows", id(cos), id(mask))
    if key in ctx.shared:
        return [], ctx.shared[key]
    tag = sum(1 for k in ctx.shared if isinstance(k, tuple) and k[0] == "rotary_rows")
    prefix = "rotary_rows" if tag == 0 else f"rotary_rows_{tag}"
    t = ir.tape.Tape()

    def c(name: str, array) -> ir.Value:
        return t.initializer(ir.tensor(np.asarray(array), name=f"{prefix}/{name}"), name=f"{prefix}/{name}")

    rows_shape = c("rows_shape", np.array([-1, head_size // 2], np.int64))
    cos_flat = t.op("Reshape", [cos, rows_shape])
    sin_flat = t.op("Reshape", [sin, rows_shape])
    total = t.op("Gather", [t.op("Shape", [mask]), c("one", np.array([1], np.int64))], {"axis": 0})  # [T]
    pads = t.op("Concat", [c("zeros2", np.zeros(2, np.int64)), total, c("zero1", np.zeros(1, np.int64))], {"axis": 0})
    cos_rows = t.op("Pad", [cos_flat, pads])
    sin_rows = t.op("Pad", [sin_flat, pads])
    batch_seq = t.op("Slice", [t.op("Shape", [cos]), c("start", np.array([0], np.int64)), c("stop", np.array([2], np.int64))])
    count = t.op("ReduceProd", [batch_seq], {"keepdims": 0})
    row_ids = t.op("Reshape", [t.op("Range", [c("first", np.int64(0)), count, c("step", np.int64(1))]), batch_seq])
    ctx.shared[key] = [cos_rows, sin_rows, row_ids]
    return adopt_tape(ctx, t, prefix), ctx.shared[key]
