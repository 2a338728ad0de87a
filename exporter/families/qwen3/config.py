"""Qwen3's config: the frozen `Qwen3Config` and its config.json spellings (read and written); Qwen3-MoE extends it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mxport.errors import MxportError
from mxport.exporter.families.base import (FULL, SLIDING, DecoderConfig, Rope, cap_problem, capped, convert, need,
                                          parse_rope, token_ids)

ACTIVATIONS = ("silu", "swish")  # transformers' ACT2FN names of x * sigmoid(x)


@dataclass(frozen=True)
class Qwen3Config(DecoderConfig):
    """Qwen3 hyper-parameters (family `qwen3`). Defaults are the published Qwen3-0.6B values."""

    architecture: str = "qwen3"
    vocab_size: int = 151936
    hidden_size: int = 1024
    intermediate_size: int = 3072  # SwiGLU width I
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope: Rope = field(default_factory=lambda: Rope(theta=1000000.0))
    attention_bias: bool = False
    use_sliding_window: bool = False
    max_window_layers: int = 28
    sliding_window: int = 0  # 0 when use_sliding_window is false (transformers sets it to None)
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = True
    eos_token_ids: tuple[int, ...] = (151645,)
    pad_token_id: int | None = None
    bos_token_id: int | None = 151643

    def __post_init__(self) -> None:
        self.check_sizes()  # before the per-layer types are built from num_hidden_layers
        if not self.layer_types:
            types = tuple(SLIDING if self.sliding_window and i >= self.max_window_layers else FULL
                          for i in range(self.num_hidden_layers))
            object.__setattr__(self, "layer_types", types)
        super().__post_init__()

    def problems(self) -> list[str]:
        out = super().problems()
        if out:
            return out
        if self.head_dim % 2:
            out.append(f"head_dim={self.head_dim} must be even for RoPE")
        if not self.rms_norm_eps > 0:
            out.append(f"rms_norm_eps={self.rms_norm_eps} must be positive")
        return out

    def size_problems(self) -> list[str]:
        problem = cap_problem("intermediate_size", self.intermediate_size)
        return super().size_problems() + ([problem] if problem else [])

    def to_hf_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


# ---- config.json ------------------------------------------------------------------------------------------------
def common_fields(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The DecoderConfig and attention fields Qwen3 and Qwen3-MoE spell alike (transformers' defaults when absent)."""
    if not isinstance(d, Mapping):
        raise MxportError(f"{source}: expected a JSON object, found {type(d).__name__}")
    act = d.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise MxportError(f"{source}: hidden_act {act!r} is not supported (expected one of {', '.join(ACTIVATIONS)})")
    layers = capped(need(d, "num_hidden_layers", source), "num_hidden_layers", source, "num_hidden_layers")
    heads = need(d, "num_attention_heads", source)
    kv = d.get("num_key_value_heads")
    use_sliding = bool(d.get("use_sliding_window", False))
    window = d.get("sliding_window", 4096) if use_sliding else None
    window = 0 if window is None else convert(window, "sliding_window", source)
    max_window_layers = convert(d.get("max_window_layers", 28), "max_window_layers", source)
    types = d.get("layer_types")
    if types is None:
        types = [SLIDING if window and i >= max_window_layers else FULL for i in range(layers)]
    elif not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise MxportError(f"{source}: 'layer_types' should be a list of strings, found {types!r}")
    elif SLIDING in types and not window:  # transformers sets sliding_window None, then fails building the cache
        raise MxportError(f"{source}: layer_types has sliding layers but no window (use_sliding_window is false, "
                          "so transformers sets sliding_window to null)")
    pad, bos = d.get("pad_token_id"), d.get("bos_token_id")
    return dict(
        vocab_size=need(d, "vocab_size", source),
        hidden_size=need(d, "hidden_size", source),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads if kv is None else convert(kv, "num_key_value_heads", source),
        head_dim=convert(d.get("head_dim", 128), "head_dim", source),
        rms_norm_eps=convert(d.get("rms_norm_eps", 1e-6), "rms_norm_eps", source, float),
        rope=parse_rope(d, source, default_theta=10000.0),
        attention_bias=bool(d.get("attention_bias", False)),
        use_sliding_window=use_sliding,
        max_window_layers=max_window_layers,
        sliding_window=window,
        layer_types=tuple(types),
        max_position_embeddings=convert(d.get("max_position_embeddings", 32768), "max_position_embeddings", source),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        eos_token_ids=token_ids(d.get("eos_token_id"), "eos_token_id", source),
        pad_token_id=None if pad is None else convert(pad, "pad_token_id", source),
        bos_token_id=None if bos is None else convert(bos, "bos_token_id", source),
    )


def config_from_dict(d: Mapping[str, Any], source: str = "config.json") -> Qwen3Config:
    """A Qwen3ForCausalLM config.json -> Qwen3Config; MxportError naming `source` and the key."""
    fields = common_fields(d, source)
    try:
        return Qwen3Config(intermediate_size=need(d, "intermediate_size", source), **fields)
    except MxportError as exc:
        raise MxportError(f"{source}: {exc}") from None


def rope_dict(rope: Rope) -> dict[str, Any]:
    """`rope_scaling` as transformers writes it (None for plain RoPE)."""
    if rope.rope_type == "default":
        return {}
    out: dict[str, Any] = {"rope_type": rope.rope_type, "factor": rope.factor}
    if rope.rope_type == "yarn":
        out.update(beta_fast=rope.beta_fast, beta_slow=rope.beta_slow,
                   original_max_position_embeddings=rope.original_max_position, truncate=rope.truncate)
        if rope.attention_factor is not None:
            out["attention_factor"] = rope.attention_factor
    return out


def common_dict(cfg: Qwen3Config) -> dict[str, Any]:
    """The config.json keys `common_fields` reads (transformers 4 and 5 both load `rope_theta` + `rope_scaling`)."""
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope.theta,
        "rope_scaling": rope_dict(cfg.rope) or None,
        "attention_bias": cfg.attention_bias,
        "attention_dropout": 0.0,
        "use_sliding_window": cfg.use_sliding_window,
        "sliding_window": cfg.sliding_window or None,
        "max_window_layers": cfg.max_window_layers,
        "layer_types": list(cfg.layer_types),
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "eos_token_id": cfg.eos_token_ids[0] if len(cfg.eos_token_ids) == 1 else list(cfg.eos_token_ids) or None,
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": cfg.bos_token_id,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "bfloat16",
    }


def config_to_dict(cfg: Qwen3Config) -> dict[str, Any]:
    """config.json as transformers writes it for Qwen3ForCausalLM."""
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **common_dict(cfg),
            "intermediate_size": cfg.intermediate_size}
