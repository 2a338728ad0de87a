"""RMSNorm rules: RMSNormalization-23 -> com.microsoft SimplifiedLayerNormalization, then residual Add + norm ->
SkipSimplifiedLayerNormalization.

    x ─ RMSNormalization(scale){axis=-1, epsilon} ─► y     ==>  x ─ SimplifiedLayerNormalization(scale) ─► y

    a ─┐                                                      a ─┐
       Add ─► s ─ SimplifiedLN(gamma) ─► y            ==>        SkipSimplifiedLayerNormalization(gamma) ─► y
    b ─┘      └─► (other users of s)                          b ─┘        └─ output 3 (a + b) ─► other users of s

Both are fp32 in, fp32 math, fp32 out (ORT computes the mean of squares in float for float inputs), so the
rewrite is exact up to summation order.
"""

from __future__ import annotations

import onnx_ir as ir

from .rules import MS_DOMAIN, Context, attr, const, move_uses, replace


class SimplifiedNorm:
    name = "simplified_layer_norm"

    def pattern(self, node: ir.Node) -> bool:
        return node.domain == "" and node.op_type == "RMSNormalization"

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        axis = attr(node, "axis", -1)
        rank = node.inputs[0].shape.rank() if node.inputs[0].shape is not None else None
        if axis != -1 and (rank is None or axis != rank - 1):
            return f"axis={axis}: SimplifiedLayerNormalization is used here over the last axis only"
        scale = node.inputs[1]
        if scale.shape is not None and scale.shape.rank() != 1:
            return f"scale has shape {scale.shape}: expected one value per channel [H]"
        return None

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        new = ir.node(
            "SimplifiedLayerNormalization", [node.inputs[0], node.inputs[1]],
            {"axis": -1, "epsilon": float(attr(node, "epsilon", 1e-5)), "stash_type": 1},
            domain="", num_outputs=1, name=f"{node.name or 'rms_norm'}/simplified",
        )
        # SimplifiedLayerNormalization lives in the default domain in ORT's contrib registry (ONNX domain, v1).
        replace(ctx, node, [new], new.outputs)


def fed_by_residual_add(node: ir.Node) -> bool:
    """The norm's input is a standard Add (a residual sum candidate)."""
    producer = node.inputs[0].producer()
    return producer is not None and producer.op_type == "Add" and producer.domain == ""


def residual_problem(add: ir.Node) -> str | None:
    """Why the Add feeding a norm is not a residual sum the Skip*Normalization ops can take, or None."""
    a, b = add.inputs
    if const(a) is not None or const(b) is not None:
        return "the Add has a constant operand (a bias, not a residual)"
    shapes = [v.shape for v in (a, b)]
    if all(s is not None for s in shapes) and shapes[0].rank() != shapes[1].rank():
        return f"residual operands have ranks {shapes[0].rank()} and {shapes[1].rank()} (broadcasting Add)"
    return None


def fuse_skip(ctx: Context, node: ir.Node, op_type: str, params: list[ir.Value], default_name: str) -> None:
    """Add(a, b) -> norm(params) ==> com.microsoft `op_type`(a, b, *params): output 0 replaces the norm's, output 3
    (a + b) the Add's, so the residual keeps feeding its other users under the Add's role."""
    ctx.use_ms_domain()
    add = node.inputs[0].producer()
    a, b = add.inputs
    fused = ir.node(
        op_type, [a, b, *params], {"epsilon": float(attr(node, "epsilon", 1e-5))},
        domain=MS_DOMAIN, num_outputs=4, name=f"{node.name or default_name}/skip",
    )
    out, mean, inv_std, total = fused.outputs
    mean.name = inv_std.name = ""  # optional outputs left out: ORT then neither computes nor allocates them
    # Insert at the Add: its users (next residual, a hidden_states Identity) may sit before the norm.
    ctx.graph.insert_before(add, fused)
    move_uses(node.outputs[0], out)
    move_uses(add.outputs[0], total)
    ctx.graph.remove([node, add], safe=True)


class SkipSimplifiedNorm:
    name = "skip_simplified_layer_norm"

    def pattern(self, node: ir.Node) -> bool:
        return node.domain == "" and node.op_type == "SimplifiedLayerNormalization" and fed_by_residual_add(node)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        return residual_problem(node.inputs[0].producer())

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        fuse_skip(ctx, node, "SkipSimplifiedLayerNormalization", [node.inputs[1]], "norm")
