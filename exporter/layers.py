"""Layers every family's graph is built from: weights read lazily from the checkpoint, linear, norms, RoPE, the
attention op call, MLPs, window-sized caches. Pure functions over onnx-ir values (docs/STYLE.md "Values, not name
strings", "A family is one folder over shared layers"); the differences between families are arguments (bias, eps,
qk norms, window), not branches on a family name.

    Weights(b, ckpt)            checkpoint tensor -> lazy initializer (matrices [in, out], bf16 + Cast or float32)
    linear(b, w, x, prefix)     x @ W.T (+ b)
    rms_norm / layer_norm       RMSNormalization-23 / LayerNormalization-17 over the last axis
    rope_tables / apply_rope    cos, sin [B,S,D/2] once per graph; RotaryEmbedding-23 per q and k
    attention(...)              ai.mxport Attention (GQA, window, KV cache, optional sinks)
    head_rms_norm               RMSNorm over head_dim, per head (Qwen3's q_norm / k_norm)
    swiglu_mlp                  dense SwiGLU MLP (silu(gate) * up, down)
    tied_output                 logits from the embedding table itself (stored once)
    window_masks / trim_present window-sized caches (ARCHITECTURE.md "Model I/O")
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx_ir as ir

from mxport.exporter.families.base import DecoderConfig, Rope
from mxport.exporter.graph import Builder

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


CHUNK_BYTES = 64 << 20  # checkpoint rows read per step when an initializer is written
OUT_IN = "mxport.out_in"  # Value.meta key of a matrix initializer: produces the matrix [out, in] (not serialized)
# Value.meta key (not serialized): (rows, transposed) where rows(start, stop) reads rows of the checkpoint tensor an
# initializer was made from, and transposed says the initializer holds that tensor transposed (matrix(): [in, out]
# from a checkpoint's [out, in]). Quantizing lowerings (lower/q4.py, lower/dense.py) read a chunk of rows at a time
# instead of the whole matrix, when those rows are the ones they need (dense.row_reader).
SOURCE_ROWS = "mxport.source_rows"


class Weights:
    """Checkpoint tensors as graph initializers, read lazily at save time (one tensor in memory at a time).

    storage="bfloat16": matrices keep the checkpoint's bf16 bytes and a Cast to float32 follows (exact, half size);
    storage="float32": matrices are stored as float32. Vectors (norms, biases, sinks) are always float32.
    MatMul weights are stored transposed, [in, out], so the graph is a plain `x @ W`.
    """

    def __init__(self, b: Builder, ckpt, storage: str = "bfloat16") -> None:
        if storage not in ("bfloat16", "float32"):
            raise ValueError(f"matrix storage must be 'bfloat16' or 'float32', found {storage!r}")
        self.b, self.ckpt, self.storage = b, ckpt, storage
        self._stored: dict[str, ir.Value] = {}  # one initializer per stored tensor, however many users

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

    def matrix(self, name: str, *, role: str, as_name: str | None = None, in_out: bool = False) -> ir.Value:
        """A float32 [in, out] matrix from the checkpoint's [out, in] `name` (initializer `as_name` or `name`).

        in_out: the checkpoint stores it [in, out] already (GPT-2's Conv1D): used as stored, no transpose."""
        shape = tuple(self.ckpt.spec(name).shape)[:: 1 if in_out else -1]
        keep_bf16 = self.storage == "bfloat16" and self._stored_dtype(name) == ml_dtypes.bfloat16
        dtype = np.dtype(ml_dtypes.bfloat16) if keep_bf16 else np.dtype(np.float32)

        def produce() -> np.ndarray:
            return self._read_chunked(name, dtype, transpose=not in_out)

        value = self.b.lazy_initializer(as_name or name, ir.DataType.from_numpy(dtype), shape, produce)
        # the same matrix [out, in], read straight from the checkpoint: --dense bfloat16 stores that layout (lower/bf16.py)
        value.meta[OUT_IN] = lambda: self._read_chunked(name, dtype, transpose=in_out)
        value.meta[SOURCE_ROWS] = (self._rows(name), not in_out)
        return self.b.op("Cast", value, role=f"{role}/weight_f32", to=FLOAT) if keep_bf16 else value

    def stored(self, name: str) -> ir.Value:
        """A tensor exactly as stored (bf16 matrices for Gather, uint8 MXFP4 halves); one initializer per name."""
        if name not in self._stored:
            spec = self.ckpt.spec(name)
            dtype = ir.DataType.from_numpy(np.dtype(spec.dtype))
            self._stored[name] = self.b.lazy_initializer(
                name, dtype, spec.shape, lambda: self._read_chunked(name, np.dtype(spec.dtype)))
            self._stored[name].meta[SOURCE_ROWS] = (self._rows(name), False)  # e.g. a tied head's table, [out, in]
        return self._stored[name]

    def _rows(self, name: str):
        """rows(start, stop) of `name` as stored; the file mapping is dropped after each read (see _read)."""
        def rows(start: int, stop: int) -> np.ndarray:
            try:
                return self.ckpt.get_rows(name, start, stop)
            finally:
                self.ckpt.close()

        return rows

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


def conv1d(b: Builder, w: Weights, x: ir.Value, prefix: str, role: str) -> ir.Value:
    """x @ W + bias with W [in, out] stored that way (GPT-2's Conv1D): no transpose."""
    y = b.op("MatMul", x, w.matrix(f"{prefix}.weight", role=role, in_out=True), role=role)
    return b.op("Add", y, w.vector(f"{prefix}.bias"), role=f"{role}/bias")


def tied_output(b: Builder, w: Weights, x: ir.Value, name: str) -> ir.Value:
    """logits = x [B,S,H] @ E.T with E [V,H] the token embedding, the same initializer the embedding Gather reads:
    stored once in the file. ORT would fold the Cast and Transpose into a float32 [H,V] copy when it loads (and
    prepack that): `--target cpu|cuda` rewrites this to FusedMatMul(E){transB 1} (lower/tied_head.py), no copy."""
    table = w.stored(name)
    if table.dtype != FLOAT:
        table = b.op("Cast", table, role="weight_f32", to=FLOAT)
    weight = b.op("Transpose", table, role="weight_t", perm=[1, 0])  # [H,V]
    return b.op("MatMul", x, weight, role="matmul")


def activation(b: Builder, x: ir.Value, name: str, role: str = "act") -> ir.Value:
    """transformers' ACT2FN[name] (the names in exporter/families/gpt2/config.ACTIVATIONS) with standard ops."""
    def c(value: float, tag: str) -> ir.Value:
        return b.const(np.float32(value), role=tag)

    if name in ("gelu", "gelu_python"):
        return b.op("Gelu", x, role=role, approximate="none")
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_accurate", "gelu_fast"):
        return b.op("Gelu", x, role=role, approximate="tanh")  # gelu_fast's 0.7978845608 = sqrt(2/pi) to 1e-11
    if name == "gelu_10":
        return b.op("Clip", b.op("Gelu", x, role=f"{role}/gelu", approximate="none"), c(-10, "minus_ten"),
                    c(10, "ten"), role=role)
    if name == "quick_gelu":
        return b.op("Mul", x, b.op("Sigmoid", b.op("Mul", x, c(1.702, "quick_gelu_alpha"), role=f"{role}/scaled"),
                                   role=f"{role}/sigmoid"), role=role)
    if name in ("silu", "swish"):
        return b.op("Mul", x, b.op("Sigmoid", x, role=f"{role}/sigmoid"), role=role)
    if name == "relu2":
        r = b.op("Relu", x, role=f"{role}/relu")
        return b.op("Mul", r, r, role=role)
    if name == "relu6":
        return b.op("Clip", x, c(0, "zero_f"), c(6, "six"), role=role)
    if name == "leaky_relu":
        return b.op("LeakyRelu", x, role=role, alpha=0.01)
    if name == "hardswish":
        return b.op("HardSwish", x, role=role)
    if name == "laplace":  # 0.5 (1 + erf((x - mu) / (sigma sqrt 2))), mu 0.707107, sigma 0.282095
        z = b.op("Div", b.op("Sub", x, c(0.707107, "laplace_mu"), role=f"{role}/centred"),
                 c(0.282095 * math.sqrt(2.0), "laplace_sigma"), role=f"{role}/z")
        e = b.op("Add", b.op("Erf", z, role=f"{role}/erf"), c(1, "one_f"), role=f"{role}/erf1")
        return b.op("Mul", e, c(0.5, "half"), role=role)
    if name == "sqrtsoftplus":
        return b.op("Sqrt", b.op("Softplus", x, role=f"{role}/softplus"), role=role)
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "linear": "Identity", "mish": "Mish"}
    if name in simple:
        return b.op(simple[name], x, role=role)
    raise ValueError(f"activation {name!r} has no graph form")  # GPT2Config refuses it before this


