"""Qwen3-MoE's config: the frozen `Qwen3MoeConfig` (Qwen3's plus the sparse-block fields) and its config.json spellings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mxport.errors import MxportError
from mxport.exporter.families.base import CAPS, FULL, SLIDING, cap_problem, convert, experts_problem, need
from mxport.exporter.families.qwen3.config import Qwen3Config, common_dict, common_fields


@dataclass(frozen=True)
class Qwen3MoeConfig(Qwen3Config):
    """Qwen3-MoE hyper-parameters (family `qwen3_moe`). Defaults are the published Qwen3-30B-A3B values."""

    architecture: str = "qwen3_moe"
    hidden_size: int = 2048
    intermediate_size: int = 6144  # dense MLP width of mlp_only / non-sparse layers
    num_hidden_layers: int = 48
    num_attention_heads: int = 32
    num_key_value_heads: int = 4
    head_dim: int = 128
    max_window_layers: int = 48
    tie_word_embeddings: bool = False
    num_experts: int = 128  # E
    num_experts_per_tok: int = 8  # k
    moe_intermediate_size: int = 768  # expert SwiGLU width I
    norm_topk_prob: bool = True  # divide the top-k softmax probabilities by their sum
    decoder_sparse_step: int = 1  # layer i is sparse iff (i+1) % step == 0 (and not in mlp_only_layers)
    mlp_only_layers: tuple[int, ...] = field(default=())  # layers with a dense MLP whatever the step

    def size_problems(self) -> list[str]:
        caps = {"num_experts": "num_experts", "num_experts_per_tok": "num_experts",
                "moe_intermediate_size": "intermediate_size", "decoder_sparse_step": "num_hidden_layers"}
        out = super().size_problems() + [p for p in (cap_problem(n, getattr(self, n), cap, minimum=0)
                                                     for n, cap in caps.items()) if p]
        if len(self.mlp_only_layers) > CAPS["num_hidden_layers"]:
            out.append(f"mlp_only_layers has {len(self.mlp_only_layers)} entries (at most "
                       f"{CAPS['num_hidden_layers']})")
        return out or [p for p in (experts_problem(self.num_hidden_layers, self.num_experts),) if p]

    def problems(self) -> list[str]:
        out = super().problems()
        if out:
            return out
        if self.decoder_sparse_step < 1:
            return out + [f"decoder_sparse_step={self.decoder_sparse_step} must be at least 1"]
        if any(self.sparse(i) for i in range(self.num_hidden_layers)):
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                out.append(f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, num_experts="
                           f"{self.num_experts}]")
            if not self.moe_intermediate_size:
                out.append("moe_intermediate_size must be positive")
        return out

    def sparse(self, layer: int) -> bool:
        """Whether `layer` is a sparse MoE block (transformers' Qwen3MoeDecoderLayer rule), else a dense MLP."""
        return (layer not in self.mlp_only_layers and self.num_experts > 0
                and (layer + 1) % self.decoder_sparse_step == 0)

    def to_hf_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


# ---- config.json ------------------------------------------------------------------------------------------------
def config_from_dict(d: Mapping[str, Any], source: str = "config.json") -> Qwen3MoeConfig:
    """A Qwen3MoeForCausalLM config.json -> Qwen3MoeConfig; MxportError naming `source` and the key."""
    fields = common_fields(d, source)
    if "head_dim" not in d or d["head_dim"] is None:  # Qwen3MoeAttention: getattr(config, "head_dim", H // heads)
        heads = fields["num_attention_heads"]
        fields["head_dim"] = fields["hidden_size"] // heads if heads > 0 else 0
    # every layer slides when use_sliding_window (Qwen3-MoE reads no max_window_layers / layer_types)
    fields["layer_types"] = ((SLIDING if fields["sliding_window"] else FULL),) * max(fields["num_hidden_layers"], 0)
    experts_key = "num_experts" if "num_experts" in d else "num_local_experts"
    only = d.get("mlp_only_layers") or []
    if not isinstance(only, list) or len(only) > CAPS["num_hidden_layers"]:
        raise MxportError(f"{source}: 'mlp_only_layers' should be a list of at most {CAPS['num_hidden_layers']} "
                          f"layer indices, found {only!r:.200}")
    try:
        return Qwen3MoeConfig(
            intermediate_size=need(d, "intermediate_size", source),
            num_experts=convert(d.get(experts_key, 128), experts_key, source),
            num_experts_per_tok=convert(d.get("num_experts_per_tok", 8), "num_experts_per_tok", source),
            moe_intermediate_size=convert(d.get("moe_intermediate_size", 768), "moe_intermediate_size", source),
            norm_topk_prob=bool(d.get("norm_topk_prob", False)),
            decoder_sparse_step=convert(d.get("decoder_sparse_step", 1), "decoder_sparse_step", source),
            mlp_only_layers=tuple(convert(i, "mlp_only_layers", source) for i in only),
            **fields,
        )
    except MxportError as exc:
        raise MxportError(f"{source}: {exc}") from None


def config_to_dict(cfg: Qwen3MoeConfig) -> dict[str, Any]:
    """config.json as the published Qwen3-MoE checkpoints spell it (transformers 5.24 reads it)."""
    out = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", **common_dict(cfg),
           "intermediate_size": cfg.intermediate_size, "moe_intermediate_size": cfg.moe_intermediate_size,
           "num_experts": cfg.num_experts, "num_experts_per_tok": cfg.num_experts_per_tok,
           "norm_topk_prob": cfg.norm_topk_prob, "decoder_sparse_step": cfg.decoder_sparse_step,
           "mlp_only_layers": list(cfg.mlp_only_layers)}
    out.pop("layer_types", None)  # Qwen3-MoE has none: every layer slides iff use_sliding_window
    return out
