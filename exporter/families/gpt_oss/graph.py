"""gpt-oss as an ONNX graph: the family's wiring over the shared layers (exporter/layers.py).

    input_ids [B,S] ─ Gather(embed) ─ Cast ─► x [B,S,H]
    position_ids [B,S] ─► cos, sin [B,S,D/2]   (once, shared by every layer; rope = RotaryEmbedding-23)
    per layer i (nodes "layers.{i}/..."):
        n = rmsnorm(x);  x += o_proj(Attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n), past, mask, sinks))
        n = rmsnorm(x);  x += MoEMXFP4(n, router(n), experts)
    logits [B,S,V] = lm_head(rmsnorm(x))
    sliding layers (window W, the default `window_cache`): mask = the tail of attention_mask matching their
        shorter past, present = its last W-1 slots (`layers.window_masks`, ARCHITECTURE.md "Model I/O")

Custom ops (domain ai.mxport, ARCHITECTURE.md "Custom ops"): Attention (GQA, sinks, window, KV cache),
MoEMXFP4 (router top-k, MXFP4 experts kept as uint8 blocks/scales). Everything else is standard opset 23.
The model I/O, caches and output projection are exporter/decoder_graph.py's.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mxport.contract import io
from mxport.exporter.families.gpt_oss.config import GptOssConfig
from mxport.exporter.graph import Builder
from mxport.exporter.layers import DOMAIN, FLOAT, Weights, apply_rope, attention as attention_op, linear, rms_norm
from mxport.exporter.layers import rope_tables

__all__ = ["DOMAIN", "build", "embed", "positions", "layer", "final_norm", "output"]


def embed(b: Builder, cfg: GptOssConfig, w: Weights, input_ids: ir.Value, position_ids: ir.Value) -> ir.Value:
    """Embedding rows [B,S,H] in float32; the table stays as stored (bf16) and only the rows are cast."""
    with b.scope("embed"):
        x = b.op("Gather", w.stored("model.embed_tokens.weight"), input_ids, role="gather", axis=0)  # [B,S,H]
        return b.op("Cast", x, role="to_float", to=FLOAT)


def positions(b: Builder, cfg: GptOssConfig, position_ids: ir.Value) -> tuple[ir.Value, ir.Value]:
    return rope_tables(b, cfg.rope, cfg.head_dim, position_ids)


def attention(b: Builder, cfg: GptOssConfig, w: Weights, layer: int, x: ir.Value, rope: tuple[ir.Value, ir.Value],
              past: tuple[ir.Value, ir.Value], attention_mask: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """Self-attention block on normed x [B,S,H] -> (out [B,S,H], present_key, present_value)."""
    p = f"model.layers.{layer}.self_attn"
    bias = cfg.attention_bias
    with b.scope("attn"):
        q = apply_rope(b, linear(b, w, x, f"{p}.q_proj", "q_proj", bias), cfg.num_attention_heads, *rope, "q_rope")
        k = apply_rope(b, linear(b, w, x, f"{p}.k_proj", "k_proj", bias), cfg.num_key_value_heads, *rope, "k_rope")
        v = linear(b, w, x, f"{p}.v_proj", "v_proj", bias)
        out, present_k, present_v = attention_op(
            b, q, k, v, past, attention_mask, w.vector(f"{p}.sinks"), num_heads=cfg.num_attention_heads,
            kv_num_heads=cfg.num_key_value_heads, scale=cfg.head_dim**-0.5, window=cfg.window(layer))
        return linear(b, w, out, f"{p}.o_proj", "o_proj", bias), present_k, present_v


def moe(b: Builder, cfg: GptOssConfig, w: Weights, layer: int, x: ir.Value) -> ir.Value:
    """Router + top-k MXFP4 experts on normed x [B,S,H] -> [B,S,H] (tokens flattened to [T,H] for the op)."""
    p = f"model.layers.{layer}.mlp"
    H, E = cfg.hidden_size, cfg.num_experts
    with b.scope("moe"):
        logits = linear(b, w, x, f"{p}.router", "router")  # [B,S,E]
        tokens = b.op("Reshape", x, b.const([-1, H], np.int64, "shape_tokens"), role="tokens")  # [T,H]
        logits = b.op("Reshape", logits, b.const([-1, E], np.int64, "shape_router"), role="router_logits")
        e = f"{p}.experts"
        op, w1 = w.experts(f"{e}.gate_up_proj")
        _, w2 = w.experts(f"{e}.down_proj")
        y = b.op(
            op, tokens, logits,
            *w1, w.vector(f"{e}.gate_up_proj_bias"),
            *w2, w.vector(f"{e}.down_proj_bias"),
            role="experts", domain=DOMAIN,
            k=cfg.experts_per_token, normalize_routing_weights=1, swiglu_interleaved=1,
            swiglu_limit=float(cfg.swiglu_limit), activation_alpha=float(cfg.swiglu_alpha), activation_beta=1.0,
        )  # [T,H]
        return b.op("Reshape", y, b.op("Shape", x, role="shape_in"), role="unflatten")  # [B,S,H]


def layer(b: Builder, cfg: GptOssConfig, w: Weights, i: int, x: ir.Value, rope: tuple[ir.Value, ir.Value],
          past: tuple[ir.Value, ir.Value], attention_mask: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """x [B,S,H] -> (x after layer i, present_key, present_value)."""
    p = f"model.layers.{i}"
    eps = cfg.rms_norm_eps
    with b.scope(f"layers.{i}"):
        n = rms_norm(b, w, x, f"{p}.input_layernorm.weight", "input_norm", eps)
        a, present_k, present_v = attention(b, cfg, w, i, n, rope, past, attention_mask)
        x = b.op("Add", x, a, role="attn_residual")
        n = rms_norm(b, w, x, f"{p}.post_attention_layernorm.weight", "post_attn_norm", eps)
        x = b.op("Add", x, moe(b, cfg, w, i, n), role=io.RESIDUAL)  # the residual stream after layer i
    return x, present_k, present_v


def final_norm(b: Builder, cfg: GptOssConfig, w: Weights, x: ir.Value) -> ir.Value:
    return rms_norm(b, w, x, "model.norm.weight", "norm", cfg.rms_norm_eps)


def output(b: Builder, cfg: GptOssConfig, w: Weights, x: ir.Value, head: str) -> ir.Value:
    """logits = x @ head.T (gpt-oss's head is untied; a tied file's embedding is stored transposed as lm_head)."""
    return b.op("MatMul", x, w.matrix(head, role="matmul", as_name="lm_head.weight"), role="matmul")


def build(ckpt, **options):
    """The portable graph of a gpt-oss checkpoint (exporter/decoder_graph.build)."""
    from mxport.exporter.decoder_graph import build as build_graph

    return build_graph(ckpt, **options)
