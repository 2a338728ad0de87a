"""GPT-2 in NumPy (transformers' GPT2LMHeadModel, float32 or float64): learned positions, pre-LN LayerNorm,
fused c_attn, multi-head attention without sinks, a one-activation MLP, Conv1D weights [in, out].

    x = wte[ids] + wpe[positions]
    x += c_proj(attention(split(c_attn(ln_1(x))), scale = attention_scale(i)))
    x += c_proj(act(c_fc(ln_2(x))))
    logits = ln_f(x) @ wte.T (or lm_head)
"""

from __future__ import annotations

import numpy as np

from mxport.contract import io
from mxport.errors import MxportError
from mxport.exporter.families.gpt2.config import PREFIX
from mxport.runtime.oracle import layers as L


def positions(m, position_ids: np.ndarray) -> None:
    return None  # learned: added in embed


def check_positions(cfg, position_ids: np.ndarray) -> None:
    """A position past wpe's rows has no embedding: refuse it by name instead of indexing out of range."""
    if position_ids.size and (position_ids.max() >= cfg.max_position_embeddings or position_ids.min() < 0):
        raise MxportError(
            f"position {int(position_ids.max())} is past this GPT-2 model's context: positions must lie in "
            f"[0, n_positions={cfg.max_position_embeddings}) (learned position embeddings)")


def embed(m, ids: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
    check_positions(m.cfg, position_ids)
    return m.rows(PREFIX + "wte.weight", ids) + m.rows(PREFIX + "wpe.weight", position_ids)


def conv1d(m, x: np.ndarray, prefix: str) -> np.ndarray:
    """x @ W + b with W [in, out] as stored (through the export's matrix where it is quantized)."""
    return m.linear(x, prefix + ".weight", m.w(prefix + ".bias"), in_out=True)


def layer(m, i: int, x: np.ndarray, tables, keep: np.ndarray, past_kv) -> tuple[np.ndarray, tuple]:
    cfg, p = m.cfg, f"{PREFIX}h.{i}."
    eps = cfg.layer_norm_epsilon
    B, S, H = x.shape
    heads, D = cfg.num_attention_heads, cfg.head_dim
    h = m.tap(i, io.INPUT_NORM, L.layer_norm(x, m.w(p + "ln_1.weight"), m.w(p + "ln_1.bias"), eps))
    qkv = conv1d(m, h, p + "attn.c_attn")  # [B,S,3H]: q | k | v

    def heads_first(t: np.ndarray) -> np.ndarray:  # [B,S,H] -> [B,heads,S,D]
        return t.reshape(B, S, heads, D).transpose(0, 2, 1, 3)

    q, k, v = (heads_first(qkv[..., j * H : (j + 1) * H]) for j in range(3))
    if past_kv is not None:
        k = np.concatenate([past_kv[0].astype(m.dtype, copy=False), k], axis=2)
        v = np.concatenate([past_kv[1].astype(m.dtype, copy=False), v], axis=2)
    no_sinks = np.full(heads, -np.inf, m.dtype)
    out = m.tap(i, io.ATTENTION_OUT, L.attention(q, k, v, keep, no_sinks, cfg.attention_scale(i)))  # [B,S,H]
    x = x + conv1d(m, out, p + "attn.c_proj")
    h = m.tap(i, io.POST_ATTN_NORM, L.layer_norm(x, m.w(p + "ln_2.weight"), m.w(p + "ln_2.bias"), eps))
    act = m.tap(i, io.MLP_ACT, L.activation(conv1d(m, h, p + "mlp.c_fc"), cfg.activation_function))
    x = x + conv1d(m, act, p + "mlp.c_proj")
    return x, (k, v)


def final_norm(m, x: np.ndarray) -> np.ndarray:
    return L.layer_norm(x, m.w(PREFIX + "ln_f.weight"), m.w(PREFIX + "ln_f.bias"), m.cfg.layer_norm_epsilon)
