"""GPT-2's config: the frozen `GPT2Config` and its config.json spellings (both name layouts), the activations it computes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mxport.errors import MxportError
from mxport.exporter.families.base import CAPS, DecoderConfig, cap_problem, convert, need, token_ids

PREFIX = "transformer."
MAX_LAYERS = CAPS["num_hidden_layers"]  # far past any GPT-2 (xl has 48); refused before tables are built

# transformers' ACT2FN names mxport computes exactly, on both sides (exporter/layers.activation,
# runtime/oracle/layers.activation). Refused: prelu and xielu (they carry learned parameters GPT2MLP would
# save as extra tensors).
ACTIVATIONS = (
    "gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_accurate", "gelu_fast",
    "gelu_10", "quick_gelu", "relu", "relu2", "relu6", "leaky_relu", "silu", "swish", "sigmoid", "tanh", "linear",
    "mish", "hardswish", "laplace", "sqrtsoftplus",
)
_SPELLED = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
            "max_position_embeddings": "n_positions"}  # DecoderConfig field -> GPT-2's config.json key
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

    def size_problems(self) -> list[str]:
        """The shared caps, named as GPT-2's config.json spells the keys."""
        return [_SPELLED.get(p.split("=")[0], p.split("=")[0]) + "=" + p.split("=", 1)[1] if "=" in p else p
                for p in super().size_problems()]

    def problems(self) -> list[str]:
        out = super().problems()
        if out:
            return out
        if self.hidden_size != self.num_attention_heads * self.head_dim:
            out.append(f"n_embd={self.hidden_size} must be n_head={self.num_attention_heads} x head_dim="
                       f"{self.head_dim}")
        if self.num_key_value_heads != self.num_attention_heads:
            out.append("GPT-2 attention is multi-head: num_key_value_heads must equal n_head")
        if problem := cap_problem("n_positions", self.max_position_embeddings, "max_position_embeddings"):
            out.append(problem)
        if self.n_inner is not None and (problem := cap_problem("n_inner", self.n_inner, "intermediate_size")):
            out.append(problem.replace(" must be ", " must be null or "))
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
