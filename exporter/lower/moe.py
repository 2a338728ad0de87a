"""Lower the portable MoE nodes (ai.mxport MoEMXFP4 / MoE, and their bias-free version 2) to ONNX Runtime's
com.microsoft MoE and QMoE.

    ai.mxport.MoEMXFP4(x, router_logits, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2)
    ai.mxport.MoE(x, router_logits, w1, b1, w2, b2)
    ai.mxport.MoEMXFP4_2 / MoE_2: the same without b1, b2 (ORT's optional bias inputs are left empty)
        │  experts=float32 ─► com.microsoft.MoE  fc1 = decode(w1) f32 [E,2I,H], fc2 = decode(w2) f32 [E,H,I]   exact
        │  experts=int8 ─► com.microsoft.QMoE  8 bit, block 32: q = 2·E2M1 code value ∈ [-12,12] stored q+128,
        │                                      scale 2^(s-128)  (ops.mxfp4.exact_int8): weights exact; ORT's
        │                                      block-wise 8-bit kernel quantizes activations to int8 (lossy)
        │                                      (float experts: ops/quant.int8_quantize, absmax/127, lossy)
        │  experts=int4 ─► com.microsoft.QMoE  4 bit, block 32, scale per block minimising squared error,
        │                                      q+8 packed low nibble first; accuracy_level from the options
        │                                      (4: int8 activations, default; 0: float32 activations)
        │  experts=mxfp4, target cuda ─► com.microsoft.QMoE quant_type='fp4': the MXFP4 bytes as they are,
        │                             [E,N,K/32,16] viewed as [E,N,K/2], scales as float8e8m0 [E,N,K/32]
        └  experts=mxfp4, target cpu ─► kept: ai.mxport.MoEMXFP4 runs on mxport's native kernel (ops/csrc,
                                      registered by mxport's sessions; exact), else on its function body

ORT's contract (onnxruntime 1.32, contrib_defs / docs/ContribOperators.md): weights are [E, N, K·bits/8]
(out-major, "column major per expert"), block scales [E, N, K/block], default zero point 2^(bits-1);
swiglu_fusion=1 means gate/up interleaved on each fc1 row (= gpt-oss); router_probs with
normalize_routing_weights=1 takes the top-k logits and softmaxes them, 0 softmaxes all E and keeps the chosen
probabilities (both checked against the NumPy kernel). The CPU kernel runs SwiGLU only interleaved
(swiglu_fusion=1; 2 = concatenated is refused at session creation by ORT 1.32): a portable node with
swiglu_interleaved=0 (gate rows first, Qwen3-MoE) gets its fc1 rows interleaved at export, an exact row
permutation (MXFP4 blocks and scales are per row, so they permute as they are). activation_alpha 1 / beta 0
without swiglu_limit is plain SwiGLU on ORT 1.32 (tests/exporter/lower/test_moe_2.py; docs/NUMERICS.md
"ONNX Runtime contrib ops" warns that older kernels hard-coded gpt-oss's constants).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mxport.contract import modes
from mxport.ops import mxfp4
from mxport.ops.quant import BLOCK as INT4_BLOCK
from mxport.ops.quant import int4_from_mxfp4, int4_quantize, int8_exact, int8_quantize

from .rules import MS_DOMAIN, Context, add_initializer, attr, const, lazy, lazy_pair, replace

# Every MoE op a graph may hold, portable (ai.mxport, experts MXFP4 or float) or lowered (com.microsoft): the router
# and the expert weights of these nodes are recognised by dense.py and counted k-of-E by bench's traffic estimate.
MOE_OPS = {("com.microsoft", "MoE"), ("com.microsoft", "QMoE"), ("ai.mxport", "MoE"), ("ai.mxport", "MoEMXFP4"),
           ("ai.mxport", "MoE_2"), ("ai.mxport", "MoEMXFP4_2")}
# QMoE accuracy_level for 4-bit experts comes from the lowering options (Context.accuracy_level, default 4):
# 4 = int8 activations (ORT's fast kernels, ~2.5x faster decode here than level 0, but its prepacked weights with
# per-block sums take ~30% more memory); 0 = float32 activations on the weights as stored.


# ---- weight transforms (pure NumPy, one expert tensor at a time; the quantizers are ops/quant.py's) ------------
def interleave_rows(two_i: int) -> np.ndarray:
    """Row order that turns [gate rows (I), up rows (I)] into ORT's interleaved fc1: gate_0, up_0, gate_1, ..."""
    half = two_i // 2
    return np.stack([np.arange(half), half + np.arange(half)], axis=1).reshape(-1)


