"""The NumPy reference model of every family: the numbers every export is checked against.

    model = ReferenceModel("ckpt_dir")                    # or an open Checkpoint; dtype=np.float64 for a tighter oracle
    out = model.forward(ids)                              # ModelOutput(logits [B,S,V], present [(k, v)] per layer)
    outputs = model.infer(feeds)                          # the model I/O names (mxport/contract/io.py), like ORT
    ids = model.generate_greedy(ids, max_new_tokens=8)    # KV-cached greedy decoding

Weights are read lazily from the Checkpoint. Dense tensors are converted to the compute dtype once and cached,
MXFP4 halves cached as stored, when that stays under CACHE_LIMIT_BYTES (tiny, mini); larger checkpoints (or
`cache_weights=False`) re-read each tensor on use, so memory holds about one layer's tensors (or the vocabulary matrix) at a time. MXFP4
experts stay MXFP4: per call and layer, only the experts some token chose are dequantized (ops.mxfp4.decode).
The math is `runtime/oracle/layers.py`; this module wires weights, cache, masks and positions, and the family's
NumPy wiring (runtime/oracle/families/<family>.py: positions, embed, layer, final_norm) wires one layer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from mxport.contract import io
from mxport.contract.progress import Progress, report
from mxport.errors import MxportError
from mxport.files import write_file

from mxport.exporter.families.base import DecoderConfig
from mxport.runtime.oracle import families, layers as L
from mxport.runtime.oracle.quantized import Quantization, Rounding

CACHE_LIMIT_BYTES = 4 << 30  # cache_weights=None caches every weight only below this (gpt-oss-20b streams)
KVCache = list[tuple[np.ndarray, np.ndarray]]  # per layer (key [B,Hkv,T,D] after RoPE, value [B,Hkv,T,D])


@dataclass
class ModelOutput:
    logits: np.ndarray  # [B,S,V]
    present: KVCache  # per layer, past and new concatenated: [B,Hkv,P+S,D]
    hidden_states: list[np.ndarray] | None = field(default=None)  # per layer, residual stream after it: [B,S,H]


def _open(checkpoint_or_path: Any) -> tuple[Any, bool]:
    """A Checkpoint (anything with config/names/get/get_f32) as is, or a path opened here (then owned)."""
    if isinstance(checkpoint_or_path, (str, os.PathLike)):
        from mxport.exporter.checkpoint import open_checkpoint

        return open_checkpoint(Path(checkpoint_or_path)), True
    return checkpoint_or_path, False


class ReferenceModel:
    """A decoder's forward pass in NumPy, float32 (matches transformers' fp32 eager path) or float64."""

    def __init__(
        self,
        checkpoint_or_path: Any,
        dtype: Any = np.float32,
        *,
        cache_weights: bool | None = None,
        output_hidden_states: bool = False,
        window_cache: bool = False,
        experts: str = "float",
        progress: Progress | None = None,
        quantization: Quantization | None = None,
    ) -> None:
        """window_cache: sliding layers' presents keep only their last W-1 slots (what an export made with the
        default window cache returns, and what transformers' sliding-window cache keeps); False keeps all.
        experts: "float" = the checkpoint's experts as stored; "mxfp4" = float experts as an `--experts mxfp4`
        export holds them (encoded and decoded, per chosen expert), i.e. quantization=Quantization("mxfp4").
        quantization: the numbers of a lossy export (runtime/oracle/quantized.py): weight matrices and experts
        rounded as the export holds them, activations quantized where its kernels do; None = as stored.
        progress (an attribute too, settable later): progress("layers", done, layers) after each layer of every
        forward (mxport.contract.progress)."""
        self.progress = progress
        self.dtype = np.dtype(dtype)
        self.window_cache = window_cache
        if experts not in ("float", "mxfp4"):
            raise MxportError(f"ReferenceModel: experts must be 'float' or 'mxfp4', found {experts!r}")
        self.experts = experts
        if self.dtype not in (np.float32, np.float64):
            raise MxportError(f"ReferenceModel: dtype must be float32 or float64, found {self.dtype}")
        self.ckpt, self._owns_ckpt = _open(checkpoint_or_path)
        self.cfg: DecoderConfig = self.ckpt.config
        stored_mxfp4 = bool(getattr(self.cfg, "experts_mxfp4", False))
        if experts == "mxfp4" and quantization is None:
            quantization = Quantization("mxfp4", checkpoint_mxfp4=stored_mxfp4)
        self.quantization = quantization if quantization is not None and quantization.lossy else None
        self.family = self.cfg.family
        self.wiring = families.wiring(self.family)  # positions, embed, layer, final_norm
        self.output_hidden_states = output_hidden_states
        self._cache: dict[str, np.ndarray] = {}
        self._tapped: dict[str, np.ndarray] = {}  # value -> the reference's own, where the export's replaced it
        self._real: np.ndarray | None = None  # [B,S] real positions of the call in progress
        self._given: set[str] = set()  # values replaced by the export's in the call in progress
        names = set(self.ckpt.names())
        # The checkpoint decides tied vs stored (Checkpoint.output_name); an in-memory stand-in by its names.
        self._head = getattr(self.ckpt, "output_name", None) or (
            self.family.embedding if self.cfg.tie_word_embeddings and self.family.output not in names
            else self.family.output)
        tied = self._head == self.family.embedding
        missing = [n for n in self._required_names(not tied) if n not in names]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise MxportError(f"checkpoint {self._where()}: missing tensors {shown}")
        if cache_weights is None:  # auto: keep weights when the cache stays small (tiny, mini), else stream
            cache_weights = self._cached_bytes() <= CACHE_LIMIT_BYTES
        self.cache_weights = cache_weights

    # ---- weights ----------------------------------------------------------------------------------------------
    def _where(self) -> str:
        return str(getattr(self.ckpt, "path", getattr(self.ckpt, "root", "<in memory>")))

    def _cached_bytes(self) -> int:
        """What caching every weight would hold: dense tensors in the compute dtype, MXFP4 halves as stored."""
        spec = getattr(self.ckpt, "spec", None)
        if spec is None:  # an in-memory checkpoint holds its tensors already
            return 0
        total = 0
        for name in self.ckpt.names():
            s = spec(name)
            n = int(np.prod(s.shape, dtype=np.int64))
            total += n if np.dtype(s.dtype) == np.uint8 else n * self.dtype.itemsize
        return total

    def _required_names(self, lm_head: bool) -> list[str]:
        """The family's table, the output projection first (the one a hand-made checkpoint most often lacks)."""
        table = [e.name for e in self.family.tensors(self.cfg, lm_head)]
        return sorted(table, key=lambda n: n != self._head)

    def w(self, name: str) -> np.ndarray:
        """A dense tensor in the compute dtype (cached unless cache_weights=False)."""
        w = self._cache.get(name)
        if w is None:
            w = np.asarray(self.ckpt.get_f32(name)).astype(self.dtype)
            if self.quantization is not None:  # as a lossy export stores it (float16)
                w = self.quantization.stored(w)
            if self.cache_weights:
                self._cache[name] = w
        return w

    def linear(self, x: np.ndarray, name: str, bias: np.ndarray | None = None, *, in_out: bool = False) -> np.ndarray:
        """x @ Wᵀ (+ bias) for the weight matrix `name` (stored [out, in]; `in_out`: [in, out], GPT-2's Conv1D), as
        the export computes it: with the export's quantized matrix and activations when self.quantization says so."""
        q = self.quantization
        if q is None or q.dense in ("float32", "bfloat16"):
            w = self.w(name)
            y = x @ w if in_out else x @ w.T
        else:
            key = "quantized:" + name
            prepared = self._cache.get(key)
            if prepared is None:
                w = np.asarray(self.ckpt.get_f32(name), np.float32)
                prepared = q.prepare_dense(w.T if in_out else w)
                if self.cache_weights:
                    self._cache[key] = prepared
            y = q.dense_product(x, prepared, self.dtype)
        return y if bias is None else y + bias

    def expert(self, w: np.ndarray, key: str | None = None) -> np.ndarray:
        """One expert's matrix [out, in] in the compute dtype, as the export holds it (self.quantization); cached
        under `key` (e.g. "model.layers.0.mlp.experts.down_proj[5]") with the weights, as quantizing is slow."""
        q = self.quantization
        if q is None:
            return w
        cached = self._cache.get("quantized:" + key) if key else None
        if cached is None:
            cached = q.expert_weight(w).astype(self.dtype)
            if key and self.cache_weights:
                self._cache["quantized:" + key] = cached
        return cached

    def expert_input(self, x: np.ndarray) -> np.ndarray:
        """The input of an expert GEMM as the export's MoE kernel sees it."""
        q = self.quantization
        return x if q is None else q.expert_activations(x).astype(self.dtype, copy=False)

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` of a [N, H] table (embeddings) in the compute dtype; without the weight cache only the rows
        asked for are converted."""
        if self.cache_weights or name in self._cache:
            return self.w(name)[ids]
        rows = np.asarray(self.ckpt.get(name))[ids].astype(np.float32).astype(self.dtype)
        return rows if self.quantization is None else self.quantization.stored(rows)

    def raw(self, name: str) -> np.ndarray:
        """A tensor as stored (MXFP4 halves as uint8), cached unless cache_weights=False."""
        key = "raw:" + name
        w = self._cache.get(key)
        if w is None:
            w = np.asarray(self.ckpt.get(name))
            if self.cache_weights:
                self._cache[key] = w
        return w

    # ---- forward ----------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        position_ids: np.ndarray | None = None,
        past: KVCache | None = None,
        return_hidden_states: bool = False,
    ) -> ModelOutput:
        """input_ids [B,S]; attention_mask [B,P+S] (1 keep, 0 pad, left padding); position_ids [B,S];
        past: per layer (key, value) [B,Hkv,P_i,D]: P_i = P for full-attention layers, P_i <= P for sliding
        layers (a window-sized cache: the last P_i slots). Defaults: mask all ones, positions cumsum(mask)-1
        clipped at 0."""
        cfg = self.cfg
        ids, mask, pos, past = self._check_inputs(input_ids, attention_mask, position_ids, past)
        B, S = ids.shape
        P = mask.shape[1] - S
        tables = self.wiring.positions(self, pos)  # e.g. RoPE cos, sin [B,S,D/2]; None for learned positions
        keep_masks: dict[tuple[int, int], np.ndarray] = {}

        def keep(i: int) -> np.ndarray:
            # a window-sized cache holds the last P_i slots of the full one: its mask is the tail of `mask`
            key = (cfg.window(i), 0 if past is None else past[i][0].shape[2])
            if key not in keep_masks:
                w, p_i = key
                keep_masks[key] = L.attention_keep_mask(mask[:, P - p_i :], p_i, S, w)
            return keep_masks[key]

        self._tapped, self._given, self._real = {}, set(), mask[:, P:].astype(bool)
        x = self.wiring.embed(self, ids, pos)  # [B,S,H]
        present: KVCache = []
        hidden: list[np.ndarray] = []
        for i in range(cfg.num_hidden_layers):
            x, kv = self.wiring.layer(self, i, x, tables, keep(i), None if past is None else past[i])
            if self.window_cache and cfg.window(i) > 0:  # keep the W-1 slots the next query can still see
                kv = tuple(t[:, :, max(t.shape[2] - (cfg.window(i) - 1), 0) :] for t in kv)
            present.append(kv)
            if return_hidden_states:
                hidden.append(x)
            x = self._forced(i, x, mask[:, P:])
            report(self.progress, "layers", i + 1, cfg.num_hidden_layers)
        x = self.tap(None, io.FINAL_NORM, self.wiring.final_norm(self, x))
        logits = self.linear(x, self._head)
        return ModelOutput(logits, present, hidden if return_hidden_states else None)

    def _forced(self, i: int, x: np.ndarray, real: np.ndarray) -> np.ndarray:
        """The residual the next layer starts from: the export's own after layer i where verify gave it and the
        export quantizes activations (Quantization.rounding.targets), else the reference's.

        With int8 activations a last-bit difference rounds an activation at x.5 steps the other way, and the next
        layer's thousands of roundings amplify any difference left after one layer (a mini-shaped int4 export:
        2e-3 after layer 0, 0.17 after layer 1). Each layer is therefore judged on the export's own input, to the
        same float32 tolerance: a wrong weight still fails at its layer, the head is judged on the export's last
        hidden state. Padded positions keep the reference's values."""
        q = self.quantization
        target = q.rounding.targets.get(i) if q is not None and q.quantizes_activations else None
        if target is None or target.shape != x.shape:
            return x
        return np.where(real.astype(bool)[..., None], target.astype(x.dtype, copy=False), x)

    def tapped(self, i: int | None, role: str) -> bool:
        """Whether the call in progress runs on the export's own value `layers.{i}/{role}` (tap)."""
        return io.tap_value(i, role) in self._given

    def fit_experts(self, i: int, out: np.ndarray, base: np.ndarray, row) -> np.ndarray:
        """out [T,H], layer i's MoE output, with the rows the export's residual shows to round a near-tie the
        other way fitted (Quantization.fit_rows); row(t, act, act_mid) -> [1,H] runs token t's experts with the
        given activations of the two GEMMs. On the export's own MoE input (tapped) the first GEMM's int8 input is
        the export's exactly, so only the SwiGLU output's near-ties are candidates."""
        q = self.quantization
        if q is None:
            return out
        tapped = self.tapped(i, io.POST_ATTN_NORM)

        def run(t: int, rounding) -> np.ndarray:
            def act(a, r=rounding):
                return q.expert_activations(a, r).astype(self.dtype, copy=False)
            return row(t, (lambda a: act(a, Rounding())) if tapped else act, act)

        return q.fit_rows(i, out, base, run, self.real_rows)

    @property
    def real_rows(self) -> np.ndarray | None:
        """[B*S] real positions of the call in progress, row by row as a layer's tokens are flattened."""
        return None if self._real is None else self._real.reshape(-1)

    def tap(self, i: int | None, role: str, x: np.ndarray) -> np.ndarray:
        """x [B,S,*], the reference's value `layers.{i}/{role}` (io.tap_value: an input of layer i's matrix
        products; i None: the head's), or the export's own value of that name where verify gave it (an export that
        quantizes activations: Quantization.rounding.taps) on the real positions.

        Each product of such an export is so judged on the export's own input: a last-bit difference in a norm or
        an attention output (float32 summation order) would otherwise round an int8 activation at x.5 steps the
        other way. The reference's own value is kept (self._tapped) and returned by infer as tap/{value}, which
        verify compares with the export's to the same tolerance: a wrong norm or attention still fails there."""
        q = self.quantization
        value = io.tap_value(i, role)
        given = q.rounding.taps.get(value) if q is not None and q.quantizes_activations else None
        if given is None or self._real is None:
            return x
        self._tapped[value] = x
        if given.shape != x.shape:  # compared (and named) by verify as a shape mismatch
            return x
        self._given.add(value)
        return np.where(self._real[..., None], given.astype(x.dtype, copy=False), x)

    def _check_inputs(self, input_ids, attention_mask, position_ids, past):
        cfg = self.cfg
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise MxportError(f"{io.INPUT_IDS}: expected an integer array [B,S], found {ids.dtype} {ids.shape}")
        B, S = ids.shape
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
            raise MxportError(
                f"{io.INPUT_IDS}: ids must lie in [0, vocab_size={cfg.vocab_size}), found {ids.min()}..{ids.max()}"
            )
        lengths = []
        if past is not None:
            if len(past) != cfg.num_hidden_layers:
                raise MxportError(f"past: expected {cfg.num_hidden_layers} (key, value) pairs, found {len(past)}")
            want = (B, cfg.num_key_value_heads, None, cfg.head_dim)
            for i, (k, v) in enumerate(past):
                for name, t in zip(io.past_names(i), (k, v)):
                    if t.ndim != 4 or any(w is not None and w != s for w, s in zip(want, t.shape)) or t.shape != k.shape:
                        raise MxportError(
                            f"{name}: expected shape [B={B}, {want[1]}, P, {want[3]}] "
                            f"like {io.past_names(i)[0]} {k.shape}, found {t.shape}"
                        )
                lengths.append(k.shape[2])
        P = max(lengths, default=0)
        if attention_mask is None:
            mask = np.ones((B, P + S), dtype=np.int64)
        else:
            mask = np.asarray(attention_mask)
            if mask.ndim != 2 or mask.shape[0] != B or mask.shape[1] < P + S or (past is None and mask.shape[1] != S):
                raise MxportError(f"{io.ATTENTION_MASK}: expected shape [B, P+S] = {(B, P + S)}, found {mask.shape}")
            P = mask.shape[1] - S
        for i, p_i in enumerate(lengths):  # full layers hold every slot; sliding ones may hold only the last few
            if p_i > P or (p_i != P and cfg.window(i) == 0):
                raise MxportError(
                    f"{io.PAST}{i}: {p_i} cache slots, but {io.ATTENTION_MASK} covers {P} past slots"
                    + ("" if cfg.window(i) else " (a full-attention layer must hold all of them)")
                )
        if position_ids is None:
            pos = io.position_ids(mask, S)
        else:
            pos = np.asarray(position_ids)
            if pos.shape != (B, S):
                raise MxportError(f"{io.POSITION_IDS}: expected shape [B, S] = {(B, S)}, found {pos.shape}")
        return ids, mask, pos.astype(np.int64), past

    # ---- runner interface (ARCHITECTURE.md "Model I/O") ---------------------------------------------------------
    def infer(self, feeds: dict[str, np.ndarray], *, hidden_states: bool | None = None) -> dict[str, np.ndarray]:
        """Feeds and outputs named as in the exported graph; outputs float32 like the graph's.

        `past_key_values.{i}.key/.value` are optional as a whole (absent = empty cache); `hidden_states.{i}` are
        returned when `hidden_states` (default: the constructor's `output_hidden_states`) is true."""
        n = self.cfg.num_hidden_layers
        inputs = (io.INPUT_IDS, io.ATTENTION_MASK, io.POSITION_IDS)
        past_names = [io.past_names(i) for i in range(n)]
        if unknown := sorted(set(feeds) - {*inputs, *(name for pair in past_names for name in pair)}):
            raise MxportError(
                f"infer: unknown feeds {unknown} (expected {', '.join(inputs)} and "
                f"{io.PAST}{{i}}.key/.value for i < {n})"
            )
        if io.INPUT_IDS not in feeds:
            raise MxportError(f"infer: missing feed {io.INPUT_IDS!r}")
        given = [name for pair in past_names for name in pair if name in feeds]
        if given and len(given) != 2 * n:
            missing = [name for pair in past_names for name in pair if name not in feeds]
            raise MxportError(f"infer: past_key_values incomplete, missing {missing[:4]}")
        past = [(feeds[k], feeds[v]) for k, v in past_names] if given else None
        want_hidden = self.output_hidden_states if hidden_states is None else hidden_states
        out = self.forward(
            feeds[io.INPUT_IDS], feeds.get(io.ATTENTION_MASK), feeds.get(io.POSITION_IDS), past, want_hidden
        )
        result = {io.LOGITS: out.logits.astype(np.float32)}
        for i, kv in enumerate(out.present):
            result.update({name: t.astype(np.float32) for name, t in zip(io.present_names(i), kv)})
        for i, h in enumerate(out.hidden_states or ()):
            result[io.hidden_name(i)] = h.astype(np.float32)
        for value, x in self._tapped.items():
            result[io.tap_name(value)] = x.astype(np.float32)
        return result

    # ---- decoding ---------------------------------------------------------------------------------------------
    def generate_greedy(
        self,
        input_ids: np.ndarray,
        max_new_tokens: int,
        attention_mask: np.ndarray | None = None,
        *,
        eos_token_ids: Iterable[int] | None = None,
        logits_out: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Greedy decoding with the KV cache: prefill the prompt, then feed one token at a time.

        Returns ids [B, S+N] (prompt and the N <= max_new_tokens new tokens). With `eos_token_ids`, a row that
        produced one keeps repeating it and decoding stops once every row has. When `logits_out` is a list,
        the logits of every call are appended to it ([B,S,V] for the prompt, then [B,1,V] per step)."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2:
            raise MxportError(f"{io.INPUT_IDS}: expected [B,S], found shape {ids.shape}")
        if max_new_tokens < 0:
            raise MxportError(f"max_new_tokens must be >= 0, found {max_new_tokens}")
        B, S = ids.shape
        mask = np.ones((B, S), np.int64) if attention_mask is None else np.asarray(attention_mask, np.int64)
        eos = np.array(sorted(set(eos_token_ids or ())), dtype=np.int64)
        done = np.zeros(B, dtype=bool)
        tokens = [ids]
        step_ids, past = ids, None
        for _ in range(max_new_tokens):
            out = self.forward(step_ids, mask, io.position_ids(mask, step_ids.shape[1]), past)
            if logits_out is not None:
                logits_out.append(out.logits)
            nxt = out.logits[:, -1].argmax(axis=-1).astype(np.int64)
            nxt = np.where(done, tokens[-1][:, -1], nxt)
            tokens.append(nxt[:, None])
            done |= np.isin(nxt, eos)
            if done.all():
                break
            step_ids, past = nxt[:, None], out.present
            mask = np.concatenate([mask, np.ones((B, 1), np.int64)], axis=1)
        return np.concatenate(tokens, axis=1)

    def close(self) -> None:
        self._cache.clear()
        if self._owns_ckpt:
            self.ckpt.close()

    def __enter__(self) -> ReferenceModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_checkpoint(
    ckpt_dir: str | os.PathLike,
    input_ids: np.ndarray,
    max_new_tokens: int = 0,
    logits_out: str | os.PathLike | None = None,
    *,
    dtype: Any = np.float32,
    eos_token_ids: Iterable[int] | None = None,
) -> np.ndarray:
    """The `mxport run --backend numpy` hook: greedy-decode `input_ids` ([S] or [B,S]) on the checkpoint.

    Returns ids [B, S+N]. With `logits_out`, writes (atomically) float32 logits of every position that was run
    through the model: [B, S+N-1, V] when N >= 1 new tokens were produced (row t predicts token t+1), [B,S,V]
    when max_new_tokens is 0."""
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise MxportError(f"input ids: expected integers of shape [S] or [B,S], found {ids.dtype} {ids.shape}")
    with ReferenceModel(ckpt_dir, dtype=dtype) as model:
        if max_new_tokens == 0:
            logits = [model.forward(ids).logits]
            result = ids.astype(np.int64)
        else:
            logits = []
            result = model.generate_greedy(ids, max_new_tokens, eos_token_ids=eos_token_ids, logits_out=logits)
    if logits_out is not None:
        array = np.concatenate(logits, axis=1).astype(np.float32)
        write_file(Path(logits_out), lambda f: np.save(f, array))
    return result
