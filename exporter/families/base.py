"""What every model family shares: the decoder description the runtime reads, tensor tables, and the Family record.

    DecoderConfig   frozen fields every family has under the same names (vocab, layers, attention shape, windows,
                    positions, eos/pad, tied head); a family's own config subclasses it and adds its fields
    Rope            rotary embedding parameters (default, linear, YaRN) and `inv_freq()`: one home for RoPE math
    Expected        one tensor of a family's canonical table: name, shape, MXFP4-packed or float
    Source          where a canonical tensor lives in the stored files (a stored name, maybe a row range)
    Family          the registry entry: names, config parsing, tensor table and layouts, graph and reference
                    wiring, presets, chat format (exporter/families/__init__.py keeps the list)
    CAPS            the realistic size caps every config is checked against before anything per-layer is built

A family module is pure functions over its frozen config; nothing outside `exporter/families/` asks which family
a model is: it asks the Family record.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mxport.errors import MxportError

SLIDING = "sliding_attention"
FULL = "full_attention"


# ---- rotary embeddings ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rope:
    """RoPE parameters as transformers' `rope_parameters` spells them (rope_type default | linear | yarn)."""

    theta: float = 10000.0
    rope_type: str = "default"  # default | linear | yarn
    factor: float = 1.0  # linear: positions / factor; yarn: s
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    original_max_position: int = 4096  # yarn L: the pre-training context
    truncate: bool = True  # yarn: floor/ceil the correction range (transformers' default True; gpt-oss false)
    attention_factor: float | None = None  # yarn: cos/sin scale; None = 0.1 ln(s) + 1

    def inv_freq(self, head_dim: int) -> tuple[np.ndarray, float]:
        """Inverse frequencies [head_dim/2] (float64) and the cos/sin scale.

        default: 1/theta^(2i/d). linear: the same / factor. yarn (transformers' `_compute_yarn_parameters`, the
        openai reference): freq_i = theta^(2i/d); low/high = d/2 ln(L/(beta 2 pi))/ln theta for beta_fast/slow;
        ramp = clip((i-low)/(high-low), 0, 1); inv = 1/(s freq) ramp + 1/freq (1-ramp); scale 0.1 ln s + 1."""
        d = head_dim
        freq = self.theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
        if self.rope_type == "linear":
            return 1.0 / (freq * self.factor), 1.0
        s = self.factor
        if self.rope_type != "yarn" or s == 1.0:
            return 1.0 / freq, 1.0

        def correction_dim(beta: float) -> float:
            return d * math.log(self.original_max_position / (beta * 2 * math.pi)) / (2 * math.log(self.theta))

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001  # transformers' guard against a zero-width ramp
        ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        inv_freq = (1.0 / (s * freq)) * ramp + (1.0 / freq) * (1.0 - ramp)
        scale = self.attention_factor if self.attention_factor is not None else 0.1 * math.log(s) + 1.0
        return inv_freq, scale


def parse_rope(d: Mapping[str, Any], source: str, *, default_theta: float | None = None,
               truncate_default: bool = True) -> Rope:
    """Rope from config.json: `rope_parameters` (transformers 5, theta inside) or `rope_theta` + `rope_scaling`."""
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(rope, Mapping):
        raise MxportError(f"{source}: 'rope_parameters' / 'rope_scaling' should be an object, found {rope!r}")
    theta = rope.get("rope_theta", d.get("rope_theta", default_theta))
    if theta is None:
        raise MxportError(f"{source}: missing required key 'rope_theta' (top level or in 'rope_parameters')")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "linear", "yarn"):
        raise MxportError(f"{source}: rope type {rope_type!r} is not supported (expected default, linear or yarn)")
    try:
        theta = float(theta)
        factor = float(rope.get("factor", 1.0)) if rope_type != "default" else 1.0
        if not (theta > 1.0 and math.isfinite(theta)) or not (factor > 0 and math.isfinite(factor)):
            raise ValueError
        return Rope(
            theta=theta, rope_type=rope_type, factor=factor,
            beta_fast=float(rope.get("beta_fast", 32.0)), beta_slow=float(rope.get("beta_slow", 1.0)),
            original_max_position=int(rope.get("original_max_position_embeddings",
                                                d.get("max_position_embeddings", 4096))),
            truncate=bool(rope.get("truncate", truncate_default)),
            attention_factor=None if rope.get("attention_factor") is None else float(rope["attention_factor"]),
        )
    except (TypeError, ValueError):
        raise MxportError(f"{source}: bad rope parameters {dict(rope)!r} (rope_theta={theta!r})") from None