def mlp(b: Builder, w: Weights, x: ir.Value, up: str, down: str, act: str) -> ir.Value:
    """down(act(up(x))) with Conv1D [in, out] weights and biases (GPT-2's c_fc / c_proj): [B,S,H] -> [B,S,H]."""
    h = conv1d(b, w, x, up, "up_proj")  # [B,S,I]
    return conv1d(b, w, activation(b, h, act), down, "down_proj")


def rms_norm(b: Builder, w: Weights, x: ir.Value, name: str, role: str, eps: float) -> ir.Value:
    """x * rsqrt(mean(x^2) + eps) * scale over the last axis, in float32 (standard RMSNormalization-23)."""
    return b.op("RMSNormalization", x, w.vector(name), role=role, axis=-1, epsilon=eps)


def head_rms_norm(b: Builder, w: Weights, x: ir.Value, name: str, role: str, eps: float, heads: int,
                  head_dim: int) -> ir.Value:
    """RMSNorm over head_dim of each head (Qwen3's q_norm / k_norm): x [B,S,heads*D] -> [B,S,heads,D] ->
    RMSNormalization (scale [D]) -> [B,S,heads*D]."""
    split = b.op("Reshape", x, b.const([0, 0, heads, head_dim], np.int64, f"shape_{heads}_heads"), role=f"{role}/heads")
    normed = rms_norm(b, w, split, name, role, eps)
    return b.op("Reshape", normed, b.const([0, 0, heads * head_dim], np.int64, "shape_bsx"), role=f"{role}/merge")


