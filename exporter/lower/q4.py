"""Dense weights to ai.mxport LinearQ4 (--dense q4, target cpu): 4 bits in super-blocks, read by mxport's kernel.

    A[..., K] ─ MatMul(W [K, N] or Cast(W_bf16)) ─► Y                ==>   A ─ ai.mxport.LinearQ4(Wq [N, S, 136], D [N, S]) ─► Y
    A[..., K] ─ MatMul(Transpose(E [N, K])) ─► Y (tied head)          ==>   A ─ ai.mxport.LinearQ4(Eq, D) ─► Y

Every output row of W (a Linear layer's [out, in] row) is quantized as ops/linear_q4.py lays it out: symmetric
4 bits, a uint8 scale per 32 values and a float32 scale per 256 (4.375 bits per weight), each sub-block's scale
chosen for the least squared error as `--dense int4` chooses it. The tied head is quantized from the table's
rows; the embedding Gather keeps the float table. The router of a MoE stays float32, as for --dense int4.

Lossy, like `--dense int4`: the weights are rounded, and mxport's native kernel quantizes activations to int8
per 256 (docs/LOWERING.md reports the error). Without mxport's kernels ORT runs the op's function body (decode
and a float32 MatMul, folded at load up to ORT's 1 GiB limit).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from . import dense
from .dense import _matrix, each_chunk, refusal, row_reader, weight_matmul
from .rules import Context, add_initializer, attach_function, lazy_pair, replace


def quantize_rows(rows, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """LinearQ4 parts of the matrix [N, K] whose rows(start, stop) returns rows as stored (dense.row_reader): a
    chunk of rows at a time, so memory is the outputs and one chunk."""
    from mxport.ops import linear_q4

    s = linear_q4.super_blocks(k)
    packed = np.empty((n, s, linear_q4.BYTES), np.uint8)
    scales = np.empty((n, s), np.float32)
    for n0, n1, chunk in each_chunk(rows, n, max(1, dense.CHUNK_BYTES // (4 * k))):
        packed[n0:n1], scales[n0:n1] = linear_q4.quantize(chunk)
    return packed, scales


class DenseQ4:
    name = "linear_q4"

    def pattern(self, node: ir.Node) -> bool:
        return weight_matmul(node)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        return refusal(node, "LinearQ4")  # any K: the last super-block is zero-padded

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        from mxport.ops import DOMAIN, linear_q4

        attach_function(ctx.model, "LinearQ4")
        tensor, transposed = _matrix(node)
        k, n = (int(d) for d in tensor.shape[:: -1 if transposed else 1])
        s = linear_q4.super_blocks(k)
        prefix = (node.name or "matmul").replace("/", "_")
        rows = row_reader(node)  # lazy: reads nothing until saved
        w, d = lazy_pair((f"{prefix}.q4", ir.DataType.UINT8, [n, s, linear_q4.BYTES]),
                         (f"{prefix}.q4_scales", ir.DataType.FLOAT, [n, s]), lambda: quantize_rows(rows, n, k))
        w, d = add_initializer(ctx, w), add_initializer(ctx, d)
        new = ir.node("LinearQ4", [node.inputs[0], w, d], {}, domain=DOMAIN, name=f"{node.name}/q4")
        replace(ctx, node, [new], new.outputs)
