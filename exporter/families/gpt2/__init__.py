"""Family `gpt2` (GPT2LMHeadModel): config spellings, tensor table, stored names, presets, registry entry.

Graph wiring: exporter/families/gpt2/graph.py. NumPy wiring: runtime/oracle/families/gpt2.py. Chat: none (GPT-2 has no chat format;
`mxport run --prompt` continues text).

Canonical names are the ones GPT2LMHeadModel.save_pretrained writes (transformers 5):

    transformer.wte.weight [V,H]                 transformer.wpe.weight [n_positions,H]
    transformer.h.N.ln_1.{weight,bias} [H]       transformer.h.N.attn.c_attn.{weight [H,3H], bias [3H]}
    transformer.h.N.attn.c_proj.weight [H,H]     transformer.h.N.attn.c_proj.bias [H]
    transformer.h.N.ln_2.{weight,bias} [H]       transformer.h.N.mlp.c_fc.{weight [H,I], bias [I]}
    transformer.h.N.mlp.c_proj.{weight [I,H], bias [H]}
    transformer.ln_f.{weight,bias} [H]           lm_head.weight [V,H] (only when stored: tied to wte otherwise)

Conv1D weights are [in, out] (`y = x @ W + b`): used as stored, no transpose. c_attn stays fused: its output
columns are q, k, v in that order (heads*D each) and the graph splits the product, not the weight, so the
tensor streams by rows like any other. Older files (the original openai-community uploads) store the names
without `transformer.` and carry `attn.bias` / `attn.masked_bias` buffers (the causal mask): both read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mxport.errors import MxportError
from mxport.exporter.families.base import DecoderConfig, Expected, Family, Source, convert, need, token_ids

PREFIX = "transformer."
MAX_LAYERS = 1024  # far past any GPT-2 (xl has 48); a config asking for more is refused before tables are built

# transformers' ACT2FN names mxport computes exactly, on both sides (exporter/layers.activation,
# runtime/reference_layers.activation). Refused: prelu and xielu (they carry learned parameters GPT2MLP would
# save as extra tensors).
ACTIVATIONS = (
    "gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_accurate", "gelu_fast",
    "gelu_10", "quick_gelu", "relu", "relu2", "relu6", "leaky_relu", "silu", "swish", "sigmoid", "tanh", "linear",
    "mish", "hardswish", "laplace", "sqrtsoftplus",
)
REFUSED_ACTIVATIONS = {"prelu": "a learned slope per channel", "xielu": "learned alpha/beta parameters"}


@dataclass(frozen=True)
class GPT2Config(DecoderConfig):
    """GPT-2 hyper-parameters (family `gpt2`). Defaults are the published gpt2 (124M) values."""

    architecture: str = "gpt2"
    vocab_size: int = 50257
    hidden_size: int = 768  # n_embd
    num_hidden_layers: int = 12  # n_layer
    num_attention_heads: int = 12  # n_head
    num_key_value_heads: int = 12  # = heads (multi-head attention)
    head_dim: int = 64  # n_embd / n_head
    max_position_embeddings: int = 1024  # n_positions: rows of wpe, a hard limit on positions
    n_inner: int | None = None  # MLP width as config.json says it (None = 4 * n_embd)
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"  # an ACTIVATIONS name
    scale_attn_weights: bool = True  # scores / sqrt(head_dim)
    scale_attn_by_inverse_layer_idx: bool = False  # scores / (layer_idx + 1) as well
    reorder_and_upcast_attn: bool = False  # a mixed-precision training switch: mxport computes float32 anyway
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_ids: tuple[int, ...] = (50256,)
    pad_token_id: int | None = None

    @property
    def intermediate_size(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.hidden_size

    @property
    def position_limit(self) -> int:
        return self.max_position_embeddings

    def attention_scale(self, layer: int) -> float:
        """The factor on q·k of `layer`, as GPT2Attention computes it."""
        scale = self.head_dim**-0.5 if self.scale_attn_weights else 1.0
        return scale / float(layer + 1) if self.scale_attn_by_inverse_layer_idx else scale

    def problems(self) -> list[str]:
        out = super().problems()
        if out:
            return out
        if self.hidden_size != self.num_attention_heads * self.head_dim:
            out.append(f"n_embd={self.hidden_size} must be n_head={self.num_attention_heads} x head_dim="
                       f"{self.head_dim}")
        if self.num_key_value_heads != self.num_attention_heads:
            out.append("GPT-2 attention is multi-head: num_key_value_heads must equal n_head")
        if not isinstance(self.max_position_embeddings, int) or not 0 < self.max_position_embeddings <= 1 << 24:
            out.append(f"n_positions={self.max_position_embeddings!r} must be a positive integer (at most 2^24)")
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or not 0 < self.n_inner <= 1 << 24):
            out.append(f"n_inner={self.n_inner!r} must be null or a positive integer (at most 2^24)")
        if not (self.layer_norm_epsilon > 0 and math.isfinite(self.layer_norm_epsilon)):
            out.append(f"layer_norm_epsilon={self.layer_norm_epsilon!r} must be a positive number")
        if self.activation_function in REFUSED_ACTIVATIONS:
            out.append(f"activation_function={self.activation_function!r} is not supported: it has "
                       f"{REFUSED_ACTIVATIONS[self.activation_function]} (supported: {', '.join(ACTIVATIONS)})")
        elif self.activation_function not in ACTIVATIONS:
            out.append(f"activation_function={self.activation_function!r} is unknown (supported: "
                       f"{', '.join(ACTIVATIONS)})")
        if self.sliding_window or any(self.sliding_layers):
            out.append("GPT-2 has no sliding-window layers")
        return out

    def to_hf_dict(self) -> dict[str, Any]:
        """config.json as transformers writes it for GPT2LMHeadModel."""
        eos = self.eos_token_ids
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_embd": self.hidden_size,
            "n_layer": self.num_hidden_layers,
            "n_head": self.num_attention_heads,
            "n_positions": self.max_position_embeddings,
            "n_inner": self.n_inner,
            "activation_function": self.activation_function,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "reorder_and_upcast_attn": self.reorder_and_upcast_attn,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (eos[0] if len(eos) == 1 else list(eos)) if eos else None,
            "pad_token_id": self.pad_token_id,
            "add_cross_attention": False,
            "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
            "initializer_range": 0.02,
            "use_cache": True,
        }


def _flag(d: Mapping[str, Any], key: str, default: bool, source: str) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):
        raise MxportError(f"{source}: key {key!r} should be true or false, found {value!r}")
    return value


def config_from_dict(d: Mapping[str, Any], source: str = "config.json") -> GPT2Config:
    """GPT2Config from GPT-2's config.json spellings (n_embd, n_layer, n_head, n_positions, n_inner, ...)."""
    if d.get("add_cross_attention"):
        raise MxportError(f"{source}: add_cross_attention=true (an encoder-decoder GPT-2) is not supported")
    def spelled(gpt2_key: str, generic_key: str) -> int:  # GPT-2's key, or transformers' attribute_map alias
        return need(d, gpt2_key if gpt2_key in d or generic_key not in d else generic_key, source)

    H, heads, layers = spelled("n_embd", "hidden_size"), spelled("n_head", "num_attention_heads"), \
        spelled("n_layer", "num_hidden_layers")
    if not 0 < layers <= MAX_LAYERS:  # before the per-layer tables are built from it
        raise MxportError(f"{source}: n_layer={layers} must be in 1..{MAX_LAYERS}")
    positions = d.get("n_positions", d.get("max_position_embeddings", 1024))
    n_inner = d.get("n_inner")
    if heads > 0 and H % heads:
        raise MxportError(f"{source}: n_embd={H} is not divisible by n_head={heads}")
    activation = d.get("activation_function", "gelu_new")
    if not isinstance(activation, str):
        raise MxportError(f"{source}: key 'activation_function' should be a string, found {activation!r}")
    bos = d.get("bos_token_id", 50256)
    pad = d.get("pad_token_id")
    try:
        return GPT2Config(
            vocab_size=need(d, "vocab_size", source), hidden_size=H, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, head_dim=H // heads if heads > 0 else 0,
            max_position_embeddings=convert(positions, "n_positions", source),
            n_inner=None if n_inner is None else convert(n_inner, "n_inner", source),
            layer_norm_epsilon=convert(d.get("layer_norm_epsilon", 1e-5), "layer_norm_epsilon", source, float),
            activation_function=activation,
            scale_attn_weights=_flag(d, "scale_attn_weights", True, source),
            scale_attn_by_inverse_layer_idx=_flag(d, "scale_attn_by_inverse_layer_idx", False, source),
            reorder_and_upcast_attn=_flag(d, "reorder_and_upcast_attn", False, source),
            tie_word_embeddings=_flag(d, "tie_word_embeddings", True, source),
            bos_token_id=None if bos is None else convert(bos, "bos_token_id", source),
            eos_token_ids=token_ids(d.get("eos_token_id", 50256), "eos_token_id", source),
            pad_token_id=None if pad is None else convert(pad, "pad_token_id", source),
        )
    except MxportError as exc:
        raise MxportError(f"{source}: {exc}") from None


