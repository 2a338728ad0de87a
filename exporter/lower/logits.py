"""Logits of the last position only (opt-in: generation needs nothing else from a prefill).

    x [B,S,H] ─ norm ─ lm_head (any position-wise head) ─► logits [B,S,V]
        ==>  x ─ norm ─ Slice(axis 1, last) ─ lm_head ─► logits [B,1,V]

The lm_head is the largest matmul of a prefill (S·H·V multiply-adds); every other output (present.*,
hidden_states.*) keeps all positions. The model I/O changes (logits [B,1,V]), so this rule runs only when
asked (`lower(..., last_logits=True)`, `mxport export --last-logits`); with left padding the last position
is a real token in every row.

The rule runs first, on the portable graph, so it slices the head's input before any other rule replaces the
head (--dense bfloat16's LinearBF16, q4's LinearQ4, int4/int8's MatMulNBits, the tied head's FusedMatMul take the
sliced input as they find it). It matches whatever node produces `logits` and slices the input of a head it
knows to be position-wise (HEADS: the row of each position is computed from that position's hidden state alone);
any other producer is refused by name in the lowering report, and lower() then records last_logits: false, so
mxport.json never claims logits it does not have.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mxport.contract import io
from mxport.ops import DOMAIN

from .rules import MS_DOMAIN, Context, add_initializer

# position-wise heads: input 0 is the hidden state [B,S,H], output [B,S,V] row by row
HEADS = {("", "MatMul"), (MS_DOMAIN, "MatMulNBits"), (MS_DOMAIN, "FusedMatMul"), (DOMAIN, "LinearBF16"),
         (DOMAIN, "LinearQ4")}


def applied(report: dict) -> bool:
    """Whether a lowering report (rules.Report.as_dict) says the last-position slice was inserted."""
    return bool(report.get("applied", {}).get(LastLogits.name))


class LastLogits:
    name = "last_logits"

    def pattern(self, node: ir.Node) -> bool:
        return any(out.is_graph_output() and out.name == io.LOGITS for out in node.outputs)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if (node.domain, node.op_type) not in HEADS:
            return (f"logits come from {node.domain + '.' if node.domain else ''}{node.op_type}, not a position-wise "
                    f"head ({', '.join(sorted(op for _, op in HEADS))}): its input is not sliced")
        x = node.inputs[0]
        if x is None or (x.shape is not None and x.shape.rank() not in (None, 3)):
            return f"lm_head input has rank {x.shape.rank() if x is not None else 0}, expected [B,S,H]"
        return None

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        def c(name: str, values) -> ir.Value:
            v = ir.Value(name=name, const_value=ir.tensor(np.asarray(values, np.int64), name=name))
            return add_initializer(ctx, v)

        last = ir.node("Slice", [node.inputs[0], c("last_logits.starts", [-1]),
                                 c("last_logits.ends", [np.iinfo(np.int64).max]), c("last_logits.axes", [1])],
                       name="lm_head/last_position")
        ctx.graph.insert_before(node, last)
        node.replace_input_with(0, last.outputs[0])
        out = node.outputs[0]
        if out.shape is not None and out.shape.rank() == 3:
            out.shape = ir.Shape([out.shape[0], 1, out.shape[2]])
