"""LayerNorm rule: residual Add + LayerNormalization-17 -> com.microsoft SkipLayerNormalization (GPT-2's ln_1, ln_2,
ln_f each read a residual sum).

    a ─┐                                                         a ─┐
       Add ─► s ─ LayerNormalization(gamma, beta) ─► y     ==>      SkipLayerNormalization(gamma, beta) ─► y
    b ─┘      └─► (other users of s)                             b ─┘      └─ output 3 (a + b) ─► other users of s

A LayerNormalization without such an Add stays the standard op (ORT's CPU kernel for it is the same code). Both
forms compute in float32 for float32 inputs (mean, then variance of the centred values), so the rewrite is
exact up to summation order. The fused output keeps the Add's name, so `layers.{i}/moe_residual` (the residual
stream after layer i, ARCHITECTURE.md) survives.
"""

from __future__ import annotations

import onnx_ir as ir

from .rules import MS_DOMAIN, Context, attr, const, move_uses


class SkipLayerNorm:
    name = "skip_layer_norm"

    def pattern(self, node: ir.Node) -> bool:
        if node.domain != "" or node.op_type != "LayerNormalization":
            return False
        producer = node.inputs[0].producer()
        return producer is not None and producer.op_type == "Add" and producer.domain == ""

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        axis = attr(node, "axis", -1)
        rank = node.inputs[0].shape.rank() if node.inputs[0].shape is not None else None
        if axis != -1 and (rank is None or axis != rank - 1):
            return f"axis={axis}: SkipLayerNormalization normalizes the last axis only"
        if len(node.inputs) < 3 or node.inputs[2] is None:
            return "no bias (beta) input: kept as LayerNormalization"
        if any(v.uses() for v in node.outputs[1:] if v is not None):
            return "mean / inv_std_dev outputs are used (training graphs only)"
        a, b = node.inputs[0].producer().inputs
        if const(a) is not None or const(b) is not None:
            return "the Add has a constant operand (a bias, not a residual)"
        shapes = [v.shape for v in (a, b)]
        if all(s is not None for s in shapes) and shapes[0].rank() != shapes[1].rank():
            return f"residual operands have ranks {shapes[0].rank()} and {shapes[1].rank()} (broadcasting Add)"
        return None

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        ctx.use_ms_domain()
        add = node.inputs[0].producer()
        a, b = add.inputs
        fused = ir.node(
            "SkipLayerNormalization", [a, b, node.inputs[1], node.inputs[2]],
            {"epsilon": float(attr(node, "epsilon", 1e-5))},
            domain=MS_DOMAIN, num_outputs=4, name=f"{node.name or 'layer_norm'}/skip",
        )
        out, _mean, _inv_std, total = fused.outputs
        ctx.graph.insert_before(add, fused)  # the Add's other users (next residual, hidden states) may come first
        move_uses(node.outputs[0], out)
        move_uses(add.outputs[0], total)
        ctx.graph.remove([node, add], safe=True)
