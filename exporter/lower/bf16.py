"""Dense bf16 weights to ai.mxport MatMulBF16 (--dense bf16, target cpu): mxport's native kernel reads them as stored.

    A[..., K] ─ MatMul(Cast(W_bf16 [K, N], to=float)) ─► Y      ==>   A ─ ai.mxport.MatMulBF16(W_bf16) ─► Y

Exact: every bfloat16 is a float32, and the kernel multiplies in float32 (ops/matmul_bf16.py has the meaning,
ops/csrc the kernel). ORT would fold the Cast into a float32 copy at load and read twice the bytes per decode
step. Without mxport's kernel library registered, ORT runs the op's function body (CastLike + MatMul, folded at
load): the same numbers at float32 speed. The router and the fused QKV MatMul are rewritten like any other.
"""

from __future__ import annotations

import onnx_ir as ir

from .linear import _weight
from .rules import Context, replace

FLOAT = ir.DataType.FLOAT.value


class DenseBF16:
    name = "matmul_bf16"

    def pattern(self, node: ir.Node) -> bool:
        return node.op_type == "MatMul" and node.domain == "" and _weight(node) is not None

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        tensor, cast_to = _weight(node)
        if cast_to is None or tensor.dtype != ir.DataType.BFLOAT16:
            return "weight is not stored as bf16 behind a Cast (nothing to read as bf16)"
        if cast_to != FLOAT:
            return f"Cast to {ir.DataType(cast_to).name}, not float32"
        if len(tensor.shape) != 2:
            return f"weight has shape {tensor.shape}: MatMulBF16 takes a 2-D [K, N] weight"
        return None

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        from mxport.ops import DOMAIN

        _attach_body(ctx.model)
        w = node.inputs[1].producer().inputs[0]  # the bf16 initializer behind the Cast
        new = ir.node("MatMulBF16", [node.inputs[0], w], {}, domain=DOMAIN, name=f"{node.name}/bf16")
        replace(ctx, node, [new], new.outputs)


def _attach_body(model: ir.Model) -> None:
    """Give the model MatMulBF16's function body (exports carry it only when used: ops.functions(used=...)), so a
    host without mxport's kernels runs the node, and the ai.mxport opset import it needs."""
    from mxport import ops

    if ("ai.mxport", "MatMulBF16", "") not in model.functions:
        for proto in ops.functions(used={"MatMulBF16"}):
            if proto.name == "MatMulBF16":
                fn = ir.serde.deserialize_function(proto)
                model.functions[fn.identifier()] = fn
    model.opset_imports.setdefault(ops.DOMAIN, ops.VERSION)