# ---- the tensor table -------------------------------------------------------------------------------------------
def expected_tensors(cfg: GPT2Config, lm_head: bool | None = None) -> list[Expected]:
    """Canonical tensors in stable order: wte, wpe, layers 0..N-1, ln_f, lm_head (only when stored)."""
    H, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    out = [Expected(PREFIX + "wte.weight", (V, H)), Expected(PREFIX + "wpe.weight", (cfg.max_position_embeddings, H))]
    for i in range(cfg.num_hidden_layers):
        p = f"{PREFIX}h.{i}."
        out += [
            Expected(p + "ln_1.weight", (H,)), Expected(p + "ln_1.bias", (H,)),
            Expected(p + "attn.c_attn.weight", (H, 3 * H)), Expected(p + "attn.c_attn.bias", (3 * H,)),
            Expected(p + "attn.c_proj.weight", (H, H)), Expected(p + "attn.c_proj.bias", (H,)),
            Expected(p + "ln_2.weight", (H,)), Expected(p + "ln_2.bias", (H,)),
            Expected(p + "mlp.c_fc.weight", (H, I)), Expected(p + "mlp.c_fc.bias", (I,)),
            Expected(p + "mlp.c_proj.weight", (I, H)), Expected(p + "mlp.c_proj.bias", (H,)),
        ]
    out += [Expected(PREFIX + "ln_f.weight", (H,)), Expected(PREFIX + "ln_f.bias", (H,))]
    if not cfg.tie_word_embeddings if lm_head is None else lm_head:
        out += [Expected("lm_head.weight", (V, H))]
    return out


