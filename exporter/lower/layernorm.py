"""LayerNorm rule: residual Add + LayerNormalization-17 -> com.microsoft SkipLayerNormalization (GPT-2's ln_1, ln_2,
ln_f each read a residual sum).

    a ─┐                                                         a ─┐
       Add ─► s ─ LayerNormalization(gamma, beta) ─► y     ==>      SkipLayerNormalization(gamma, beta) ─► y
    b ─┘      └─► (other users of s)                             b ─┘      └─ output 3 (a + b) ─► other users of s

A LayerNormalization without such an Add stays the standard op (ORT's CPU kernel for it is the same code). Both
forms compute in float32 for float32 inputs (mean, then variance of the centred values), so the rewrite is
exact up to summation order. The fused output keeps the Add's name, so `layers.{i}/residual` (the residual
stream after layer i, ARCHITECTURE.md) survives.
"""

from __future__ import annotations

import onnx_ir as ir

from .norm import fed_by_residual_add, fuse_skip, residual_problem
from .rules import Context, attr


class SkipLayerNorm:
    name = "skip_layer_norm"

    def pattern(self, node: ir.Node) -> bool:
        return node.domain == "" and node.op_type == "LayerNormalization" and fed_by_residual_add(node)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        axis = attr(node, "axis", -1)
        rank = node.inputs[0].shape.rank() if node.inputs[0].shape is not None else None
        if axis != -1 and (rank is None or axis != rank - 1):
            return f"axis={axis}: SkipLayerNormalization normalizes the last axis only"
        if len(node.inputs) < 3 or node.inputs[2] is None:
            return "no bias (beta) input: kept as LayerNormalization"
        if any(v.uses() for v in node.outputs[1:] if v is not None):
            return "mean / inv_std_dev outputs are used (training graphs only)"
        return residual_problem(node.inputs[0].producer())

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        fuse_skip(ctx, node, "SkipLayerNormalization", [node.inputs[1], node.inputs[2]], "layer_norm")
