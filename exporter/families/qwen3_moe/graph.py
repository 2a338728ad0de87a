"""Qwen3-MoE as an ONNX graph: Qwen3's wiring (exporter/families/qwen3/graph.py) with sparse MoE blocks.

    per layer i (nodes "layers.{i}/..."):
        n = rmsnorm(x);  x += o_proj(Attention(rope(q_norm(q_proj(n))), rope(k_norm(k_proj(n))), v_proj(n)))
        n = rmsnorm(x);  x += MoE_2(n, n @ gate.T, gate_up_proj, down_proj)    sparse layers (cfg.sparse(i))
                         x += down(silu(gate(n)) * up(n))                     the others
        (value "layers.{i}/residual", io.RESIDUAL: the residual stream after layer i)

MoE_2 (ai.mxport, ops/moe_2.py) takes the router logits and the experts as stored (bf16 stays bf16, gate rows
first: swiglu_interleaved 0), softmax over all E, top-k, renormalised iff norm_topk_prob (normalize_routing_weights),
plain SwiGLU (no clamp, alpha 1, beta 0), no biases. `--experts mxfp4` turns it into MoEMXFP4_2 with the experts
encoded at export (exporter/lower/experts_mxfp4.py); `--target cpu` into com.microsoft MoE / QMoE (lower/moe.py).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mxport.exporter.experts import experts_initializer
from mxport.exporter.families.qwen3_moe.config import Qwen3MoeConfig
from mxport.exporter.graph import Builder
from mxport.exporter.families.qwen3 import graph as qwen3
from mxport.exporter.layers import DOMAIN, Weights, linear
from mxport.exporter.families.qwen3.graph import embed, final_norm, output, positions

__all__ = ["embed", "positions", "layer", "final_norm", "output", "moe"]


def moe(b: Builder, cfg: Qwen3MoeConfig, w: Weights, layer: int, x: ir.Value) -> ir.Value:
    """Router + top-k bias-free SwiGLU experts on normed x [B,S,H] -> [B,S,H] (tokens flattened to [T,H])."""
    p = f"model.layers.{layer}.mlp"
    H, E = cfg.hidden_size, cfg.num_experts
    with b.scope("moe"):
        logits = linear(b, w, x, f"{p}.gate", "router", bias=False)  # [B,S,E]
        tokens = b.op("Reshape", x, b.const([-1, H], np.int64, "shape_tokens"), role="tokens")  # [T,H]
        logits = b.op("Reshape", logits, b.const([-1, E], np.int64, "shape_router"), role="router_logits")  # [T,E]
        w1 = experts_initializer(b, w.ckpt, f"{p}.experts.gate_up_proj")  # [E,2I,H] as stored
        w2 = experts_initializer(b, w.ckpt, f"{p}.experts.down_proj")  # [E,H,I]
        y = b.op("MoE_2", tokens, logits, w1, w2, role="experts", domain=DOMAIN,
                 k=cfg.num_experts_per_tok, normalize_routing_weights=int(cfg.norm_topk_prob), swiglu_interleaved=0,
                 swiglu_limit=0.0, activation_alpha=1.0, activation_beta=0.0)  # [T,H]
        return b.op("Reshape", y, b.op("Shape", x, role="shape_in"), role="unflatten")  # [B,S,H]


def layer(b: Builder, cfg: Qwen3MoeConfig, w: Weights, i: int, x: ir.Value, rope: tuple[ir.Value, ir.Value],
          past: tuple[ir.Value, ir.Value], attention_mask: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """x [B,S,H] -> (x after layer i, present_key, present_value): Qwen3's layer, the MoE block on sparse layers."""
    sparse = (lambda n: moe(b, cfg, w, i, n)) if cfg.sparse(i) else None
    return qwen3.layer(b, cfg, w, i, x, rope, past, attention_mask, mlp=sparse)