# ---- the rule ------------------------------------------------------------------------------------------------
class LowerMoE:
    """ai.mxport MoEMXFP4 / MoE (and _2) -> com.microsoft MoE (float32) or QMoE (int8, int4, fp4 on CUDA)."""

    name = "moe"

    def pattern(self, node: ir.Node) -> bool:
        from mxport.ops import DOMAIN

        return node.domain == DOMAIN and node.op_type in ("MoEMXFP4", "MoE", "MoEMXFP4_2", "MoE_2")

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        mode = ctx.experts
        if mode not in (takes := modes.values("experts", ctx.target)):
            return f"unknown experts mode {mode!r} (--target {ctx.target} takes {', '.join(takes)})"
        if mode == "mxfp4" and not node.op_type.startswith("MoEMXFP4"):
            return "experts are float (not MXFP4) and were not encoded: --experts mxfp4 has nothing to keep"
        if mode == "mxfp4" and ctx.target == "cpu":
            return None  # kept as ai.mxport.MoEMXFP4(_2): mxport's native kernel (ops/csrc), any swiglu layout
        weights = node.inputs[2:]
        missing = [i for i, v in enumerate(weights) if v is not None and const(v) is None]
        if missing:
            return f"expert weights must be initializers (inputs {[i + 2 for i in missing]} are computed)"
        return None

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        if ctx.experts == "mxfp4" and ctx.target == "cpu":
            return  # the node stays: ORT runs mxport's registered kernel, or the function body without it
        ctx.use_ms_domain()
        x, router = node.inputs[0], node.inputs[1]
        if node.op_type == "MoEMXFP4":
            w1b, w1s, b1, w2b, w2s, b2 = node.inputs[2:8]
        elif node.op_type == "MoEMXFP4_2":
            (w1b, w1s, w2b, w2s), b1, b2 = node.inputs[2:6], None, None
        elif node.op_type == "MoE":
            w1v, b1, w2v, b2 = node.inputs[2:6]
        else:  # MoE_2
            (w1v, w2v), b1, b2 = node.inputs[2:4], None, None
        # ORT wants fc1 interleaved (gate_0, up_0, ...): permute rows of a gate-first w1 (exact)
        order = None if attr(node, "swiglu_interleaved", 0) == 1 else "interleave"
        if node.op_type.startswith("MoEMXFP4"):
            w1, w2 = _Mxfp4Source(w1b, w1s, order), _Mxfp4Source(w2b, w2s)
        else:
            w1, w2 = _DenseSource(w1v, order), _DenseSource(w2v)
        prefix = (node.name or "moe").replace("/", "_")
        attrs = {
            "k": attr(node, "k", 1),
            "activation_type": "swiglu",
            "swiglu_fusion": 1,
            "activation_alpha": float(attr(node, "activation_alpha", 1.0)),
            "activation_beta": float(attr(node, "activation_beta", 0.0)),
            "normalize_routing_weights": int(attr(node, "normalize_routing_weights", 1)),
        }
        limit = float(attr(node, "swiglu_limit", 0.0))
        if limit:
            attrs["swiglu_limit"] = limit  # absent = no clamp in ORT; 0 in ai.mxport means no clamp
        mode = ctx.experts
        if mode == "float32":
            fc1 = add_initializer(ctx, lazy(f"{prefix}.fc1", ir.DataType.FLOAT, w1.shape, w1.float32))
            fc2 = add_initializer(ctx, lazy(f"{prefix}.fc2", ir.DataType.FLOAT, w2.shape, w2.float32))
            new = ir.node("MoE", [x, router, fc1, b1, fc2, b2], attrs, domain=MS_DOMAIN, name=f"{prefix}.MoE")
        else:
            inputs = []
            for tag, src in (("fc1", w1), ("fc2", w2)):
                if mode == "int8":
                    wq, sc = src.int8_parts(ctx, prefix, tag)
                elif mode == "int4":
                    wq, sc = src.int4_parts(ctx, prefix, tag)
                else:
                    wq, sc = src.fp4_parts(ctx, prefix, tag)
                inputs.append((wq, sc))
            (fc1, s1), (fc2, s2) = inputs
            qin: list[ir.Value | None] = [x, router, fc1, s1, b1, fc2, s2, b2]
            if mode == "mxfp4":
                attrs.update(quant_type="fp4", block_size=mxfp4.BLOCK_SIZE)
                E = w1.shape[0]
                ones = lambda: np.ones(E, dtype=np.float32)  # noqa: E731 - MXFP4 needs no global scale
                g1 = add_initializer(ctx, lazy(f"{prefix}.fc1_global_scale", ir.DataType.FLOAT, [E], ones))
                g2 = add_initializer(ctx, lazy(f"{prefix}.fc2_global_scale", ir.DataType.FLOAT, [E], ones))
                ctx.shared.setdefault("keep_float32", set()).update({g1.name, g2.name})
                # inputs 8..13: fc3 w/s/b, fc1/fc2/fc3 zero points, 14 router_weights, 15/16 global scales
                qin += [None] * 7 + [g1, g2]
            else:
                # 8-bit block-wise QMoE has no float32-activation kernel: its activations are int8 at any level
                level = ctx.accuracy_level if mode == "int4" else 0
                attrs.update(expert_weight_bits=8 if mode == "int8" else 4, block_size=INT4_BLOCK, accuracy_level=level)
            new = ir.node("QMoE", qin, attrs, domain=MS_DOMAIN, name=f"{prefix}.QMoE")
        replace(ctx, node, [new], new.outputs)


