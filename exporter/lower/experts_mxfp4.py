"""`--experts mxfp4` on float experts: encode them to MXFP4 at export (OCP MX v1.0, ops.mxfp4.encode).

    ai.mxport.MoE_2(x, router_logits, w1 [E,2I,H], w2 [E,H,I])             float experts (bf16 as stored, ...)
        ─► ai.mxport.MoEMXFP4_2(x, router_logits, w1_blocks, w1_scales, w2_blocks, w2_scales)
    ai.mxport.MoE(x, router_logits, w1, b1, w2, b2) ─► ai.mxport.MoEMXFP4(x, router_logits, w1 halves, b1, w2 halves, b2)

Attributes are kept. The encoding streams (exporter/experts.py: one expert, row chunks), runs when the file is
written, and is lossy: an export this rule touched records it (lowering report, applied "experts_mxfp4"), and
`mxport verify` then judges it with the lossy tolerances against the float reference (runtime/judge/verify.py).
The rule runs first on every target, so the later MoE rule sees MXFP4 experts (cuda: QMoE fp4; cpu: kept
portable, ORT has no CPU kernel for them).
"""

from __future__ import annotations

import onnx_ir as ir

from mxport.exporter.experts import mxfp4_encoded
from mxport.ops import mxfp4

from .rules import Context, add_initializer, const, replace

FLOAT_TO_MXFP4 = {"MoE": "MoEMXFP4", "MoE_2": "MoEMXFP4_2"}


class EncodeExpertsMXFP4:
    """ai.mxport MoE / MoE_2 with float experts -> MoEMXFP4 / MoEMXFP4_2 with experts encoded at export."""

    name = "experts_mxfp4"

    def pattern(self, node: ir.Node) -> bool:
        from mxport.ops import DOMAIN

        return node.domain == DOMAIN and node.op_type in FLOAT_TO_MXFP4

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if ctx.experts != "mxfp4":
            return f"--experts {ctx.experts}: float experts are not encoded"
        w1, w2 = self._weights(node)
        for v in (w1, w2):
            if const(v) is None:
                return f"expert weight {v.name} is computed, not an initializer"
            if v.shape is None or len(v.shape) != 3 or int(v.shape[2]) % mxfp4.BLOCK_SIZE:
                return f"expert weight {v.name} {v.shape} is not [E, rows, K] with K a multiple of {mxfp4.BLOCK_SIZE}"
        return None

    @staticmethod
    def _weights(node: ir.Node) -> tuple[ir.Value, ir.Value]:
        return (node.inputs[2], node.inputs[4]) if node.op_type == "MoE" else (node.inputs[2], node.inputs[3])

    def rewrite(self, node: ir.Node, ctx: Context) -> None:
        w1, w2 = self._weights(node)
        halves = []
        for v in (w1, w2):
            blocks, scales = mxfp4_encoded(const(v), v.name)
            halves.append((add_initializer(ctx, blocks), add_initializer(ctx, scales)))
        (w1b, w1s), (w2b, w2s) = halves
        x, router = node.inputs[0], node.inputs[1]
        if node.op_type == "MoE":
            b1, b2 = node.inputs[3], node.inputs[5]
            inputs = [x, router, w1b, w1s, b1, w2b, w2s, b2]
        else:
            inputs = [x, router, w1b, w1s, w2b, w2s]
        attrs = {name: a.value for name, a in node.attributes.items()}
        new = ir.node(FLOAT_TO_MXFP4[node.op_type], inputs, attrs, domain=node.domain, name=node.name)
        replace(ctx, node, [new], new.outputs)
