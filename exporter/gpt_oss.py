"""gpt-oss as an ONNX graph: short pure builder functions over onnx-ir values (the portable form).

    input_ids [B,S] ─ Gather(embed) ─ Cast ─► x [B,S,H]
    position_ids [B,S] ─► cos, sin [B,S,D/2]   (once, shared by every layer; rope = RotaryEmbedding-23)
    per layer i (nodes "layers.{i}/..."):
        n = rmsnorm(x);  x += o_proj(Attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n), past, mask, sinks))
        n = rmsnorm(x);  x += MoEMXFP4(n, router(n), experts)
    logits [B,S,V] = lm_head(rmsnorm(x))
    sliding layers (window W, the default `window_cache`): mask = the tail of attention_mask matching their
        shorter past, present = its last W-1 slots (`window_masks`, ARCHITECTURE.md "Model I/O")

Custom ops (domain ai.mxport, ARCHITECTURE.md "Custom ops"): Attention (GQA, sinks, window, KV cache),
MoEMXFP4 (router top-k, MXFP4 experts kept as uint8 blocks/scales). Everything else is standard opset 23.
Dense weights come from the checkpoint at save time (lazy initializers, see `Weights`).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from mxport.exporter.config import ModelConfig, yarn_inv_freq
from mxport.exporter.graph import Builder, set_output, tensor_value

DOMAIN = "ai.mxport"  # = mxport.ops.DOMAIN (the contract); spelled here so the graph builds before ops/ lands
DOMAIN_VERSION = 1
FLOAT = ir.DataType.FLOAT
INT64 = ir.DataType.INT64
UINT8 = ir.DataType.UINT8

# Symbolic dims of the model I/O (ARCHITECTURE.md "Model I/O").
BATCH, SEQ, PAST, TOTAL = "batch", "seq", "past_seq", "total_seq"  # TOTAL = past_seq + seq
# Sliding layers with a window-sized cache: past [B,Hkv,PAST_W,D] -> present [B,Hkv,PRESENT_W,D], at most W-1 slots.
PAST_W, PRESENT_W = "past_seq_window", "present_seq_window"
INT64_MAX = np.iinfo(np.int64).max


def past_names(i: int) -> tuple[str, str]:
    return f"past_key_values.{i}.key", f"past_key_values.{i}.value"


def present_names(i: int) -> tuple[str, str]:
    return f"present.{i}.key", f"present.{i}.value"


CHUNK_BYTES = 64 << 20  # checkpoint rows read per step when an initializer is written


class Weights:
    """Checkpoint tensors as graph initializers, read lazily at save time (one tensor in memory at a time).

    dense="bfloat16": matrices keep the checkpoint's bf16 bytes and a Cast to float32 follows (exact, half size);
    dense="float32": matrices are stored as float32. Vectors (norms, biases, sinks) are always float32.
    MatMul weights are stored transposed, [in, out], so the graph is a plain `x @ W`.
    """

    def __init__(self, b: Builder, ckpt, dense: str = "bfloat16") -> None:
        if dense not in ("bfloat16", "float32"):
            raise ValueError(f"dense storage must be 'bfloat16' or 'float32', found {dense!r}")
        self.b, self.ckpt, self.dense = b, ckpt, dense

    def _read(self, name: str, f32: bool = False) -> np.ndarray:
        """One tensor from the checkpoint, then its file mappings are dropped (ckpt.close(); the next read reopens).

        safetensors reads through mmap: pages touched stay resident (and count in RSS) while the file is mapped,
        so without this the export's RSS would grow to the checkpoint's size."""
        try:
            return self.ckpt.get_f32(name) if f32 else self.ckpt.get(name)  # copies out of the mapping
        finally:
            self.ckpt.close()

    def _read_chunked(self, name: str, dtype: np.dtype, transpose: bool = False) -> np.ndarray:
        """Tensor `name` (transposed if asked) in `dtype`, filled ~CHUNK_BYTES of checkpoint rows at a time.

        The mapping is dropped after every chunk, so peak memory is the output array plus one chunk: about 1x the
        largest tensor. (Reading whole and then transposing/converting holds two copies, and the mapped pages a
        third.)"""
        shape = tuple(self.ckpt.spec(name).shape)
        out = np.empty(shape[::-1] if transpose else shape, dtype=dtype)
        row_bytes = max(1, out.nbytes // max(shape[0], 1))
        step = max(1, CHUNK_BYTES // row_bytes)
        for a in range(0, shape[0], step):
            b_ = min(shape[0], a + step)
            try:
                rows = self.ckpt.get_rows(name, a, b_)
            finally:
                self.ckpt.close()
            if transpose:
                out[:, a:b_] = rows.T
            else:
                out[a:b_] = rows
        return out

    def _stored_dtype(self, name: str) -> np.dtype:
        return np.dtype(self.ckpt.spec(name).dtype)

    def matrix(self, name: str, *, role: str, as_name: str | None = None) -> ir.Value:
        """A float32 [in, out] matrix from the checkpoint's [out, in] `name` (initializer `as_name` or `name`)."""
        shape = tuple(self.ckpt.spec(name).shape)[::-1]
        keep_bf16 = self.dense == "bfloat16" and self._stored_dtype(name) == ml_dtypes.bfloat16
        dtype = np.dtype(ml_dtypes.bfloat16) if keep_bf16 else np.dtype(np.float32)

        def produce() -> np.ndarray:
            return self._read_chunked(name, dtype, transpose=True)

        value = self.b.lazy_initializer(as_name or name, ir.DataType.from_numpy(dtype), shape, produce)
        return self.b.op("Cast", value, role=f"{role}/weight_f32", to=FLOAT) if keep_bf16 else value

    def stored(self, name: str) -> ir.Value:
        """A tensor exactly as stored (bf16 matrices for Gather, uint8 MXFP4 halves)."""
        spec = self.ckpt.spec(name)
        dtype = ir.DataType.from_numpy(np.dtype(spec.dtype))
        return self.b.lazy_initializer(name, dtype, spec.shape, lambda: self._read_chunked(name, np.dtype(spec.dtype)))

    def experts(self, name: str) -> tuple[str, tuple[ir.Value, ...]]:
        """Expert matrices of `name` (e.g. `...experts.gate_up_proj`) as the MoE op that consumes them wants them.

        MXFP4 checkpoints -> ("MoEMXFP4", (blocks [E,out,in/32,16], scales [E,out,in/32])): the stored uint8 halves.
        Dense checkpoints ([E,in,out], input-major, as transformers saves a dequantized model) -> ("MoE",
        (weight float32 [E,out,in],)): transposed, never re-encoded, so the export stays exact.
        """
        if f"{name}_blocks" in set(self.ckpt.names()):
            return "MoEMXFP4", (self.stored(f"{name}_blocks"), self.stored(f"{name}_scales"))
        E, n_in, n_out = self.ckpt.spec(name).shape

        def produce() -> np.ndarray:
            return np.ascontiguousarray(np.swapaxes(self._read(name, f32=True), 1, 2))  # [E,in,out] -> [E,out,in]

        return "MoE", (self.b.lazy_initializer(name, FLOAT, (E, n_out, n_in), produce),)

    def vector(self, name: str) -> ir.Value:
        """A float32 tensor (norm scales, biases, sinks)."""
        shape = self.ckpt.spec(name).shape
        return self.b.lazy_initializer(name, FLOAT, shape, lambda: self._read(name, f32=True))