# ---- realistic caps --------------------------------------------------------------------------------------------
# A config.json past these is refused before anything per-layer is built from it (a hostile num_hidden_layers of
# 10^6 would otherwise build tables of millions of tensors before the checkpoint's headers refuse it). Each cap is
# several times the largest published value (in brackets), so no real checkpoint comes near it.
CAPS: dict[str, int] = {
    "vocab_size": 1 << 22,  # 4,194,304 (Gemma 3: 262,144)
    "hidden_size": 1 << 16,  # 65,536 (Llama 3.1 405B: 16,384)
    "num_hidden_layers": 1024,  # (Llama 3.1 405B: 126; Qwen3-235B-A22B: 94; gpt-oss-120b: 36)
    "num_attention_heads": 1024,  # (Llama 3.1 405B: 128)
    "num_key_value_heads": 1024,
    "head_dim": 1024,  # (64 to 256)
    "intermediate_size": 1 << 18,  # 262,144, dense or per expert (Llama 3.1 405B: 53,248)
    "num_experts": 4096,  # per MoE layer (Kimi K2: 384; DeepSeek-V3: 256)
    "total_experts": 1 << 16,  # layers x experts, the per-expert tables (Kimi K2: 61 x 384 = 23,424)
    "max_position_embeddings": 1 << 24,  # 16,777,216 (Llama 4 Scout: 10,485,760); sliding windows as well
    "token_ids": 1024,  # entries of an eos_token_id list (a few)
}
CONFIG_MAX_BYTES = 4 << 20  # a config.json is kilobytes (a per-layer list of 1024 layers: ~25 kB)


def cap_problem(name: str, value: Any, cap: str | None = None, minimum: int = 1) -> str | None:
    """Why `value` (field `name`) is not an integer in minimum..CAPS[cap or name], or None when it is."""
    limit = CAPS[cap or name]
    if isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= limit:
        return None
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    return f"{name}={value!r} must be {what} (at most {limit:,})"


def experts_problem(layers: int, experts: int) -> str | None:
    """Why layers x experts is past CAPS["total_experts"] (the per-expert tables), or None."""
    if layers * experts <= CAPS["total_experts"]:
        return None
    return (f"num_hidden_layers x num_experts = {layers} x {experts} = {layers * experts:,} experts "
            f"(at most {CAPS['total_experts']:,})")


def capped(value: Any, key: str, source: str, cap: str, minimum: int = 1) -> int:
    """Config key `key`'s `value` as an int within minimum..CAPS[cap]; MxportError naming `source` and the key. For
    the sizes a parser builds per-layer lists from, checked before it does."""
    n = convert(value, key, source)
    if problem := cap_problem(key, n, cap, minimum):
        raise MxportError(f"{source}: {problem}")
    return n


