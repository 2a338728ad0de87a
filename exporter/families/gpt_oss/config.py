"""One frozen, typed model config, parsed once from config.json in any of its spellings.

Spellings normalised here and nowhere else:
  - Hugging Face gpt-oss: `rope_scaling` + `rope_theta` (older) or `rope_parameters` with `rope_theta` inside (newer);
  - the openai `original/` layout: `num_experts`, `experts_per_token`, `rope_scaling_factor`, `rope_ntk_alpha`
    (= beta_slow), `rope_ntk_beta` (= beta_fast), `initial_context_length`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mxport.errors import MxportError
from mxport.exporter.families.base import (FULL, SLIDING, DecoderConfig, Rope, cap_problem, convert, experts_problem,
                                          need, parse_rope, token_ids)

__all__ = ["FULL", "SLIDING", "GptOssConfig", "yarn_inv_freq"]


@dataclass(frozen=True)
class GptOssConfig(DecoderConfig):
    """gpt-oss hyper-parameters (family `gpt_oss`). Defaults are the published gpt-oss-20b values."""

    architecture: str = "gpt_oss"  # family name
    vocab_size: int = 201088  # rows of embed_tokens and lm_head
    hidden_size: int = 2880  # residual stream width H
    intermediate_size: int = 2880  # expert width I (gate_up is 2I wide)
    num_hidden_layers: int = 24
    num_attention_heads: int = 64  # query heads
    num_key_value_heads: int = 8  # KV heads (GQA groups of heads // kv_heads)
    head_dim: int = 64
    num_experts: int = 32  # experts per MoE layer (HF `num_local_experts`)
    experts_per_token: int = 4  # top-k (HF `num_experts_per_tok`)
    sliding_window: int = 128  # window of sliding layers: query i sees keys i-window < j <= i
    layer_types: tuple[str, ...] = field(default=())  # per layer: "sliding_attention" | "full_attention"
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0  # YaRN s; 1.0 means plain RoPE
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_original_max_position: int = 4096  # YaRN L: the pre-training context
    rope_truncate: bool = False  # YaRN: floor/ceil the correction range (transformers' default True; gpt-oss false)
    max_position_embeddings: int = 131072
    swiglu_limit: float = 7.0  # clamp of the expert SwiGLU
    swiglu_alpha: float = 1.702  # glu * sigmoid(alpha * glu)
    rms_norm_eps: float = 1e-5
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    eos_token_ids: tuple[int, ...] = (200002, 199999, 200012)
    pad_token_id: int | None = 199999
    experts_mxfp4: bool = True  # expert weights stored as MXFP4 blocks/scales (else dense float)

    def __post_init__(self) -> None:
        self.check_sizes()  # before the per-layer types are built from num_hidden_layers
        if not self.layer_types:  # gpt-oss alternates, layer 0 sliding
            types = tuple(SLIDING if i % 2 == 0 else FULL for i in range(self.num_hidden_layers))
            object.__setattr__(self, "layer_types", types)
        super().__post_init__()

    def size_problems(self) -> list[str]:
        out = super().size_problems() + [p for p in (cap_problem(n, getattr(self, n)) for n in
                                                       ("intermediate_size", "num_experts")) if p]
        return out or [p for p in (experts_problem(self.num_hidden_layers, self.num_experts),) if p]

    def problems(self) -> list[str]:
        problems = super().problems()
        if problems:
            return problems
        if self.max_position_embeddings <= 0:
            problems.append(f"max_position_embeddings={self.max_position_embeddings} must be > 0")
        if not (self.rope_theta > 1.0 and self.rope_scaling_factor > 0 and self.rms_norm_eps >= 0):
            problems.append(f"rope_theta={self.rope_theta}, rope scaling factor={self.rope_scaling_factor} and "
                            f"rms_norm_eps={self.rms_norm_eps} must be > 1, > 0 and >= 0")
        if self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even for RoPE")
        if self.experts_mxfp4 and (self.hidden_size % 32 or self.intermediate_size % 32):
            problems.append(
                f"MXFP4 experts need hidden_size ({self.hidden_size}) and intermediate_size "
                f"({self.intermediate_size}) to be multiples of 32"
            )
        if not 0 < self.experts_per_token <= self.num_experts:
            problems.append(f"experts_per_token={self.experts_per_token} not in 1..num_experts={self.num_experts}")
        return problems

    # ---- derived values -------------------------------------------------------------------------------------
    @property
    def rope(self) -> Rope:
        return Rope(theta=self.rope_theta, rope_type="yarn" if self.rope_scaling_factor != 1.0 else "default",
                    factor=self.rope_scaling_factor, beta_fast=self.rope_beta_fast, beta_slow=self.rope_beta_slow,
                    original_max_position=self.rope_original_max_position, truncate=self.rope_truncate)

    # ---- config.json ----------------------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """config.json as transformers writes it for GptOssForCausalLM (older `rope_scaling` spelling)."""
        d: dict[str, Any] = {
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "num_local_experts": self.num_experts,
            "num_experts_per_tok": self.experts_per_token,
            "experts_per_token": self.experts_per_token,
            "sliding_window": self.sliding_window,
            "layer_types": list(self.layer_types),
            "rope_theta": self.rope_theta,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": self.rope_scaling_factor,
                "beta_fast": self.rope_beta_fast,
                "beta_slow": self.rope_beta_slow,
                "original_max_position_embeddings": self.rope_original_max_position,
                "truncate": self.rope_truncate,
            },
            "max_position_embeddings": self.max_position_embeddings,
            "swiglu_limit": self.swiglu_limit,
            "rms_norm_eps": self.rms_norm_eps,
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "tie_word_embeddings": self.tie_word_embeddings,
            "eos_token_id": self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else list(self.eos_token_ids),
            "pad_token_id": self.pad_token_id,
            "hidden_act": "silu",
            "initializer_range": 0.02,
            "output_router_logits": False,
            "router_aux_loss_coef": 0.9,
            "use_cache": True,
            "torch_dtype": "bfloat16",
        }
        if self.experts_mxfp4:
            d["quantization_config"] = {
                "quant_method": "mxfp4",
                "modules_to_not_convert": [
                    "model.layers.*.self_attn",
                    "model.layers.*.mlp.router",
                    "model.embed_tokens",
                    "lm_head",
                ],
            }
        return d

    def to_original_dict(self) -> dict[str, Any]:
        """config.json of the openai `original/` layout."""
        return {
            "num_hidden_layers": self.num_hidden_layers,
            "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit,
            "head_dim": self.head_dim,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "sliding_window": self.sliding_window,
            "initial_context_length": self.rope_original_max_position,
            "rope_theta": self.rope_theta,
            "rope_scaling_factor": self.rope_scaling_factor,
            "rope_ntk_alpha": self.rope_beta_slow,
            "rope_ntk_beta": self.rope_beta_fast,
            # not in the published original config; written so that a round trip keeps them
            "layer_types": list(self.layer_types),
            "rms_norm_eps": self.rms_norm_eps,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config.json") -> GptOssConfig:
        """Parse either layout's config.json. Raises MxportError naming `source` and the missing/bad key."""
        if not isinstance(d, dict):
            raise MxportError(f"{source}: expected a JSON object, found {type(d).__name__}")
        try:
            if "num_experts" in d and "num_local_experts" not in d or "rope_ntk_beta" in d:
                return _from_original(d, source)
            return _from_hf(d, source)
        except MxportError as exc:  # the config's own checks (__post_init__) name no file: name it
            if str(exc).startswith(source):
                raise
            raise MxportError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> GptOssConfig:
        from mxport.exporter.families import read_json

        return cls.from_dict(read_json(path), source=str(path))


