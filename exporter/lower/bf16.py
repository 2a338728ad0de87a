"""Dense bf16 weights to ai.mxport LinearBF16 (--dense bfloat16, target cpu): mxport's native kernel reads them as stored.

    A[..., K] ─ MatMul(Cast(W_bf16 [K, N], to=float)) ─► Y            ==>   A ─ ai.mxport.LinearBF16(Wᵀ [N, K]) ─► Y
    A[..., K] ─ MatMul(Transpose(Cast(E_bf16 [N, K]))) ─► Y (tied head) ==>   A ─ ai.mxport.LinearBF16(E) ─► Y

LinearBF16 takes W [out, in], a Linear layer's own layout: the kernel reads each output's weights as one
contiguous row, so a decode step is one sequential read of the matrix (ops/csrc/mx_math.c). The [K, N] matrices of
the portable graph are written in that layout at save, read again from the checkpoint (one matrix in memory at a
time, as in the portable export; fused q/k/v and gate/up are transposed copies of their concatenation); a tied head
uses the embedding table itself, stored once (the Gather reads it too).

Exact: every bfloat16 is a float32, and the kernel multiplies in float32 (ops/linear_bf16.py has the meaning,
ops/csrc the kernel). ORT would fold the Cast into a float32 copy at load and read twice the bytes per decode
step. Without mxport's kernel library registered, ORT runs the op's function body (CastLike, Transpose, MatMul,
folded at load): the same numbers at float32 speed. The router and the fused QKV MatMul are rewritten like any
other.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .linear import weight_source
from .rules import Context, add_initializer, attach_function, lazy, replace

FLOAT = ir.DataType.FLOAT.value
CHUNK_ROWS = 4096  # output rows of Wᵀ written per step


def out_in(value: ir.Value, tensor: ir.TensorProtocol):
    """A producer of W [K, N] as Wᵀ [N, K]: straight from the checkpoint where the exporter's reader left one
    (exporter/layers.OUT_IN: one copy in memory, like the portable export), else a transposed copy of W."""
    from mxport.exporter.layers import OUT_IN

    return value.meta.get(OUT_IN) or (lambda: transposed(tensor))


def transposed(tensor: ir.TensorProtocol) -> np.ndarray:
    """W [K, N] -> Wᵀ [N, K], contiguous, written a block of rows at a time (W and Wᵀ in memory)."""
    w = tensor.numpy()
    out = np.empty(w.shape[::-1], dtype=w.dtype)
    for n0 in range(0, w.shape[1], CHUNK_ROWS):
        out[n0 : n0 + CHUNK_ROWS] = w[:, n0 : n0 + CHUNK_ROWS].T
    return out


class DenseBF16:
    name = "linear_bf16"

    def pattern(self, node: ir.Node) -> bool:
        return node.op_type == "MatMul" and node.domain == "" and weight_source(node) is not None

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        _, tensor, cast_to, _ = weight_source(node)
        if cast_to is None or tensor.dtype != ir.DataType.BFLOAT16:
            return "weight is not stored as bf16 behind a Cast (nothing to read as bf16)"
        if cast_to != FLOAT:
            return f"Cast to {ir.DataType(cast_to).name}, not float32"
        if len(tensor.shape) != 2:
            return f"weight has shape {tensor.shape}: LinearBF16 takes a 2-D weight"
        return None

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        from mxport.ops import DOMAIN

        attach_function(ctx.model, "LinearBF16")
        w, tensor, _, is_transposed = weight_source(node)
        if not is_transposed:  # W [K, N] -> [N, K]; a tied head's table E [N, K] is used as stored
            K, N = (int(d) for d in tensor.shape)
            name = (node.name or "matmul").replace("/", "_") + ".weight_nk"
            w = add_initializer(ctx, lazy(name, ir.DataType.BFLOAT16, [N, K], out_in(w, tensor)))
        new = ir.node("LinearBF16", [node.inputs[0], w], {}, domain=DOMAIN, name=f"{node.name}/bf16")
        replace(ctx, node, [new], new.outputs)

