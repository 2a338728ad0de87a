"""gpt-oss in NumPy (docs/NUMERICS.md "Forward"): RMSNorm, attention with bias and sinks, YaRN RoPE, MXFP4 MoE.

    x += o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n), sinks)),  n = rmsnorm(x)
    x += moe(rmsnorm(x))          router top-k softmax, clamped interleaved SwiGLU experts, weighted sum
"""

from __future__ import annotations

import functools

import numpy as np

from mxport.contract import io
from mxport.ops import mxfp4
from mxport.runtime.oracle import layers as L


def positions(m, position_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inv_freq, scale = m.cfg.rope.inv_freq(m.cfg.head_dim)
    return L.rope_cos_sin(position_ids, np.asarray(inv_freq, np.float64), scale, m.dtype)


def embed(m, ids: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
    return m.rows("model.embed_tokens.weight", ids)


def layer(m, i: int, x: np.ndarray, rope, keep: np.ndarray, past_kv) -> tuple[np.ndarray, tuple]:
    cfg, p = m.cfg, f"model.layers.{i}."
    B, S, _ = x.shape
    h = m.tap(i, io.INPUT_NORM, L.rms_norm(x, m.w(p + "input_layernorm.weight"), cfg.rms_norm_eps))
    attn, kv = attention(m, i, h, rope, keep, past_kv)
    x = x + attn
    h = m.tap(i, io.POST_ATTN_NORM, L.rms_norm(x, m.w(p + "post_attention_layernorm.weight"), cfg.rms_norm_eps))
    return x + moe(m, i, h.reshape(B * S, -1), x.reshape(B * S, -1)).reshape(B, S, -1), kv


def final_norm(m, x: np.ndarray) -> np.ndarray:
    return L.rms_norm(x, m.w("model.norm.weight"), m.cfg.rms_norm_eps)


def attention(m, i: int, h: np.ndarray, rope, keep: np.ndarray, past_kv) -> tuple[np.ndarray, tuple]:
    cfg, p = m.cfg, f"model.layers.{i}.self_attn."
    B, S, _ = h.shape
    D = cfg.head_dim
    cos, sin = rope

    def proj(name: str, heads: int) -> np.ndarray:  # [B,S,H] -> [B,heads,S,D]
        bias = m.w(p + f"{name}.bias") if cfg.attention_bias else None
        return m.linear(h, p + f"{name}.weight", bias).reshape(B, S, heads, D).transpose(0, 2, 1, 3)

    q = L.apply_rope(proj("q_proj", cfg.num_attention_heads), cos, sin)
    k = L.apply_rope(proj("k_proj", cfg.num_key_value_heads), cos, sin)
    v = proj("v_proj", cfg.num_key_value_heads)
    if past_kv is not None:
        k = np.concatenate([past_kv[0].astype(m.dtype, copy=False), k], axis=2)
        v = np.concatenate([past_kv[1].astype(m.dtype, copy=False), v], axis=2)
    out = m.tap(i, io.ATTENTION_OUT, L.attention(q, k, v, keep, m.w(p + "sinks"), D**-0.5))  # [B,S,Hq*D]
    o_bias = m.w(p + "o_proj.bias") if cfg.attention_bias else None
    return m.linear(out, p + "o_proj.weight", o_bias), (k, v)


def expert_loader(m, layer: int):
    """e -> (w1 [2I,H], b1 [2I], w2 [H,I], b2 [H]) in the compute dtype, dequantizing only expert e."""
    p = f"model.layers.{layer}.mlp.experts."
    b1, b2 = m.w(p + "gate_up_proj_bias"), m.w(p + "down_proj_bias")
    if m.cfg.experts_mxfp4:
        halves = {n: (m.raw(f"{p}{n}_blocks"), m.raw(f"{p}{n}_scales")) for n in ("gate_up_proj", "down_proj")}

        def load(e: int):
            w1 = mxfp4.decode(halves["gate_up_proj"][0][e], halves["gate_up_proj"][1][e]).astype(m.dtype)
            w2 = mxfp4.decode(halves["down_proj"][0][e], halves["down_proj"][1][e]).astype(m.dtype)
            return m.expert(w1, f"{p}gate_up_proj[{e}]"), b1[e], m.expert(w2, f"{p}down_proj[{e}]"), b2[e]

    else:  # float experts are stored input-major, as transformers saves them: [E,H,2I] and [E,I,H]
        gate_up, down = m.w(p + "gate_up_proj"), m.w(p + "down_proj")

        def load(e: int):
            w1, w2 = m.expert(gate_up[e].T, f"{p}gate_up_proj[{e}]"), m.expert(down[e].T, f"{p}down_proj[{e}]")
            return w1, b1[e], w2, b2[e]

    return load


def moe(m, i: int, h: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
    """h [T,H] through layer i's experts; `base` [T,H], the residual the output is added to, lets a lossy export's
    reference round its int8 near-ties as the export did (Quantization.fit_rows)."""
    cfg, p = m.cfg, f"model.layers.{i}.mlp.router."
    router_logits = L.linear(h, m.w(p + "weight"), m.w(p + "bias"))  # [T,E]
    loader, q = expert_loader(m, i), m.quantization
    with np.errstate(over="ignore"):  # exp(-alpha*gate) may overflow to inf: sigmoid -> 0, as intended
        out = L.moe(h, router_logits, cfg.experts_per_token, loader, cfg.swiglu_limit, cfg.swiglu_alpha,
                    act=m.expert_input)
        if q is None or base is None:
            return out
        chosen = functools.lru_cache(maxsize=2 * cfg.experts_per_token)(loader)  # a fitted row is run many times
        return m.fit_experts(i, out, base, lambda t, act, act_mid: L.moe(
            h[t : t + 1], router_logits[t : t + 1], cfg.experts_per_token, chosen, cfg.swiglu_limit, cfg.swiglu_alpha,
            act=act, act_mid=act_mid))