def _need(d: dict[str, Any], key: str, source: str, kind: type = int) -> Any:
    return need(d, key, source, kind)


def _opt(d: dict[str, Any], key: str, default: Any, source: str, kind: type = int) -> Any:
    """d[key] as `kind` when present and not null, else `default`; MxportError naming the key otherwise."""
    value = d.get(key)
    return default if value is None else convert(value, key, source, kind)


def _object(d: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = d.get(key) or {}
    if not isinstance(value, dict):
        raise MxportError(f"{source}: key {key!r} should be an object, found {value!r}")
    return value


def _layer_types(d: dict[str, Any], source: str) -> tuple[str, ...]:
    value = d.get("layer_types") or ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise MxportError(f"{source}: key 'layer_types' should be a list of strings, found {value!r}")
    return tuple(value)


def _from_hf(d: dict[str, Any], source: str) -> GptOssConfig:
    arch = d.get("model_type") or ""
    archs = d.get("architectures") or []
    if arch != "gpt_oss" and "GptOssForCausalLM" not in (archs if isinstance(archs, list) else [archs]):
        raise MxportError(
            f"{source}: unknown architecture (model_type={arch!r}, architectures={archs!r}); "
            "supported: gpt_oss (GptOssForCausalLM)"
        )
    H = _need(d, "hidden_size", source)
    heads = _need(d, "num_attention_heads", source)
    layers = _need(d, "num_hidden_layers", source)
    # Newer transformers: rope_parameters {rope_type, rope_theta, factor, ...}; older: rope_theta + rope_scaling.
    rope = parse_rope(d, source, truncate_default=True)
    if rope.rope_type not in ("yarn", "default"):
        raise MxportError(f"{source}: rope type {rope.rope_type!r} is not supported (expected 'yarn' or 'default')")
    yarn = rope.rope_type == "yarn"
    quant = _object(d, "quantization_config", source)
    if quant and quant.get("quant_method") not in ("mxfp4", None):
        raise MxportError(f"{source}: quantization_config.quant_method {quant.get('quant_method')!r} is not supported")
    if not heads:
        raise MxportError(f"{source}: num_attention_heads must be positive, found {heads}")
    return GptOssConfig(
        architecture="gpt_oss",
        vocab_size=_need(d, "vocab_size", source),
        hidden_size=H,
        intermediate_size=_need(d, "intermediate_size", source),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=_opt(d, "num_key_value_heads", heads, source),
        head_dim=_opt(d, "head_dim", H // heads, source) or H // heads,
        num_experts=_need(d, "num_local_experts", source),
        experts_per_token=_opt(d, "num_experts_per_tok", _opt(d, "experts_per_token", 4, source), source),
        sliding_window=_opt(d, "sliding_window", 0, source),
        layer_types=_layer_types(d, source),
        rope_theta=rope.theta,
        rope_scaling_factor=rope.factor if yarn else 1.0,
        rope_beta_fast=rope.beta_fast,
        rope_beta_slow=rope.beta_slow,
        rope_original_max_position=rope.original_max_position,
        rope_truncate=rope.truncate,
        max_position_embeddings=_opt(d, "max_position_embeddings", 131072, source),
        swiglu_limit=_opt(d, "swiglu_limit", 7.0, source, float),
        rms_norm_eps=_opt(d, "rms_norm_eps", 1e-5, source, float),
        attention_bias=bool(d.get("attention_bias", True)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        eos_token_ids=token_ids(d.get("eos_token_id"), "eos_token_id", source),
        pad_token_id=_opt(d, "pad_token_id", None, source),
        experts_mxfp4=bool(quant),
    )


def _from_original(d: dict[str, Any], source: str) -> GptOssConfig:
    layers = _need(d, "num_hidden_layers", source)
    return GptOssConfig(
        architecture="gpt_oss",
        vocab_size=_need(d, "vocab_size", source),
        hidden_size=_need(d, "hidden_size", source),
        intermediate_size=_need(d, "intermediate_size", source),
        num_hidden_layers=layers,
        num_attention_heads=_need(d, "num_attention_heads", source),
        num_key_value_heads=_need(d, "num_key_value_heads", source),
        head_dim=_need(d, "head_dim", source),
        num_experts=_need(d, "num_experts", source),
        experts_per_token=_need(d, "experts_per_token", source),
        sliding_window=_opt(d, "sliding_window", 128, source),
        layer_types=_layer_types(d, source),
        rope_theta=_opt(d, "rope_theta", 150000.0, source, float),
        rope_scaling_factor=_opt(d, "rope_scaling_factor", 1.0, source, float),
        rope_beta_fast=_opt(d, "rope_ntk_beta", 32.0, source, float),
        rope_beta_slow=_opt(d, "rope_ntk_alpha", 1.0, source, float),
        rope_original_max_position=_opt(d, "initial_context_length", 4096, source),
        rope_truncate=False,  # the openai reference never truncates
        max_position_embeddings=_opt(d, "max_position_embeddings", 131072, source),
        swiglu_limit=_opt(d, "swiglu_limit", 7.0, source, float),
        rms_norm_eps=_opt(d, "rms_norm_eps", 1e-5, source, float),
        attention_bias=True,
        tie_word_embeddings=False,
        experts_mxfp4=True,
    )


def yarn_inv_freq(cfg: GptOssConfig) -> tuple["np.ndarray", float]:  # noqa: F821
    """RoPE inverse frequencies [head_dim/2] (float64) and the cos/sin scale (YaRN's attention factor): `Rope`."""
    return cfg.rope.inv_freq(cfg.head_dim)