# ---- layers ---------------------------------------------------------------------------------------------------
def linear(b: Builder, w: Weights, x: ir.Value, prefix: str, role: str, bias: bool = True) -> ir.Value:
    """x @ W.T + bias with W [out, in] from `prefix.weight`."""
    y = b.op("MatMul", x, w.matrix(f"{prefix}.weight", role=role), role=role)
    return b.op("Add", y, w.vector(f"{prefix}.bias"), role=f"{role}/bias") if bias else y


def rms_norm(b: Builder, cfg: ModelConfig, w: Weights, x: ir.Value, name: str, role: str) -> ir.Value:
    """x * rsqrt(mean(x^2) + eps) * scale over the last axis, in float32 (standard RMSNormalization-23)."""
    return b.op("RMSNormalization", x, w.vector(name), role=role, axis=-1, epsilon=cfg.rms_norm_eps)


def rope_tables(b: Builder, cfg: ModelConfig, position_ids: ir.Value) -> tuple[ir.Value, ir.Value]:
    """cos, sin [B,S,D/2] in float32: YaRN inverse frequencies times positions, times the attention factor.

    transformers computes `inv_freq.float() @ position_ids.float()` then cos/sin * attention_scaling in fp32;
    this is the same product, one multiply per element.
    """
    inv_freq, factor = yarn_inv_freq(cfg)
    with b.scope("rope"):
        pos = b.op("Cast", position_ids, role="positions", to=FLOAT)  # [B,S]
        pos = b.op("Unsqueeze", pos, b.const([2], np.int64, "axes_2"), role="positions_3d")  # [B,S,1]
        freqs = b.op("Mul", pos, b.const(inv_freq.astype(np.float32), role="inv_freq"), role="freqs")  # [B,S,D/2]
        scale = b.const(np.float32(factor), role="attention_factor")
        cos = b.op("Mul", b.op("Cos", freqs, role="cos_raw"), scale, role="cos")
        sin = b.op("Mul", b.op("Sin", freqs, role="sin_raw"), scale, role="sin")
    return cos, sin