class _Mxfp4Source:
    """An expert weight stored as MXFP4 blocks [E,N,K/32,16] + scales [E,N,K/32] (out-major, as ORT wants)."""

    def __init__(self, blocks: ir.Value, scales: ir.Value, order: str | None = None):
        self._blocks, self._scales = const(blocks), const(scales)
        E, N, NB, _ = self._blocks.shape
        self.shape = (E, N, NB * mxfp4.BLOCK_SIZE)
        self.rows = interleave_rows(N) if order == "interleave" else None  # row permutation, None = as stored

    def blocks(self) -> np.ndarray:
        """uint8 [E,N,K/32,16] with the rows (axis 1) in ORT's order (MXFP4 is per row: rows permute as bytes)."""
        b = self._blocks.numpy()
        return b if self.rows is None else np.ascontiguousarray(b[:, self.rows])

    def scales(self) -> np.ndarray:
        """uint8 [E,N,K/32], rows as blocks()."""
        s = self._scales.numpy()
        return s if self.rows is None else np.ascontiguousarray(s[:, self.rows])

    def float32(self) -> np.ndarray:
        return mxfp4.decode(self.blocks(), self.scales(), np.float32)

    def int8_parts(self, ctx: Context, prefix: str, tag: str) -> tuple[ir.Value, ir.Value]:
        E, N, K = self.shape
        w, s = lazy_pair((f"{prefix}.{tag}_q8", ir.DataType.UINT8, [E, N, K]),
                         (f"{prefix}.{tag}_q8_scales", ir.DataType.FLOAT, [E, N, K // mxfp4.BLOCK_SIZE]),
                         lambda: int8_exact(self.blocks(), self.scales()))  # one decode for both
        return add_initializer(ctx, w), add_initializer(ctx, s)

    def int4_parts(self, ctx: Context, prefix: str, tag: str) -> tuple[ir.Value, ir.Value]:
        return _quantized_parts(ctx, prefix, tag, self.shape, self.int4)

    def int4(self) -> tuple[np.ndarray, np.ndarray]:
        return int4_from_mxfp4(self.blocks(), self.scales())

    def fp4_parts(self, ctx: Context, prefix: str, tag: str) -> tuple[ir.Value, ir.Value]:
        E, N, K = self.shape
        w = lazy(f"{prefix}.{tag}_fp4", ir.DataType.UINT8, [E, N, K // 2],
                 lambda: np.ascontiguousarray(self.blocks()).reshape(E, N, K // 2))
        s = lazy(f"{prefix}.{tag}_e8m0", ir.DataType.FLOAT8E8M0, [E, N, K // mxfp4.BLOCK_SIZE],
                 lambda: mxfp4.as_e8m0(self.scales()))
        return add_initializer(ctx, w), add_initializer(ctx, s)


class _DenseSource:
    """An expert weight stored dense, out-major [E,N,K] as the portable MoE takes it."""

    def __init__(self, value: ir.Value, order: str | None = None):
        self.tensor = const(value)
        self.shape = tuple(self.tensor.shape)
        self.rows = interleave_rows(self.shape[1]) if order == "interleave" else None  # row permutation

    def float32(self) -> np.ndarray:
        w = np.asarray(self.tensor.numpy(), dtype=np.float32)  # bf16 -> float32 is exact
        return w if self.rows is None else np.ascontiguousarray(w[:, self.rows])

    def int8_parts(self, ctx: Context, prefix: str, tag: str) -> tuple[ir.Value, ir.Value]:
        return _quantized_parts(ctx, prefix, tag, self.shape, lambda: int8_quantize(self.float32()), bits=8)

    def int4_parts(self, ctx: Context, prefix: str, tag: str) -> tuple[ir.Value, ir.Value]:
        return _quantized_parts(ctx, prefix, tag, self.shape, lambda: int4_quantize(self.float32()))


def _quantized_parts(ctx: Context, prefix: str, tag: str, shape: tuple[int, ...], quantize,
                     bits: int = 4) -> tuple[ir.Value, ir.Value]:
    """QMoE weight + scales initializers from one lazy `quantize() -> (q, scales)`: 4 bit packed [E,N,K/2], 8 bit [E,N,K]."""
    E, N, K = shape
    q = f"{prefix}.{tag}_q{bits}"
    w, s = lazy_pair((q, ir.DataType.UINT8, [E, N, K * bits // 8]),
                     (f"{q}_scales", ir.DataType.FLOAT, [E, N, K // INT4_BLOCK]), quantize)
    return add_initializer(ctx, w), add_initializer(ctx, s)
