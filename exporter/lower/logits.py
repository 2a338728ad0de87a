"""Logits of the last position only (opt-in: generation needs nothing else from a prefill).

    x [B,S,H] ─ norm ─ lm_head MatMul ─► logits [B,S,V]
        ==>  x ─ norm ─ Slice(axis 1, last) ─ lm_head ─► logits [B,1,V]

The lm_head is the largest matmul of a prefill (S·H·V multiply-adds); every other output (present.*,
hidden_states.*) keeps all positions. The model I/O changes (logits [B,1,V]), so this rule runs only when
asked (`lower(..., last_logits=True)`, `mxport export --last-logits`); with left padding the last position
is a real token in every row.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mxport.contract import io

from .rules import Context, add_initializer

HEADS = {("", "MatMul"), ("com.microsoft", "MatMulNBits")}


class LastLogits:
    name = "last_logits"

    def pattern(self, node: ir.Node) -> bool:
        return (node.domain, node.op_type) in HEADS and any(
            out.is_graph_output() and out.name == io.LOGITS for out in node.outputs)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        x = node.inputs[0]
        if x.shape is not None and x.shape.rank() not in (None, 3):
            return f"lm_head input has rank {x.shape.rank()}, expected [B,S,H]"
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
