"""Pure NumPy building blocks of the gpt-oss forward pass (docs/NUMERICS.md "Forward"), one function per step.

Every function computes in the dtype of its floating inputs (float32 or float64) and allocates nothing that
outlives the call. The model (`runtime.reference_model`) wires them together and feeds them weights.

    x ─► rms_norm ─► q,k,v proj ─► rope(q,k) ─► attention(+past, mask, window, sinks) ─► o proj ─► + x
      ─► rms_norm ─► router ─► top-k softmax ─► experts: W1 ─► clamped SwiGLU ─► W2, weighted sum ─► + x
"""

from __future__ import annotations

import math

import numpy as np


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x * rsqrt(mean(x²) + eps) * weight over the last axis."""
    variance = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(variance + x.dtype.type(eps)) * weight


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (torch.nn.LayerNorm, biased variance)."""
    centred = x - np.mean(x, axis=-1, keepdims=True)
    variance = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(variance + x.dtype.type(eps)) * weight + bias


_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function elementwise, in float64 then back to x's dtype (NumPy has none of its own)."""
    return _erf(x.astype(np.float64)).astype(np.float64).astype(x.dtype)


def activation(x: np.ndarray, name: str) -> np.ndarray:
    """transformers' ACT2FN[name] for the names in exporter/families/gpt2/config.ACTIVATIONS, written from their
    formulas (transformers/activations.py), in x's dtype."""
    t = x.dtype.type
    if name in ("gelu", "gelu_python"):
        return x * t(0.5) * (t(1) + erf(x / t(math.sqrt(2.0))))
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_accurate"):
        return t(0.5) * x * (t(1) + np.tanh(t(math.sqrt(2.0 / math.pi)) * (x + t(0.044715) * x**3)))
    if name == "gelu_fast":
        return t(0.5) * x * (t(1) + np.tanh(x * t(0.7978845608) * (t(1) + t(0.044715) * x * x)))
    if name == "gelu_10":
        return np.clip(activation(x, "gelu"), t(-10), t(10))
    if name == "quick_gelu":
        return x / (t(1) + np.exp(t(-1.702) * x))
    if name in ("silu", "swish"):
        return x / (t(1) + np.exp(-x))
    if name == "relu":
        return np.maximum(x, t(0))
    if name == "relu2":
        return np.maximum(x, t(0)) ** 2
    if name == "relu6":
        return np.clip(x, t(0), t(6))
    if name == "leaky_relu":
        return np.where(x >= 0, x, x * t(0.01))
    if name == "sigmoid":
        return t(1) / (t(1) + np.exp(-x))
    if name == "tanh":
        return np.tanh(x)
    if name == "linear":
        return x
    if name == "mish":  # x tanh(softplus(x))
        return x * np.tanh(np.logaddexp(t(0), x))
    if name == "hardswish":  # x relu6(x + 3) / 6
        return x * np.clip(x + t(3), t(0), t(6)) / t(6)
    if name == "laplace":
        return t(0.5) * (t(1) + erf((x - t(0.707107)) / t(0.282095 * math.sqrt(2.0))))
    if name == "sqrtsoftplus":
        return np.sqrt(np.logaddexp(t(0), x))
    raise ValueError(f"activation {name!r} is not implemented")  # GPT2Config refuses it before this


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """x [..., in] @ weight[out, in]ᵀ + bias[out]  (torch.nn.Linear)."""
    y = x @ weight.T
    return y if bias is None else y + bias