def sources(cfg: GPT2Config, layout: str, lm_head: bool | None, stored: set[str]) -> dict[str, Source]:
    """Canonical name -> stored name: the same, or without `transformer.` (older files) when that is stored."""
    out = {}
    for e in expected_tensors(cfg, lm_head):
        bare = e.name.removeprefix(PREFIX)
        if e.name not in stored and bare != e.name and bare in stored:
            out[e.name] = Source(bare)
    return out


def ignored(stored_name: str) -> bool:
    """The causal-mask buffers older files carry: h.N.attn.bias [1,1,P,P] and h.N.attn.masked_bias (scalar)."""
    return stored_name.endswith((".attn.bias", ".attn.masked_bias"))


# ---- presets ------------------------------------------------------------------------------------------------------
PRESETS: dict[str, GPT2Config] = {
    # seconds to write and run; odd-ish sizes on purpose; its tokenizer's <|endoftext|> is the last id, like GPT-2's
    "gpt2-tiny": GPT2Config(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=4, head_dim=16, max_position_embeddings=128,
                            bos_token_id=511, eos_token_ids=(511,)),
    "gpt2": GPT2Config(),  # the published 124M shapes
    "gpt2-xl": GPT2Config(hidden_size=1600, num_hidden_layers=48, num_attention_heads=25, num_key_value_heads=25,
                          head_dim=64),  # 1.5B
}