# ---- the shared decoder description ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecoderConfig:
    """What the runtime (cache I/O, generation, verify, bench) reads of any family, under these names."""

    architecture: str = ""  # family name (registry key), recorded in mxport.json
    vocab_size: int = 0  # rows of the embedding and the output projection
    hidden_size: int = 0  # residual stream width H
    num_hidden_layers: int = 0
    num_attention_heads: int = 0  # query heads
    num_key_value_heads: int = 0  # KV heads (GQA groups of heads // kv_heads; = heads for multi-head attention)
    head_dim: int = 0  # D, explicit (not always hidden / heads)
    sliding_window: int = 0  # window of sliding layers: query i sees keys i-window < j <= i (0 = none)
    layer_types: tuple[str, ...] = field(default=())  # per layer: "sliding_attention" | "full_attention"
    max_position_embeddings: int = 0  # context length (learned positions: a hard limit)
    tie_word_embeddings: bool = False  # output projection = the embedding matrix
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        self.check_sizes()
        if not self.layer_types:
            object.__setattr__(self, "layer_types", (FULL,) * self.num_hidden_layers)
        problems = self.problems()
        if problems:
            raise MxportError("invalid model config: " + "; ".join(problems))

    def size_problems(self) -> list[str]:
        """The shared sizes against CAPS (families extend this for their own sizes)."""
        names = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "head_dim")
        out = [p for p in (cap_problem(n, getattr(self, n)) for n in names) if p]
        positions = cap_problem("max_position_embeddings", self.max_position_embeddings, minimum=0)
        window = cap_problem("sliding_window", self.sliding_window, "max_position_embeddings", minimum=0)
        tokens = (f"eos_token_ids has {len(self.eos_token_ids)} entries (at most {CAPS['token_ids']})"
                  if len(self.eos_token_ids) > CAPS["token_ids"] else None)
        return out + [p for p in (positions, window, tokens) if p]

    def check_sizes(self) -> None:
        """MxportError unless every size is within CAPS: called first, before any per-layer value is built."""
        if problems := self.size_problems():
            raise MxportError("invalid model config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with the shared fields (families extend this for their own)."""
        out = self.size_problems()
        if out:
            return out
        if len(self.layer_types) != self.num_hidden_layers:
            out.append(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        if bad := sorted({t for t in self.layer_types if t not in (SLIDING, FULL)}):
            out.append(f"layer_types has unknown values {bad} (expected {SLIDING!r} or {FULL!r})")
        if SLIDING in self.layer_types and self.sliding_window <= 0:
            out.append(f"sliding layers need sliding_window > 0, found {self.sliding_window}")
        if self.num_attention_heads % self.num_key_value_heads:
            out.append(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                       f"num_key_value_heads={self.num_key_value_heads}")
        return out

    @property
    def position_limit(self) -> int:
        """Positions must stay below this (learned position embeddings have that many rows); 0 = no limit."""
        return 0

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        return tuple(t == SLIDING for t in self.layer_types)

    def window(self, layer: int) -> int:
        """Attention window of `layer` in tokens, 0 for full attention."""
        return self.sliding_window if self.layer_types[layer] == SLIDING else 0

    @property
    def q_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def replace(self, **changes: Any) -> DecoderConfig:
        return dataclasses.replace(self, **changes)

    @property
    def family(self) -> Family:
        from mxport.exporter import families

        return families.get(self.architecture)


# ---- tensor tables ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expected:
    """One tensor a config implies: canonical name, shape, and whether it is MXFP4 packed (uint8)."""

    name: str
    shape: tuple[int, ...]
    packed: bool = False


@dataclass(frozen=True)
class Source:
    """Where a canonical tensor lives in the stored files: stored name, and a row range for a fused tensor; or
    `parts`, a tensor stacked from several stored ones: canonical[j] = the stored tensors parts[j] concatenated
    along their first axis, each an equal share of it (Qwen3-MoE's per-expert files: parts[j] =
    (experts.j.gate_proj.weight, experts.j.up_proj.weight) for the canonical gate_up_proj [E, 2I, H]); `stored`
    is then the first part. Readers stack parts slice by slice (Checkpoint.get_rows reads only the asked ones)."""

    stored: str
    rows: tuple[int, int] | None = None
    parts: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def stacked(cls, parts: tuple[tuple[str, ...], ...]) -> Source:
        return cls(parts[0][0], parts=tuple(tuple(p) for p in parts))


# ---- config.json helpers ----------------------------------------------------------------------------------------
def need(d: Mapping[str, Any], key: str, source: str, kind: type = int) -> Any:
    """d[key] as `kind`; MxportError naming `source` and `key` when it is missing or of the wrong kind."""
    if key not in d:
        raise MxportError(f"{source}: missing required key {key!r}")
    return convert(d[key], key, source, kind)


def convert(value: Any, key: str, source: str, kind: type = int) -> Any:
    try:
        if kind is int and (isinstance(value, bool) or float(value) != int(value)):
            raise ValueError
        if kind is float and (isinstance(value, bool) or not math.isfinite(float(value))):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise MxportError(f"{source}: key {key!r} should be {kind.__name__}, found {value!r}") from None


def token_ids(value: Any, key: str, source: str) -> tuple[int, ...]:
    """eos_token_id as an int, a list of ints (at most CAPS["token_ids"]), or null -> tuple of ints."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    if len(items) > CAPS["token_ids"]:
        raise MxportError(f"{source}: key {key!r} lists {len(items)} token ids (at most {CAPS['token_ids']})")
    return tuple(convert(v, key, source) for v in items)


# ---- synthetic weights: the seeding rule every family's synthetic tensors share -----------------------------------
CHUNK_VALUES = 1 << 22  # float values generated per step (16 MB as float32)


def rng_for(seed: int, name: str) -> np.random.Generator:
    """The generator of canonical tensor `name`: seeded by (seed, name), so every layout holds the same values."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


# ---- the registry entry -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """A model family: everything family-specific, reached through these fields.

    Config:   config_from_dict(d, source) -> its DecoderConfig subclass; config_to_dict(cfg) -> config.json (HF).
    Tensors:  tensors(cfg, lm_head) -> [Expected] in canonical (HF) names and stable order; `lm_head` = whether
              the output projection is stored (None: as the config's tie_word_embeddings says).
              layouts: stored layouts it reads; sources(cfg, layout, lm_head, stored_names) -> {canonical: Source}
              (None: identity); ignored(stored_name) -> True for buffers a file may carry that are not weights;
              layout_of(d) -> layout name from the raw config.json.
    Graph:    graph, the folder's graph.py (embed/positions/layer/final_norm/output, see exporter/decoder_graph.py).
              The NumPy wiring is not named here: the runtime finds it by the family's name
              (runtime/oracle/families/NAME.py), so the exporter never imports the runtime.
    Head:     embedding / output: canonical names of the token embedding and the output projection.
    Presets:  synth presets {name: cfg}; init(name, cfg) -> (std, mean) for synthetic weights; synth: writes the
              tensors the generic Gaussian writer should not (gpt-oss's MXFP4 experts); synth_files(cfg, folder)
              writes what a synthetic checkpoint needs beside its weights (a tokenizer of the family's shape).
    Chat:     chat_format: "harmony" | "template" (the checkpoint's jinja chat_template) | None (no chat).
    """

    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    config_from_dict: Callable[[Mapping[str, Any], str], DecoderConfig]
    config_to_dict: Callable[[DecoderConfig], dict[str, Any]]
    tensors: Callable[..., list[Expected]]
    graph: ModuleType  # the graph wiring: the family folder's graph.py
    presets: Mapping[str, DecoderConfig] = field(default_factory=dict)
    layouts: tuple[str, ...] = ("hf",)
    layout_of: Callable[[Mapping[str, Any]], str] = lambda d: "hf"
    sources: Callable[..., dict[str, Source]] | None = None
    ignored: Callable[[str], bool] = lambda name: False
    chat_format: str | None = "template"
    embedding: str = "model.embed_tokens.weight"  # canonical name of the token embedding [V,H]
    output: str = "lm_head.weight"  # canonical name of the output projection [V,H] (absent when tied)
    init: Callable[[str, DecoderConfig], tuple[float, float]] | None = None
    synth: Callable[..., bool] | None = None  # (put, cfg, seed, expected, sources, done) -> True if it wrote it
    synth_files: Callable[[DecoderConfig, Path], None] | None = None  # (cfg, folder): tokenizer files beside it

    def __repr__(self) -> str:
        return f"Family({self.name!r})"