def rope_cos_sin(
    position_ids: np.ndarray, inv_freq: np.ndarray, scale: float, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """position_ids [B,S] -> cos, sin [B,S,D/2] (times YaRN's attention factor `scale`), computed in `dtype`.

    The angle position * inv_freq is rounded to `dtype` on purpose: float32 mode reproduces what transformers,
    the openai reference and the exported graph compute (fp32 angles lose ~position * 2^-24 rad, 2e-3 rad at
    position 30000, worth ~2e-4 relative on logits; docs/NUMERICS_REPORT.md); float64 mode is the exact one.
    """
    dtype = np.dtype(dtype)
    angles = position_ids.astype(dtype)[..., None] * inv_freq.astype(dtype)  # [B,S,D/2]
    return np.cos(angles) * dtype.type(scale), np.sin(angles) * dtype.type(scale)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Non-interleaved RoPE. x [B,heads,S,D]; cos, sin [B,S,D/2]. First half / second half of each head rotate."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None], sin[:, None]  # [B,1,S,D/2]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def attention_keep_mask(attention_mask: np.ndarray, past_len: int, seq_len: int, window: int) -> np.ndarray:
    """Which key slots each query row may see: bool [B,S,P+S].

    Cache slots are absolute: query row s sits in slot P+s. Causal keeps j <= P+s; a sliding window keeps
    P+s-window < j as well; slots whose attention_mask is 0 (padding) are excluded.
    """
    total = past_len + seq_len
    q_slot = past_len + np.arange(seq_len)[:, None]  # [S,1]
    k_slot = np.arange(total)[None, :]  # [1,P+S]
    keep = k_slot <= q_slot
    if window:
        keep &= k_slot > q_slot - window
    return keep[None] & (attention_mask[:, None, :] != 0)  # [B,S,P+S]


def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, keep: np.ndarray, sinks: np.ndarray, scale: float
) -> np.ndarray:
    """Grouped-query attention with sinks.

    q [B,Hq,S,D]; k, v [B,Hkv,T,D] (past and new); keep bool [B,S,T]; sinks [Hq]. Returns [B,S,Hq*D].
    Query head h reads KV head h // (Hq/Hkv). Each head's sink logit joins its softmax as one more column and
    is dropped after it, so a row's weights sum to < 1. A row that sees no key (padding) gets weights 0
    instead of NaN; with -inf sinks as well its output is 0.
    """
    B, Hq, S, D = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    qg = q.reshape(B, Hkv, g, S, D)
    scores = np.einsum("bkgsd,bktd->bkgst", qg, k) * q.dtype.type(scale)  # [B,Hkv,g,S,T]
    scores = np.where(keep[:, None, None], scores, -np.inf)
    sink = sinks.astype(q.dtype).reshape(1, Hkv, g, 1, 1)
    row_max = np.maximum(scores.max(axis=-1, keepdims=True), sink)  # [B,Hkv,g,S,1]
    row_max = np.where(np.isfinite(row_max), row_max, 0)  # nothing visible and no sink: avoid inf - inf
    weights = np.exp(scores - row_max)  # masked slots -> exp(-inf) = 0
    denom = weights.sum(axis=-1, keepdims=True) + np.exp(sink - row_max)
    weights = weights / np.where(denom > 0, denom, 1)
    out = np.einsum("bkgst,bktd->bskgd", weights, v)  # [B,S,Hkv,g,D]: head h = kv*g + i
    return out.reshape(B, S, Hq * D)


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), without overflow warnings for very negative x (exp -> inf gives 0, as intended)."""
    with np.errstate(over="ignore"):
        return x / (1 + np.exp(-x))


def swiglu_mlp(x: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    """Dense SwiGLU MLP (Qwen3, Llama): down(silu(x gateᵀ) * (x upᵀ)); weights [out, in]."""
    return linear(silu(linear(x, gate, None)) * linear(x, up, None), down, None)


def route(router_logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """router_logits [T,E] -> (expert ids [T,k] by descending logit, weights [T,k] = softmax of those k logits)."""
    order = np.argsort(-router_logits, axis=-1, kind="stable")[:, :k]
    top = np.take_along_axis(router_logits, order, axis=-1)
    e = np.exp(top - top[:, :1])  # top[:, 0] is the row maximum
    return order, e / e.sum(axis=-1, keepdims=True)


def swiglu(h: np.ndarray, limit: float, alpha: float) -> np.ndarray:
    """gpt-oss clamped SwiGLU on interleaved h [..., 2I]: gate = h[0::2], up = h[1::2] -> [..., I]."""
    gate, up = h[..., 0::2], h[..., 1::2]
    gate = np.minimum(gate, limit)
    up = np.clip(up, -limit, limit)
    return gate / (1 + np.exp(-alpha * gate)) * (up + 1)


def moe(
    x: np.ndarray,
    router_logits: np.ndarray,
    k: int,
    expert_weights,
    limit: float,
    alpha: float,
    act=None,
    act_mid=None,
) -> np.ndarray:
    """Mixture of experts over tokens x [T,H].

    `expert_weights(e) -> (w1 [2I,H], b1 [2I], w2 [H,I], b2 [H])` (out-major) is called once per chosen
    expert, so only the experts some token chose are read and dequantized, each once per call. `act(a)` is the
    input of an expert GEMM as the kernel sees it (int8-quantized activations of a lossy export; default as is);
    `act_mid` that of the second GEMM (the SwiGLU output) where it differs (default `act`).
    """
    act = act or (lambda a: a)
    act_mid = act_mid or act
    ids, weights = route(router_logits, k)  # [T,k], [T,k]
    out = np.zeros_like(x)
    for e in np.unique(ids):
        rows, slot = np.nonzero(ids == e)
        w1, b1, w2, b2 = expert_weights(int(e))
        y = linear(act_mid(swiglu(linear(act(x[rows]), w1, b1), limit, alpha)), w2, b2)  # [n,H]
        out[rows] += weights[rows, slot, None] * y  # a token picks an expert at most once: rows are unique
    return out


# ---- Qwen3-MoE-style sparse blocks (no expert biases, plain SwiGLU, softmax over all experts) ----------------------
def route_softmax_topk(router_logits: np.ndarray, k: int, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """router_logits [T,E] -> (expert ids [T,k] by descending logit, weights [T,k]).

    Qwen3-MoE (transformers' Qwen3MoeTopKRouter): p = softmax over all E (in the compute dtype: float32 like
    transformers, or float64), the k largest, divided by their sum when `normalize` (norm_topk_prob). Ties go to
    the lower expert index."""
    z = np.exp(router_logits - router_logits.max(axis=-1, keepdims=True))
    p = z / z.sum(axis=-1, keepdims=True)  # [T,E]
    order = np.argsort(-router_logits, axis=-1, kind="stable")[:, :k]  # softmax is monotonic: same order as p
    top = np.take_along_axis(p, order, axis=-1)  # [T,k]
    return order, top / top.sum(axis=-1, keepdims=True) if normalize else top


def moe_plain_swiglu(x: np.ndarray, router_logits: np.ndarray, k: int, normalize: bool, expert_weights,
                     act=None, act_mid=None) -> np.ndarray:
    """Sparse MoE over tokens x [T,H] with bias-free SwiGLU experts (Qwen3-MoE).

    `expert_weights(e) -> (w1 [2I,H] (gate rows, then up rows), w2 [H,I])` is called once per chosen expert, so
    only the experts some token chose are read: y[t] = Σ_e w[t,e] · w2_e (silu(gate_e x) * up_e x).
    `act`, `act_mid` as in moe."""
    act = act or (lambda a: a)
    act_mid = act_mid or act
    ids, weights = route_softmax_topk(router_logits, k, normalize)  # [T,k], [T,k]
    out = np.zeros_like(x)
    for e in np.unique(ids):
        rows, slot = np.nonzero(ids == e)
        w1, w2 = expert_weights(int(e))
        h = act(x[rows]) @ w1.T  # [n,2I]
        half = h.shape[-1] // 2
        y = act_mid(silu(h[:, :half]) * h[:, half:]) @ w2.T  # [n,H]
        out[rows] += weights[rows, slot, None] * y  # a token picks an expert at most once: rows are unique
    return out