def swiglu_mlp(b: Builder, w: Weights, x: ir.Value, prefix: str, bias: bool = False) -> ir.Value:
    """down(silu(gate(x)) * up(x)) with `prefix.{gate,up,down}_proj` [out, in]; silu = x * Sigmoid(x)."""
    gate = linear(b, w, x, f"{prefix}.gate_proj", "gate_proj", bias)
    up = linear(b, w, x, f"{prefix}.up_proj", "up_proj", bias)
    act = b.op("Mul", gate, b.op("Sigmoid", gate, role="gate_sigmoid"), role="silu")
    return linear(b, w, b.op("Mul", act, up, role="gated"), f"{prefix}.down_proj", "down_proj", bias)


def layer_norm(b: Builder, w: Weights, x: ir.Value, prefix: str, role: str, eps: float) -> ir.Value:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (LayerNormalization-17, float32)."""
    return b.op("LayerNormalization", x, w.vector(f"{prefix}.weight"), w.vector(f"{prefix}.bias"), role=role,
                axis=-1, epsilon=eps)


def attention(b: Builder, q: ir.Value, k: ir.Value, v: ir.Value, past: tuple[ir.Value, ir.Value],
              attention_mask: ir.Value, sinks: ir.Value | None, *, num_heads: int, kv_num_heads: int,
              scale: float, window: int) -> tuple[ir.Value, ir.Value, ir.Value]:
    """ai.mxport Attention on q [B,S,Hq*D], k, v [B,S,Hkv*D] (after RoPE) -> (out [B,S,Hq*D], present k, v).

    sinks None: no sink column (a -inf sink per head, which the op defines as none; lowering drops it)."""
    if sinks is None:
        sinks = b.const(np.full(num_heads, -np.inf, np.float32), role="no_sinks")
    return b.op(
        "Attention", q, k, v, *past, attention_mask, sinks,
        role="attention", domain=DOMAIN, outputs=3,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=float(scale), window=window,
    )  # out [B,S,Hq*D], present [B,Hkv,P+S,D]


def rope_tables(b: Builder, rope: Rope, head_dim: int, position_ids: ir.Value) -> tuple[ir.Value, ir.Value]:
    """cos, sin [B,S,D/2] in float32: YaRN inverse frequencies times positions, times the attention factor.

    transformers computes `inv_freq.float() @ position_ids.float()` then cos/sin * attention_scaling in fp32;
    this is the same product, one multiply per element.
    """
    inv_freq, factor = rope.inv_freq(head_dim)
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


def window_masks(b: Builder, cfg: DecoderConfig, input_ids: ir.Value, attention_mask: ir.Value,
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


