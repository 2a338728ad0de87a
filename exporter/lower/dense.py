"""Dense weights to com.microsoft MatMulNBits (optional: --dense int8 | int4; default float32 keeps MatMul).

    A[..., K] ─ MatMul(W [K, N] or Cast(W_bf16)) ─► Y      ==>   A ─ MatMulNBits(B, scales){K, N, bits, block_size 32,
                                                                                  accuracy_level} ─► Y
    B uint8 [N, K/32, 32·bits/8]: column n of W in blocks of 32 along K, q + 2^(bits-1) (default zero point),
    low nibble first for 4 bits; scales float32 [N, K/32]. int4 scales minimise each block's squared error
    (ops/quant.py, shared with QMoE and the NumPy reference), int8 scales are absmax/127.

accuracy_level (Context.accuracy_level, default 4) 4 lets ORT quantize A to int8 per block (its fast kernels;
level 0 keeps A in float32 but runs 4-8x slower for 4 bits and ~50x slower for 8 bits here), so at level 4 even
int8 weights are not exact: LOWERING.md reports the cost. The router stays float32 (a quantized router flips expert choices), and so does anything
whose K is not a multiple of 32.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mxport.ops.quant import BLOCK, quantize

from .linear import weight_source
from .moe import MOE_OPS
from .rules import MS_DOMAIN, Context, add_initializer, lazy_pair, replace


CHUNK_BYTES = 64 << 20  # float32 bytes of W's columns quantized per step


def quantize_columns(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] as stored (bf16 or float32) -> MatMulNBits parts for W.T, one row per output column:
    (uint8 [N, K·bits/8], float32 scales [N, K/32])."""
    K, N = w.shape
    return quantize_rows(lambda a, b: np.ascontiguousarray(w[:, a:b].T), N, K, bits)


def quantize_rows(rows, n: int, k: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits parts of the matrix [N, K] whose rows(start, stop) returns rows as stored.

    Rows are converted to float32 and quantized a chunk at a time (blocks run along K, within a row, so chunks are
    independent): memory is the outputs and one chunk (plus the stored tensor where rows come from it), not a
    float32 copy of the whole W (gpt-oss-20b's lm_head: 2.3 GB in float32, twice over with the transpose)."""
    packed = np.empty((n, k * bits // 8), dtype=np.uint8)
    scales = np.empty((n, k // BLOCK), dtype=np.float32)
    for n0, n1, chunk in each_chunk(rows, n, max(1, CHUNK_BYTES // (4 * k))):
        q, sc = quantize(np.asarray(chunk, dtype=np.float32), bits)  # [n, K]
        packed[n0:n1] = q.reshape(n1 - n0, -1)
        scales[n0:n1] = sc
    return packed, scales


def row_reader(matmul: ir.Node):
    """rows(start, stop) of a MatMul's weight as W.T [N, K] (out, in): straight from the checkpoint where the
    exporter's reader left a reader whose rows are those (exporter/layers.SOURCE_ROWS: a chunk in memory at a time;
    a checkpoint [out, in] matrix, or a table read through the tied head's Transpose), else from the stored tensor
    (read whole once: fused q/k/v and gate/up are concatenations made at export, GPT-2's Conv1D is [in, out])."""
    from mxport.exporter.layers import SOURCE_ROWS

    value, tensor, _, transposed = weight_source(matmul)
    source = value.meta.get(SOURCE_ROWS)
    if source is not None and source[1] != transposed:  # B = W = source.T, or B = Transpose(source)
        return source[0]
    return _StoredRows(tensor, transposed)


class _StoredRows:
    """rows(start, stop) of W.T from a stored tensor, read whole on first use and dropped by close()."""

    def __init__(self, tensor: ir.TensorProtocol, transposed: bool) -> None:
        self.tensor, self.transposed, self.w = tensor, transposed, None

    def __call__(self, a: int, b: int) -> np.ndarray:
        if self.w is None:
            self.w = self.tensor.numpy()
        return self.w[a:b] if self.transposed else np.ascontiguousarray(self.w[:, a:b].T)

    def close(self) -> None:
        self.w = None


def each_chunk(rows, n: int, step: int):
    """(start, stop, rows(start, stop)) over [0, n) in steps; a reader with close() is closed at the end."""
    try:
        for n0 in range(0, n, step):
            n1 = min(n, n0 + step)
            yield n0, n1, rows(n0, n1)
    finally:
        if hasattr(rows, "close"):
            rows.close()


def _feeds_router(value: ir.Value, depth: int = 3) -> bool:
    """True if `value` reaches a MoE node's router input (index 1) within `depth` nodes."""
    for use in value.uses():
        node = use.node
        if (node.domain, node.op_type) in MOE_OPS:
            if use.idx == 1:
                return True
            continue
        if depth > 1 and any(_feeds_router(out, depth - 1) for out in node.outputs):
            return True
    return False


def _matrix(matmul: ir.Node) -> tuple[ir.TensorProtocol, bool] | None:
    """(stored tensor, whether it is stored [N, K], i.e. transposed) behind MatMul input B, or None. A tied head's
    table E [N, K] is W.T already: MatMulNBits reads its rows, no transpose."""
    source = weight_source(matmul)
    return None if source is None else (source[1], source[3])


def weight_matmul(node: ir.Node) -> bool:
    """A standard MatMul whose B is a constant weight (the pattern of every quantizing rule)."""
    return node.op_type == "MatMul" and node.domain == "" and _matrix(node) is not None


def refusal(node: ir.Node, op_type: str) -> str | None:
    """Why a quantizing rule leaves this weight MatMul alone (not 2-D, or a MoE router), else None."""
    tensor, _ = _matrix(node)
    if len(tensor.shape) != 2:
        return f"weight has shape {tensor.shape}: {op_type} takes a 2-D weight"
    if _feeds_router(node.outputs[0]):
        return "router: kept float32 (quantized routing flips expert choices)"
    return None


class DenseNBits:
    name = "matmul_nbits"

    def __init__(self, bits: int):
        self.bits = bits

    def pattern(self, node: ir.Node) -> bool:
        return weight_matmul(node)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if reason := refusal(node, "MatMulNBits"):
            return reason
        tensor, transposed = _matrix(node)
        K = int(tensor.shape[1 if transposed else 0])
        return f"K={K} is not a multiple of the block size {BLOCK}" if K % BLOCK else None

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        ctx.use_ms_domain()
        tensor, transposed = _matrix(node)
        K, N = (int(d) for d in tensor.shape[:: -1 if transposed else 1])
        prefix = (node.name or "matmul").replace("/", "_")
        bits = self.bits
        rows = row_reader(node)  # lazy: reads nothing until saved
        blocks = [N, K // BLOCK, BLOCK * bits // 8]

        def make() -> tuple[np.ndarray, np.ndarray]:
            packed, scales = quantize_rows(rows, N, K, bits)
            return packed.reshape(blocks), scales

        b, s = lazy_pair((f"{prefix}.q{bits}", ir.DataType.UINT8, blocks),
                         (f"{prefix}.q{bits}_scales", ir.DataType.FLOAT, [N, K // BLOCK]), make)
        b, s = add_initializer(ctx, b), add_initializer(ctx, s)
        attrs = {"K": K, "N": N, "bits": bits, "block_size": BLOCK, "accuracy_level": ctx.accuracy_level}
        new = ir.node("MatMulNBits", [node.inputs[0], b, s], attrs, domain=MS_DOMAIN, name=f"{node.name}/nbits")
        replace(ctx, node, [new], new.outputs)