def init_std_mean(name: str, cfg: GPT2Config) -> tuple[float, float]:
    """(std, mean) of synthetic weights: LayerNorm scales around 1, fan-in scaled projections."""
    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
        return 0.1, 1.0
    if name.endswith("bias"):
        return 0.02, 0.0
    if name.endswith(("wte.weight", "lm_head.weight")):
        return 0.1, 0.0
    if name.endswith("wpe.weight"):
        return 0.02, 0.0
    if name.endswith("mlp.c_proj.weight"):
        return 1.0 / math.sqrt(cfg.intermediate_size), 0.0
    return 1.0 / math.sqrt(cfg.hidden_size), 0.0  # c_attn, attn.c_proj, c_fc: fan-in H


# ---- a GPT-2-shaped tokenizer for synthetic checkpoints ----------------------------------------------------------
ENDOFTEXT = "<|endoftext|>"
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A language model predicts the next token from the ones before it.
Once upon a time, there was a little town by the sea. Every morning the fishermen went out in their boats.
GPT-2 is a transformer decoder with learned position embeddings, layer normalization and a GELU MLP.
ONNX Runtime runs the exported graph; the NumPy reference checks every number it produces.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1999 2024. Hello, world! How are you today? It's a nice day, isn't it?
Les élèves étudient à l'école. Über den Wolken. ¿Qué tal? 日本語のテキスト。 Emoji 🙂 and symbols ±×÷.
"""


def build_tokenizer(cfg: GPT2Config):
    """A byte-level BPE `tokenizers.Tokenizer` shaped like GPT-2's: GPT-2's pre-tokenizer regex and byte alphabet,
    merges trained on a small corpus, and <|endoftext|> (special) at the config's eos id, the last id of a
    GPT-2 vocab. Small vocabs fill the ids between the merges and <|endoftext|> with reserved specials."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    eos = cfg.eos_token_ids[0] if cfg.eos_token_ids else cfg.vocab_size - 1
    if cfg.vocab_size < 258 or not 256 < eos < cfg.vocab_size:
        raise MxportError(f"a byte-level GPT-2 tokenizer needs vocab_size >= 258 and 256 < eos id < vocab_size "
                          f"(found vocab_size={cfg.vocab_size}, eos={eos})")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split regex and byte map
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=eos, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    bpe.train_from_iterator(_CORPUS.splitlines() * 4, trainer)
    spec = json.loads(bpe.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    used = set(vocab.values())
    added = [(ENDOFTEXT, eos)]
    if cfg.vocab_size <= 4096:  # every id decodes to something (a full-size vocab keeps gaps: they decode to '')
        added += [(f"<|reserved_{i}|>", i) for i in range(cfg.vocab_size) if i not in used and i != eos]
    spec["added_tokens"] = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True} for t, i in sorted(added, key=lambda a: a[1])]
    return Tokenizer.from_str(json.dumps(spec))


def write_tokenizer(cfg: GPT2Config, folder) -> None:
    """tokenizer.json + tokenizer_config.json (GPT2Tokenizer; no chat template: GPT-2 has no chat format)."""
    import json
    from pathlib import Path

    folder = Path(folder)
    build_tokenizer(cfg).save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT,
              "unk_token": ENDOFTEXT, "add_prefix_space": False, "model_max_length": cfg.max_position_embeddings}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


from mxport.exporter.families.gpt2 import graph  # noqa: E402  (graph.py imports this module's config)

FAMILY = Family(
    name="gpt2",
    architectures=("GPT2LMHeadModel",),
    model_types=("gpt2",),
    config_from_dict=config_from_dict,
    config_to_dict=GPT2Config.to_hf_dict,
    tensors=expected_tensors,
    graph=graph,
    presets=PRESETS,
    sources=sources,
    ignored=ignored,
    chat_format=None,
    embedding=PREFIX + "wte.weight",
    output="lm_head.weight",
    init=init_std_mean,
    synth_files=write_tokenizer,
)
