"""Qwen3-MoE in NumPy (transformers' Qwen3MoeForCausalLM, fp32 eager): Qwen3's attention, then per layer a sparse
MoE block or a dense SwiGLU MLP (cfg.sparse(i)).

    x += o_proj(attention(rope(q_norm(q_proj(n))), rope(k_norm(k_proj(n))), v_proj(n))),   n = rmsnorm(x)
    x += Σ_{e in topk} p_e · down_e(silu(gate_e n) * up_e n)     softmax over all E, renormalised iff norm_topk_prob
      or down(silu(gate n) * up n)                                mlp_only_layers / off-step layers

Only the experts some token chose are read (one expert's rows through the checkpoint when weights are not cached).
A lossy export's experts (ReferenceModel(quantization=...), experts="mxfp4" included) go through m.expert: each
chosen expert MXFP4-encoded and decoded, or int8/int4-quantized, as the export holds it (runtime/oracle/quantized.py).
"""

from __future__ import annotations

import functools

import numpy as np

from mxport.runtime.oracle import layers as L
from mxport.runtime.oracle.families import qwen3
from mxport.runtime.oracle.families.qwen3 import embed, final_norm, positions

__all__ = ["positions", "embed", "layer", "final_norm"]


def expert_loader(m, layer: int):
    """e -> (w1 [2I,H] gate rows then up rows, w2 [H,I]) in the compute dtype, reading only expert e."""
    p = f"model.layers.{layer}.mlp.experts."

    def read(name: str, e: int) -> np.ndarray:
        if m.cache_weights or not hasattr(m.ckpt, "get_rows"):
            return m.w(p + name)[e]
        try:
            return np.asarray(m.ckpt.get_rows(p + name, e, e + 1)[0], np.float32).astype(m.dtype)
        finally:
            m.ckpt.close()  # drop the mappings: RSS stays at the experts read, not the file

    def load(e: int):
        return (m.expert(read("gate_up_proj", e), f"{p}gate_up_proj[{e}]"),
                m.expert(read("down_proj", e), f"{p}down_proj[{e}]"))

    return load


def moe(m, i: int, h: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
    """h [T,H] through layer i's sparse block; `base` [T,H], the residual it is added to, lets a lossy export's
    reference round its int8 near-ties as the export did (ReferenceModel.fit_experts)."""
    cfg = m.cfg
    router_logits = L.linear(h, m.w(f"model.layers.{i}.mlp.gate.weight"), None)  # [T,E]
    loader = expert_loader(m, i)
    out = L.moe_plain_swiglu(h, router_logits, cfg.num_experts_per_tok, cfg.norm_topk_prob, loader,
                             act=m.expert_input)
    if m.quantization is None or base is None:
        return out
    chosen = functools.lru_cache(maxsize=2 * cfg.num_experts_per_tok)(loader)  # a fitted row is run many times
    return m.fit_experts(i, out, base, lambda t, act, act_mid: L.moe_plain_swiglu(
        h[t : t + 1], router_logits[t : t + 1], cfg.num_experts_per_tok, cfg.norm_topk_prob, chosen, act=act,
        act_mid=act_mid))


def layer(m, i: int, x: np.ndarray, rope, keep: np.ndarray, past_kv) -> tuple[np.ndarray, tuple]:
    """Qwen3's layer (runtime/oracle/families/qwen3.py), the sparse block on cfg.sparse(i) layers."""
    B, S, _ = x.shape
    sparse = (lambda h, x: moe(m, i, h.reshape(B * S, -1), x.reshape(B * S, -1)).reshape(B, S, -1)) \
        if m.cfg.sparse(i) else None
    return qwen3.layer(m, i, x, rope, keep, past_kv, mlp=sparse)
