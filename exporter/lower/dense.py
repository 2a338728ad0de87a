"""Dense weights to com.microsoft MatMulNBits (optional: --dense int8 | int4; default float32 keeps MatMul).

    A[..., K] ─ MatMul(W [K, N] or Cast(W_bf16)) ─► Y      ==>   A ─ MatMulNBits(B, scales){K, N, bits, block_size 32,
                                                                                  accuracy_level} ─► Y
    B uint8 [N, K/32, 32·bits/8]: column n of W in blocks of 32 along K, q + 2^(bits-1) (default zero point),
    low nibble first for 4 bits; scales float32 [N, K/32]. int4 scales minimise each block's squared error
    (moe.int4_quantize), int8 scales are absmax/127.

accuracy_level (Context.accuracy_level, default 4) 4 lets ORT quantize A to int8 per block (its fast kernels;
level 0 keeps A in float32 but runs 4-8x slower for 4 bits and ~50x slower for 8 bits here), so at level 4 even
int8 weights are not exact: LOWERING.md reports the cost. The router stays float32 (a quantized router flips expert choices), and so does anything
whose K is not a multiple of 32.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .linear import weight_source
from .moe import INT4_BLOCK, int4_quantize
from .rules import MS_DOMAIN, Context, add_initializer, lazy, replace

BLOCK = INT4_BLOCK
MOE_OPS = {("com.microsoft", "MoE"), ("com.microsoft", "QMoE"), ("ai.mxport", "MoE"), ("ai.mxport", "MoEMXFP4"),
           ("ai.mxport", "MoE_2"), ("ai.mxport", "MoEMXFP4_2")}


def int8_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float [..., K] -> (uint8 [..., K] = q + 128, float32 scales [..., K/32]); absmax per block of 32."""
    blocks = np.asarray(w, dtype=np.float32).reshape(w.shape[:-1] + (-1, BLOCK))
    scale = np.abs(blocks).max(axis=-1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(blocks / scale[..., None]), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8).reshape(w.shape), scale


CHUNK_BYTES = 64 << 20  # float32 bytes of W's columns quantized per step


def quantize_columns(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] as stored (bf16 or float32) -> MatMulNBits parts for W.T, one row per output column:
    (uint8 [N, K·bits/8], float32 scales [N, K/32]).

    Columns are converted to float32 and quantized a chunk at a time (blocks run along K, within a column, so
    chunks are independent): memory is the stored tensor and the outputs, not a float32 copy of the whole W
    (gpt-oss-20b's lm_head: 2.3 GB in float32, twice over with the transpose)."""
    K, N = w.shape
    packed = np.empty((N, K * bits // 8), dtype=np.uint8)
    scales = np.empty((N, K // BLOCK), dtype=np.float32)
    step = max(1, CHUNK_BYTES // (4 * K))
    for n0 in range(0, N, step):
        cols = np.ascontiguousarray(np.asarray(w[:, n0 : n0 + step], dtype=np.float32).T)  # [n, K]
        q, sc = int4_quantize(cols) if bits == 4 else int8_quantize(cols)
        packed[n0 : n0 + len(cols)] = q.reshape(len(cols), -1)
        scales[n0 : n0 + len(cols)] = sc
    return packed, scales


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


class DenseNBits:
    name = "matmul_nbits"

    def __init__(self, bits: int):
        self.bits = bits

    def pattern(self, node: ir.Node) -> bool:
        return node.op_type == "MatMul" and node.domain == "" and _matrix(node) is not None

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        tensor, transposed = _matrix(node)
        if len(tensor.shape) != 2:
            return f"weight has shape {tensor.shape}: MatMulNBits takes a 2-D [K, N] weight"
        K = int(tensor.shape[1 if transposed else 0])
        if K % BLOCK:
            return f"K={K} is not a multiple of the block size {BLOCK}"
        if _feeds_router(node.outputs[0]):
            return "router: kept float32 (quantized routing flips expert choices)"
        return None

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        ctx.use_ms_domain()
        tensor, transposed = _matrix(node)
        K, N = (int(d) for d in tensor.shape[:: -1 if transposed else 1])
        prefix = (node.name or "matmul").replace("/", "_")
        bits = self.bits
        cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def parts() -> tuple[np.ndarray, np.ndarray]:
            if "q" not in cache:
                stored = tensor.numpy()  # [K, N], or [N, K] for a tied head: its transposed view reads rows
                cache["q"] = quantize_columns(stored.T if transposed else stored, bits)
            return cache["q"]

        def weights() -> np.ndarray:
            return parts()[0].reshape(N, K // BLOCK, BLOCK * bits // 8)

        def scales() -> np.ndarray:
            out = parts()[1]
            cache.clear()
            return out

        b = add_initializer(ctx, lazy(f"{prefix}.q{bits}", ir.DataType.UINT8, [N, K // BLOCK, BLOCK * bits // 8], weights))
        s = add_initializer(ctx, lazy(f"{prefix}.q{bits}_scales", ir.DataType.FLOAT, [N, K // BLOCK], scales))
        attrs = {"K": K, "N": N, "bits": bits, "block_size": BLOCK, "accuracy_level": ctx.accuracy_level}
        new = ir.node("MatMulNBits", [node.inputs[0], b, s], attrs, domain=MS_DOMAIN, name=f"{node.name}/nbits")
        replace(ctx, node, [new], new.outputs)
