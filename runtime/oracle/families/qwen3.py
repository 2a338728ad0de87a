"""Qwen3 in NumPy (transformers' Qwen3ForCausalLM, fp32 eager): RMSNorm, attention with per-head q/k RMSNorm
before RoPE (no sinks), SwiGLU MLP.

    x += o_proj(attention(rope(q_norm(q_proj(n))), rope(k_norm(k_proj(n))), v_proj(n))),  n = rmsnorm(x)
    x += down(silu(gate(n)) * up(n)),                                                      n = rmsnorm(x)
"""

from __future__ import annotations

import numpy as np

from mxport.contract import io
from mxport.runtime.oracle import layers as L


def positions(m, position_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inv_freq, scale = m.cfg.rope.inv_freq(m.cfg.head_dim)
    return L.rope_cos_sin(position_ids, np.asarray(inv_freq, np.float64), scale, m.dtype)


def embed(m, ids: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
    return m.rows("model.embed_tokens.weight", ids)


def attention(m, i: int, h: np.ndarray, rope, keep: np.ndarray, past_kv) -> tuple[np.ndarray, tuple]:
    """Qwen3 attention on normed h [B,S,H] -> (out [B,S,H], (k, v) [B,Hkv,P+S,D]); Qwen3-MoE reuses it."""
    cfg, p = m.cfg, f"model.layers.{i}.self_attn."
    B, S, _ = h.shape
    D = cfg.head_dim

    def proj(name: str, heads: int) -> np.ndarray:  # [B,S,H] -> [B,heads,S,D]
        bias = m.w(p + f"{name}.bias") if cfg.attention_bias else None
        return m.linear(h, p + f"{name}.weight", bias).reshape(B, S, heads, D).transpose(0, 2, 1, 3)

    q = L.rms_norm(proj("q_proj", cfg.num_attention_heads), m.w(p + "q_norm.weight"), cfg.rms_norm_eps)
    k = L.rms_norm(proj("k_proj", cfg.num_key_value_heads), m.w(p + "k_norm.weight"), cfg.rms_norm_eps)
    q, k = L.apply_rope(q, *rope), L.apply_rope(k, *rope)
    v = proj("v_proj", cfg.num_key_value_heads)
    if past_kv is not None:
        k = np.concatenate([past_kv[0].astype(m.dtype, copy=False), k], axis=2)
        v = np.concatenate([past_kv[1].astype(m.dtype, copy=False), v], axis=2)
    no_sinks = np.full(cfg.num_attention_heads, -np.inf, m.dtype)
    out = m.tap(i, io.ATTENTION_OUT, L.attention(q, k, v, keep, no_sinks, D**-0.5))  # [B,S,Hq*D]
    o_bias = m.w(p + "o_proj.bias") if cfg.attention_bias else None
    return m.linear(out, p + "o_proj.weight", o_bias), (k, v)


def layer(m, i: int, x: np.ndarray, rope, keep: np.ndarray, past_kv, mlp=None) -> tuple[np.ndarray, tuple]:
    """x [B,S,H] through layer i; `mlp(h, x)` replaces the dense SwiGLU MLP on the normed residual h, x the
    residual its output is added to (Qwen3-MoE)."""
    cfg, p = m.cfg, f"model.layers.{i}."
    h = m.tap(i, io.INPUT_NORM, L.rms_norm(x, m.w(p + "input_layernorm.weight"), cfg.rms_norm_eps))
    attn, kv = attention(m, i, h, rope, keep, past_kv)
    x = x + attn
    h = m.tap(i, io.POST_ATTN_NORM, L.rms_norm(x, m.w(p + "post_attention_layernorm.weight"), cfg.rms_norm_eps))
    if mlp is None:
        gate, up = m.linear(h, p + "mlp.gate_proj.weight"), m.linear(h, p + "mlp.up_proj.weight")
        y = m.linear(m.tap(i, io.MLP_GATED, L.silu(gate) * up), p + "mlp.down_proj.weight")  # L.swiglu_mlp, through the export's matrices
    else:
        y = mlp(h, x)
    return x + y, kv


def final_norm(m, x: np.ndarray) -> np.ndarray:
    return L.rms_norm(x, m.w("model.norm.weight"), m.cfg.rms_norm_eps)