def apply_rope(b: Builder, x: ir.Value, heads: int, cos: ir.Value, sin: ir.Value, role: str) -> ir.Value:
    """Non-interleaved RoPE on x [B,S,heads*D]: halves (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), with the
    standard RotaryEmbedding-23 (cos/sin [B,S,D/2] given per call, so no position_ids: one node per q and k)."""
    return b.op("RotaryEmbedding", x, cos, sin, role=role, num_heads=heads, interleaved=0)


def attention(
    b: Builder,
    cfg: ModelConfig,
    w: Weights,
    layer: int,
    x: ir.Value,
    rope: tuple[ir.Value, ir.Value],
    past: tuple[ir.Value, ir.Value],
    attention_mask: ir.Value,
) -> tuple[ir.Value, ir.Value, ir.Value]:
    """Self-attention block on normed x [B,S,H] -> (out [B,S,H], present_key, present_value)."""
    p = f"model.layers.{layer}.self_attn"
    bias = cfg.attention_bias
    with b.scope("attn"):
        q = apply_rope(b, linear(b, w, x, f"{p}.q_proj", "q_proj", bias), cfg.num_attention_heads, *rope, "q_rope")
        k = apply_rope(b, linear(b, w, x, f"{p}.k_proj", "k_proj", bias), cfg.num_key_value_heads, *rope, "k_rope")
        v = linear(b, w, x, f"{p}.v_proj", "v_proj", bias)
        out, present_k, present_v = b.op(
            "Attention", q, k, v, *past, attention_mask, w.vector(f"{p}.sinks"),
            role="attention", domain=DOMAIN, outputs=3,
            num_heads=cfg.num_attention_heads, kv_num_heads=cfg.num_key_value_heads,
            scale=float(cfg.head_dim**-0.5), window=cfg.window(layer),
        )  # out [B,S,Hq*D], present [B,Hkv,P+S,D]
        return linear(b, w, out, f"{p}.o_proj", "o_proj", bias), present_k, present_v


def moe(b: Builder, cfg: ModelConfig, w: Weights, layer: int, x: ir.Value) -> ir.Value:
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


def decoder_layer(
    b: Builder,
    cfg: ModelConfig,
    w: Weights,
    layer: int,
    x: ir.Value,
    rope: tuple[ir.Value, ir.Value],
    past: tuple[ir.Value, ir.Value],
    attention_mask: ir.Value,
) -> tuple[ir.Value, ir.Value, ir.Value]:
    """x [B,S,H] -> (x after the layer, present_key, present_value)."""
    p = f"model.layers.{layer}"
    with b.scope(f"layers.{layer}"):
        n = rms_norm(b, cfg, w, x, f"{p}.input_layernorm.weight", "input_norm")
        a, present_k, present_v = attention(b, cfg, w, layer, n, rope, past, attention_mask)
        x = b.op("Add", x, a, role="attn_residual")
        n = rms_norm(b, cfg, w, x, f"{p}.post_attention_layernorm.weight", "post_attn_norm")
        x = b.op("Add", x, moe(b, cfg, w, layer, n), role="moe_residual")
    return x, present_k, present_v


