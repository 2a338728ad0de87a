"""Family `qwen3_moe` (Qwen3MoeForCausalLM): Qwen3 attention plus sparse MoE blocks; config spellings, tensor table
in both expert layouts, presets, registry entry.

Graph wiring: exporter/families/qwen3_moe/graph.py. NumPy wiring: runtime/oracle/families/qwen3_moe.py. Chat: as Qwen3 (the checkpoint's
jinja `chat_template`, `<think>` reasoning).

    model.embed_tokens.weight, model.norm.weight, lm_head.weight       as Qwen3 (families/qwen3.py)
    model.layers.N.{input_layernorm, self_attn.*, post_attention_layernorm}   as Qwen3
    sparse layer N (not in mlp_only_layers and (N+1) % decoder_sparse_step == 0; num_experts > 0):
        model.layers.N.mlp.gate.weight                 [E, H]        router, no bias
        model.layers.N.mlp.experts.gate_up_proj        [E, 2I, H]    canonical: gate rows, then up rows (I = moe_intermediate_size)
        model.layers.N.mlp.experts.down_proj           [E, H, I]
    dense layer N: model.layers.N.mlp.{gate,up}_proj.weight [I', H], down_proj.weight [H, I'] (I' = intermediate_size)

Expert layouts on disk (both "hf"; the stored names decide, per layer):
    per expert (published checkpoints, transformers 5.24's default save_pretrained):
        mlp.experts.{j}.gate_proj.weight [I, H], up_proj.weight [I, H], down_proj.weight [H, I]
        -> canonical via Source.stacked: gate_up_proj[j] = concat(gate_j, up_j), down_proj[j] = down_j
    fused (save_pretrained(save_original_format=False)): mlp.experts.gate_up_proj [E, 2I, H], down_proj [E, H, I]
Both give the same canonical tensors, hence identical export files.

Config keys (transformers 5.24 Qwen3MoeConfig, its defaults when absent): num_experts (or num_local_experts, as
5.24 writes it), num_experts_per_tok, moe_intermediate_size, intermediate_size, norm_topk_prob (false),
decoder_sparse_step (1), mlp_only_layers ([]), head_dim (hidden / heads when absent: Qwen3MoeAttention's getattr),
use_sliding_window + sliding_window: every layer slides (Qwen3-MoE has no max_window_layers); the rest as Qwen3.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mxport.errors import MxportError
from mxport.exporter.families.base import FULL, SLIDING, Expected, Family, Rope, Source, convert, need
from mxport.exporter.families import qwen3
from mxport.exporter.families.qwen3 import Qwen3Config, attention_tensors, common_dict, common_fields


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

    def problems(self) -> list[str]:
        out = super().problems()
        if out:
            return out
        for name in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1 << 24:
                out.append(f"{name}={value!r} must be a non-negative integer (at most 2^24)")
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
    if not isinstance(only, list):
        raise MxportError(f"{source}: 'mlp_only_layers' should be a list of layer indices, found {only!r}")
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


# ---- the tensor table -------------------------------------------------------------------------------------------
EXPERT_WEIGHTS = ("gate_up_proj", "down_proj")  # canonical expert tensors, per sparse layer


def expected_tensors(cfg: Qwen3MoeConfig, lm_head: bool | None = None) -> list[Expected]:
    """Canonical tensors in stable order (fused experts, out-major); `lm_head` = whether lm_head.weight is stored."""
    H, V = cfg.hidden_size, cfg.vocab_size
    E, I, dense = cfg.num_experts, cfg.moe_intermediate_size, cfg.intermediate_size
    out = [Expected("model.embed_tokens.weight", (V, H))]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out += [Expected(p + "input_layernorm.weight", (H,)), *attention_tensors(cfg, i),
                Expected(p + "post_attention_layernorm.weight", (H,))]
        if cfg.sparse(i):
            out += [Expected(p + "mlp.gate.weight", (E, H)),
                    Expected(p + "mlp.experts.gate_up_proj", (E, 2 * I, H)),
                    Expected(p + "mlp.experts.down_proj", (E, H, I))]
        else:
            out += [Expected(p + "mlp.gate_proj.weight", (dense, H)), Expected(p + "mlp.up_proj.weight", (dense, H)),
                    Expected(p + "mlp.down_proj.weight", (H, dense))]
    out.append(Expected("model.norm.weight", (H,)))
    if not cfg.tie_word_embeddings if lm_head is None else lm_head:
        out.append(Expected("lm_head.weight", (V, H)))
    return out


def per_expert_sources(cfg: Qwen3MoeConfig, layer: int) -> dict[str, Source]:
    """The canonical expert tensors of one layer stacked from the published per-expert files."""
    x = f"model.layers.{layer}.mlp.experts"
    return {
        f"{x}.gate_up_proj": Source.stacked(tuple((f"{x}.{j}.gate_proj.weight", f"{x}.{j}.up_proj.weight")
                                                  for j in range(cfg.num_experts))),
        f"{x}.down_proj": Source.stacked(tuple((f"{x}.{j}.down_proj.weight",) for j in range(cfg.num_experts))),
    }


def sources(cfg: Qwen3MoeConfig, layout: str, lm_head: bool | None, stored: set[str]) -> dict[str, Source]:
    """Per sparse layer: the per-expert files when the checkpoint stores them (or when nothing is stored yet: synth
    writes the published layout), else the fused tensors under their canonical names."""
    out: dict[str, Source] = {}
    for i in range(cfg.num_hidden_layers):
        fused = f"model.layers.{i}.mlp.experts.gate_up_proj"
        if cfg.sparse(i) and fused not in stored:
            out.update(per_expert_sources(cfg, i))
    return out


# ---- presets and synthetic weights --------------------------------------------------------------------------------
def _chat_ids(vocab: int) -> dict[str, Any]:
    """eos / pad / bos of Qwen3's synth chat tokenizer for `vocab` rows (its specials sit at the top ids, as in
    qwen3-tiny; qwen3.write_synth_files checks them)."""
    tiny = qwen3.PRESETS["qwen3-tiny"]
    shift = vocab - tiny.vocab_size
    return dict(eos_token_ids=tuple(i + shift for i in tiny.eos_token_ids),
                pad_token_id=None if tiny.pad_token_id is None else tiny.pad_token_id + shift, bos_token_id=None)


PRESETS: dict[str, Qwen3MoeConfig] = {
    # seconds to write and run: 3 layers, the middle one dense (mlp_only_layers), 8 experts top-2; the top ids are
    # the specials of Qwen3's synth chat tokenizer
    "qwen3-moe-tiny": Qwen3MoeConfig(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_window_layers=3, max_position_embeddings=4096, num_experts=8,
        num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=(1,), **_chat_ids(512),
    ),
    # ~0.5 GB of bf16 like gpt-oss's mini: many small experts (64 of width 128, top-8), untied 32000-row head
    "qwen3-moe-mini": Qwen3MoeConfig(
        vocab_size=32000, hidden_size=1024, intermediate_size=3072, num_hidden_layers=8, num_attention_heads=16,
        num_key_value_heads=4, head_dim=64, max_window_layers=8, num_experts=64, num_experts_per_tok=8,
        moe_intermediate_size=128, max_position_embeddings=4096, **_chat_ids(32000),
    ),
    # the published shapes (Qwen/Qwen3-30B-A3B config.json): the dataclass defaults (rope as its config.json parses)
    "qwen3-30b-a3b": Qwen3MoeConfig(rope=Rope(theta=1000000.0, original_max_position=40960)),
}


def init_std_mean(name: str, cfg: Qwen3MoeConfig) -> tuple[float, float]:
    """(std, mean) of a synthetic tensor: as Qwen3, experts and router fan-in scaled."""
    if ".experts." in name or name.endswith("mlp.gate.weight"):
        fan_in = cfg.moe_intermediate_size if name.endswith("down_proj") else cfg.hidden_size
        return float(1.0 / np.sqrt(fan_in)), 0.0
    return qwen3.init_std_mean(name, cfg)


from mxport.exporter.families.qwen3_moe import graph  # noqa: E402  (graph.py imports this module's config)

FAMILY = Family(
    name="qwen3_moe",
    architectures=("Qwen3MoeForCausalLM",),
    model_types=("qwen3_moe",),
    config_from_dict=config_from_dict,
    config_to_dict=config_to_dict,
    tensors=expected_tensors,
    graph=graph,
    presets=PRESETS,
    sources=sources,
    chat_format="template",
    init=init_std_mean,
    synth_files=qwen3.write_synth_files,  # Qwen3's tokenizer and chat template
)
