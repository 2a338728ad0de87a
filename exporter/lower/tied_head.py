"""A tied output projection (the embedding table E [V,H] stored once) read without a transposed copy.

    x ─ MatMul(Transpose(E or Cast(E)){perm 1,0}) ─► logits      ==>   x ─ com.microsoft.FusedMatMul(E or Cast(E))
                                                                              {transB 1, alpha 1} ─► logits

The portable graph spells x @ Eᵀ with standard ops (exporter/layers.tied_output). ONNX Runtime constant-folds the
Transpose into a second float32 table [H,V] and then prepacks that for its GEMM: three tables in memory. FusedMatMul
with transB=1 reads E as it is and prepacks it once, the memory of an untied head (measured with the Qwen3-0.6B
head, 151936 x 1024 bf16: 1.85 GB peak RSS with MatMul + Transpose, 1.25 GB with FusedMatMul or Gemm(transB=1)).
Same dot products: exact. It runs last: `--dense int4|int8` has already made the MatMul a MatMulNBits from E's
rows (dense.py), and `--last-logits` has sliced its input.
"""

from __future__ import annotations

import onnx_ir as ir

from .rules import MS_DOMAIN, Context, attr, const, replace


def transposed_table(matmul: ir.Node) -> ir.Value | None:
    """E or Cast(E) behind MatMul's B = Transpose(·){perm [1,0]} with E a 2-D constant; else None."""
    b = matmul.inputs[1]
    t = b.producer() if b is not None else None
    if t is None or t.op_type != "Transpose" or t.domain != "" or list(attr(t, "perm", [1, 0])) != [1, 0]:
        return None
    src = t.inputs[0]
    tensor = const(src)
    if tensor is None:
        cast = src.producer()
        if cast is None or cast.op_type != "Cast" or cast.domain != "":
            return None
        tensor = const(cast.inputs[0])
    return src if tensor is not None and len(tensor.shape) == 2 else None


class TiedHead:
    name = "tied_head"

    def pattern(self, node: ir.Node) -> bool:
        return node.op_type == "MatMul" and node.domain == "" and transposed_table(node) is not None

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        return None

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        ctx.use_ms_domain()
        table = transposed_table(node)
        new = ir.node("FusedMatMul", [node.inputs[0], table], {"transA": 0, "transB": 1, "alpha": 1.0},
                      domain=MS_DOMAIN, name=f"{node.name or 'lm_head'}/fused_transb")
        replace(ctx, node, [new], new.outputs)