def window_masks(b: Builder, cfg: ModelConfig, input_ids: ir.Value, attention_mask: ir.Value,
                 pasts: list[tuple[ir.Value, ir.Value]]) -> dict[int, tuple[ir.Value, ir.Value]]:
    """Window-sized caches: per window W > 0, (the mask of that window's layers, where their presents start).

    A sliding layer's cache keeps the last W-1 slots (a query at slot i reads slots i-W < j <= i; the next query
    needs the W-1 before it), as transformers' sliding-window cache does. Its past holds P_w <= P slots, the
    last P_w of the full cache, so its mask is the last P_w + S columns of attention_mask [B, P+S]; slot
    distances, hence the window, are unchanged. Its present = the last min(P_w + S, W-1) slots of the
    attention's output cache. Every layer of one window has the same P_w (the first one's past is read)."""
    out: dict[int, tuple[ir.Value, ir.Value]] = {}
    for i in range(cfg.num_hidden_layers):
        W = cfg.window(i)
        if W <= 0 or W in out:
            continue
        with b.scope(f"window_cache.{W}"):
            zero, one = b.const([0], np.int64, "zero"), b.const([1], np.int64, "one")
            two, three = b.const([2], np.int64, "two"), b.const([3], np.int64, "three")
            past_w = b.op("Slice", b.op("Shape", pasts[i][0], role="past_shape"), two, three, role="past_len")  # [1]
            seq = b.op("Slice", b.op("Shape", input_ids, role="ids_shape"), one, two, role="seq_len")  # [1]
            total = b.op("Slice", b.op("Shape", attention_mask, role="mask_shape"), one, two, role="mask_len")
            mine = b.op("Add", past_w, seq, role="layer_total")  # [1] = P_w + S
            start = b.op("Sub", total, mine, role="mask_start")  # P - P_w >= 0
            mask = b.op("Slice", attention_mask, start, b.const([INT64_MAX], np.int64, "end"), one, role="mask")
            keep = b.const([W - 1], np.int64, "keep")
            cut = b.op("Max", b.op("Sub", mine, keep, role="cut"), zero, role="present_start")  # [1]
        out[W] = (mask, cut)
    return out


def trim_present(b: Builder, present: ir.Value, cut: ir.Value, role: str) -> ir.Value:
    """present [B,Hkv,T,D] -> its slots from `cut` on (axis 2)."""
    end, axis = b.const([INT64_MAX], np.int64, "end"), b.const([2], np.int64, "axis_seq")
    return b.op("Slice", present, cut, end, axis, role=role)


def build(ckpt, *, dense: str = "bfloat16", hidden_states: bool = False,
          window_cache: bool = True) -> tuple[Builder, list, list]:
    """The whole portable graph: (builder with nodes/initializers, graph inputs, graph outputs).

    window_cache: sliding layers keep only the last W-1 cache slots (`window_masks`); False keeps every slot."""
    cfg: ModelConfig = ckpt.config
    b = Builder()
    b.use_domain(DOMAIN, DOMAIN_VERSION)
    w = Weights(b, ckpt, dense)
    L, Hkv, D, V, H = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size, cfg.hidden_size

    input_ids = tensor_value("input_ids", INT64, [BATCH, SEQ])
    attention_mask = tensor_value("attention_mask", INT64, [BATCH, TOTAL])
    position_ids = tensor_value("position_ids", INT64, [BATCH, SEQ])
    windowed = [window_cache and cfg.window(i) > 0 for i in range(L)]
    pasts = [tuple(tensor_value(n, FLOAT, [BATCH, Hkv, PAST_W if windowed[i] else PAST, D]) for n in past_names(i))
             for i in range(L)]

    with b.scope("embed"):
        x = b.op("Gather", w.stored("model.embed_tokens.weight"), input_ids, role="gather", axis=0)  # [B,S,H]
        x = b.op("Cast", x, role="to_float", to=FLOAT)  # bf16 rows only: the table stays as stored
    rope = rope_tables(b, cfg, position_ids)
    windows = window_masks(b, cfg, input_ids, attention_mask, pasts) if window_cache else {}

    presents, hidden = [], []
    for i in range(L):
        mask, cut = windows.get(cfg.window(i), (attention_mask, None))
        x, pk, pv = decoder_layer(b, cfg, w, i, x, rope, pasts[i], mask)
        if cut is not None:
            with b.scope(f"layers.{i}"):
                pk, pv = trim_present(b, pk, cut, "present_key"), trim_present(b, pv, cut, "present_value")
        dims = [BATCH, Hkv, PRESENT_W if cut is not None else TOTAL, D]
        presents += [set_output(v, n, FLOAT, dims) for v, n in zip((pk, pv), present_names(i))]
        if hidden_states:
            # The residual also feeds the next layer; an Identity gives the output its own name.
            with b.scope(f"layers.{i}"):
                h = b.op("Identity", x, role="hidden")
            hidden.append(set_output(h, f"hidden_states.{i}", FLOAT, [BATCH, SEQ, H]))

    with b.scope("final"):
        x = rms_norm(b, cfg, w, x, "model.norm.weight", "norm")
    head = "lm_head.weight" if "lm_head.weight" in set(ckpt.names()) else "model.embed_tokens.weight"  # tied
    with b.scope("lm_head"):
        logits = b.op("MatMul", x, w.matrix(head, role="matmul", as_name="lm_head.weight"), role="matmul")
    logits = set_output(logits, "logits", FLOAT, [BATCH, SEQ, V])

    inputs = [input_ids, attention_mask, position_ids, *(v for pair in pasts for v in pair)]
    return b, inputs, [logits, *presents, *hidden]
