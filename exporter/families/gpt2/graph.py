"""GPT-2 as an ONNX graph: the family's wiring over the shared layers (exporter/layers.py).

    x [B,S,H] = Cast(Gather(wte, input_ids)) + Cast(Gather(wpe, position_ids))      (learned positions)
    per layer i (nodes "layers.{i}/..."):
        n = LayerNorm(x; ln_1);  q, k, v = Split(n @ c_attn + b)                      (c_attn [H,3H] as stored)
        x += c_proj(Attention(q, k, v, past, mask; no sinks, scale = attention_scale(i)))
        n = LayerNorm(x; ln_2);  x += c_proj(act(c_fc(n)))                           (Conv1D: x @ W + b)
    logits [B,S,V] = LayerNorm(x; ln_f) @ wte.T   (tied: the Gather's initializer, stored once; or lm_head)

Standard opset 23 (LayerNormalization, Gelu) plus mxport's Attention op (multi-head: kv heads = heads).
Positions index wpe: a position >= n_positions is out of range for the Gather, so mxport's runtime refuses such
inputs before they reach a session (DecoderConfig.position_limit).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mxport.exporter.families.gpt2.config import PREFIX, GPT2Config
from mxport.contract import io
from mxport.exporter.graph import Builder
from mxport.exporter.layers import FLOAT, Weights, attention as attention_op, conv1d, layer_norm, mlp, tied_output

__all__ = ["embed", "positions", "layer", "final_norm", "output"]


def embed(b: Builder, cfg: GPT2Config, w: Weights, input_ids: ir.Value, position_ids: ir.Value) -> ir.Value:
    """Token rows + position rows [B,S,H] in float32; tables stay as stored, only the rows are cast."""
    with b.scope("embed"):
        tokens = b.op("Gather", w.stored(PREFIX + "wte.weight"), input_ids, role="gather", axis=0)  # [B,S,H]
        where = b.op("Gather", w.stored(PREFIX + "wpe.weight"), position_ids, role="gather_positions", axis=0)
        tokens = b.op("Cast", tokens, role="to_float", to=FLOAT)
        where = b.op("Cast", where, role="positions_to_float", to=FLOAT)
        return b.op("Add", tokens, where, role="add_positions")


def positions(b: Builder, cfg: GPT2Config, position_ids: ir.Value) -> None:
    return None  # learned positions are added by `embed`


def attention(b: Builder, cfg: GPT2Config, w: Weights, layer: int, x: ir.Value, past: tuple[ir.Value, ir.Value],
              attention_mask: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """Multi-head self-attention on normed x [B,S,H] -> (out [B,S,H], present_key, present_value)."""
    p = f"{PREFIX}h.{layer}.attn"
    H = cfg.hidden_size
    with b.scope("attn"):
        qkv = conv1d(b, w, x, f"{p}.c_attn", "qkv_proj")  # [B,S,3H]: columns q | k | v
        q, k, v = b.op("Split", qkv, b.const([H, H, H], np.int64, "split_qkv"), role="split_qkv", axis=-1, outputs=3)
        out, present_k, present_v = attention_op(
            b, q, k, v, past, attention_mask, None, num_heads=cfg.num_attention_heads,
            kv_num_heads=cfg.num_key_value_heads, scale=cfg.attention_scale(layer), window=0)
        return conv1d(b, w, out, f"{p}.c_proj", "o_proj"), present_k, present_v


def layer(b: Builder, cfg: GPT2Config, w: Weights, i: int, x: ir.Value, rope: None,
          past: tuple[ir.Value, ir.Value], attention_mask: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """x [B,S,H] -> (x after layer i, present_key, present_value)."""
    p = f"{PREFIX}h.{i}"
    eps = cfg.layer_norm_epsilon
    with b.scope(f"layers.{i}"):
        n = layer_norm(b, w, x, f"{p}.ln_1", "input_norm", eps)
        a, present_k, present_v = attention(b, cfg, w, i, n, past, attention_mask)
        x = b.op("Add", x, a, role="attn_residual")
        n = layer_norm(b, w, x, f"{p}.ln_2", "post_attn_norm", eps)
        with b.scope("mlp"):
            y = mlp(b, w, n, f"{p}.mlp.c_fc", f"{p}.mlp.c_proj", cfg.activation_function)
        x = b.op("Add", x, y, role=io.RESIDUAL)  # the residual stream after layer i (mxport/contract/io.py)
    return x, present_k, present_v


def final_norm(b: Builder, cfg: GPT2Config, w: Weights, x: ir.Value) -> ir.Value:
    return layer_norm(b, w, x, PREFIX + "ln_f", "norm", cfg.layer_norm_epsilon)


def output(b: Builder, cfg: GPT2Config, w: Weights, x: ir.Value, head: str) -> ir.Value:
    """logits = x @ head.T: the tied wte (one initializer with the embedding Gather) or a stored lm_head [V,H]."""
    if head == PREFIX + "wte.weight":
        return tied_output(b, w, x, head)
    return b.op("MatMul", x, w.matrix(head, role="matmul"), role="matmul")
