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

from typing import Any

import numpy as np

from mxport.exporter.families import qwen3
from mxport.exporter.families.base import Expected, Family, Rope, Source
from mxport.exporter.families.qwen3 import attention_tensors
from mxport.exporter.families.qwen3_moe import graph
from mxport.exporter.families.qwen3_moe.config import Qwen3MoeConfig, config_from_dict, config_to_dict

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
