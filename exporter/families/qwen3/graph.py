"""Qwen3 as an ONNX graph: the family's wiring over the shared layers (exporter/layers.py).

    input_ids [B,S] ─ Gather(embed) ─ Cast ─► x [B,S,H]
    position_ids [B,S] ─► cos, sin [B,S,D/2]   (once; rope = RotaryEmbedding-23, default / linear / YaRN tables)
    per layer i (nodes "layers.{i}/..."):
        n = rmsnorm(x)
        q = rope(q_norm(q_proj(n)))   k = rope(k_norm(k_proj(n)))   v = v_proj(n)   (q_norm, k_norm: RMSNorm over
                                                                                   head_dim, per head)
        x += o_proj(Attention(q, k, v, past, mask, no sinks, window = sliding layers' window))
        n = rmsnorm(x);  x += down(silu(gate(n)) * up(n))       (value "layers.{i}/residual": io.RESIDUAL)
    logits [B,S,V] = rmsnorm(x) @ lm_head.T, or @ embed.T when tied (the table stored once: layers.tied_output)

Only the ai.mxport Attention op is custom; everything else is standard opset 23. Qwen3-MoE reuses `attention`.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from mxport.contract import io
from mxport.exporter.families.qwen3.config import Qwen3Config
from mxport.exporter.graph import Builder
from mxport.exporter.layers import (FLOAT, Weights, apply_rope, attention as attention_op, head_rms_norm, linear,
                                    rms_norm, rope_tables, swiglu_mlp, tied_output)

def embed(b: Builder, cfg: Qwen3Config, w: Weights, input_ids: ir.Value, position_ids: ir.Value) -> ir.Value:
    """Embedding rows [B,S,H] in float32; the table stays as stored and only the rows are cast."""
    with b.scope("embed"):
        x = b.op("Gather", w.stored("model.embed_tokens.weight"), input_ids, role="gather", axis=0)  # [B,S,H]
        return x if x.dtype == FLOAT else b.op("Cast", x, role="to_float", to=FLOAT)


def positions(b: Builder, cfg: Qwen3Config, position_ids: ir.Value) -> tuple[ir.Value, ir.Value]:
    return rope_tables(b, cfg.rope, cfg.head_dim, position_ids)


def attention(b: Builder, cfg: Qwen3Config, w: Weights, layer: int, x: ir.Value, rope: tuple[ir.Value, ir.Value],
              past: tuple[ir.Value, ir.Value], attention_mask: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """Qwen3 self-attention on normed x [B,S,H] -> (out [B,S,H], present_key, present_value)."""
    p, D, bias = f"model.layers.{layer}.self_attn", cfg.head_dim, cfg.attention_bias
    Hq, Hkv, eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.rms_norm_eps
    with b.scope("attn"):
        q = linear(b, w, x, f"{p}.q_proj", "q_proj", bias)  # [B,S,Hq*D]
        k = linear(b, w, x, f"{p}.k_proj", "k_proj", bias)  # [B,S,Hkv*D]
        v = linear(b, w, x, f"{p}.v_proj", "v_proj", bias)
        q = apply_rope(b, head_rms_norm(b, w, q, f"{p}.q_norm.weight", "q_norm", eps, Hq, D), Hq, *rope, "q_rope")
        k = apply_rope(b, head_rms_norm(b, w, k, f"{p}.k_norm.weight", "k_norm", eps, Hkv, D), Hkv, *rope, "k_rope")
        out, present_k, present_v = attention_op(b, q, k, v, past, attention_mask, None, num_heads=Hq,
                                                 kv_num_heads=Hkv, scale=D**-0.5, window=cfg.window(layer))
        return linear(b, w, out, f"{p}.o_proj", "o_proj", bias), present_k, present_v


def layer(b: Builder, cfg: Qwen3Config, w: Weights, i: int, x: ir.Value, rope: tuple[ir.Value, ir.Value],
          past: tuple[ir.Value, ir.Value], attention_mask: ir.Value, mlp: Callable[[ir.Value], ir.Value] | None = None
          ) -> tuple[ir.Value, ir.Value, ir.Value]:
    """x [B,S,H] -> (x after layer i, present_key, present_value). `mlp(n)` replaces the dense SwiGLU MLP on the
    normed residual (Qwen3-MoE's sparse blocks). The Add that ends the layer has the contract's role io.RESIDUAL."""
    p, eps = f"model.layers.{i}", cfg.rms_norm_eps
    with b.scope(f"layers.{i}"):
        n = rms_norm(b, w, x, f"{p}.input_layernorm.weight", "input_norm", eps)
        a, present_k, present_v = attention(b, cfg, w, i, n, rope, past, attention_mask)
        x = b.op("Add", x, a, role="attn_residual")
        n = rms_norm(b, w, x, f"{p}.post_attention_layernorm.weight", "post_attn_norm", eps)
        if mlp is None:
            with b.scope("mlp"):
                y = swiglu_mlp(b, w, n, f"{p}.mlp")
        else:
            y = mlp(n)
        x = b.op("Add", x, y, role=io.RESIDUAL)
    return x, present_k, present_v


def final_norm(b: Builder, cfg: Qwen3Config, w: Weights, x: ir.Value) -> ir.Value:
    return rms_norm(b, w, x, "model.norm.weight", "norm", cfg.rms_norm_eps)


def output(b: Builder, cfg: Qwen3Config, w: Weights, x: ir.Value, head: str) -> ir.Value:
    """logits = x @ head.T: a stored lm_head as a [H,V] matrix, a tied embedding as the one stored table."""
    if head == "model.embed_tokens.weight":
        return tied_output(b, w, x, head)
    return b.op("MatMul", x, w.matrix(head, role="matmul"), role="matmul")
