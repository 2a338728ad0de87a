"""Family `qwen3` (Qwen3ForCausalLM, dense): config spellings, tensor table, presets, registry entry.

Graph wiring: exporter/families/qwen3/graph.py. Synthetic tokenizer and chat template: exporter/families/qwen3/tokenizer.py.
NumPy wiring: runtime/oracle/families/qwen3.py. Chat: the checkpoint's own jinja `chat_template`
(runtime/chat/template.py), `<think>...</think>` is the reasoning.

    model.embed_tokens.weight                      [V,H]
    model.layers.N.input_layernorm.weight          [H]
    model.layers.N.self_attn.{q,k,v}_proj.weight   [heads*D, H], [kv*D, H], [kv*D, H]   (+ .bias if attention_bias)
    model.layers.N.self_attn.{q,k}_norm.weight     [D]          RMSNorm over head_dim, per head, before RoPE
    model.layers.N.self_attn.o_proj.weight         [H, heads*D]                      (+ .bias if attention_bias)
    model.layers.N.post_attention_layernorm.weight [H]
    model.layers.N.mlp.{gate,up}_proj.weight       [I,H]
    model.layers.N.mlp.down_proj.weight            [H,I]
    model.norm.weight                              [H]
    lm_head.weight                                 [V,H]        absent when tie_word_embeddings

Config keys as transformers' Qwen3Config reads them (its dataclass defaults when a key is absent):
head_dim (default 128, not hidden/heads), rms_norm_eps (1e-6), rope_theta + rope_scaling or rope_parameters
(families.base.parse_rope: default, linear, yarn), attention_bias (false), use_sliding_window (false) +
sliding_window (4096) + max_window_layers (28) -> layer_types (given, or sliding iff use_sliding_window and
i >= max_window_layers), tie_word_embeddings (false), eos_token_id / pad_token_id / bos_token_id.
`common_fields` parses the attention part, so Qwen3-MoE reuses it.
"""

from __future__ import annotations

import numpy as np

from mxport.exporter.families.base import Expected, Family
from mxport.exporter.families.qwen3 import graph
from mxport.exporter.families.qwen3.config import Qwen3Config, config_from_dict, config_to_dict
from mxport.exporter.families.qwen3.tokenizer import write_synth_files


# ---- the tensor table -------------------------------------------------------------------------------------------
def attention_tensors(cfg: Qwen3Config, layer: int) -> list[Expected]:
    """One layer's attention tensors (Qwen3 and Qwen3-MoE)."""
    H, D = cfg.hidden_size, cfg.head_dim
    q_rows, kv_rows = cfg.num_attention_heads * D, cfg.num_key_value_heads * D
    p = f"model.layers.{layer}.self_attn."
    out = []
    for name, rows, cols in (("q_proj", q_rows, H), ("k_proj", kv_rows, H), ("v_proj", kv_rows, H),
                             ("o_proj", H, q_rows)):
        out.append(Expected(p + name + ".weight", (rows, cols)))
        if cfg.attention_bias:
            out.append(Expected(p + name + ".bias", (rows,)))
    return out + [Expected(p + "q_norm.weight", (D,)), Expected(p + "k_norm.weight", (D,))]


def expected_tensors(cfg: Qwen3Config, lm_head: bool | None = None) -> list[Expected]:
    """Canonical tensors in stable order; `lm_head` = whether lm_head.weight is stored (default: not when tied)."""
    H, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    out = [Expected("model.embed_tokens.weight", (V, H))]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out += [Expected(p + "input_layernorm.weight", (H,)), *attention_tensors(cfg, i),
                Expected(p + "post_attention_layernorm.weight", (H,)),
                Expected(p + "mlp.gate_proj.weight", (I, H)), Expected(p + "mlp.up_proj.weight", (I, H)),
                Expected(p + "mlp.down_proj.weight", (H, I))]
    out.append(Expected("model.norm.weight", (H,)))
    if not cfg.tie_word_embeddings if lm_head is None else lm_head:
        out.append(Expected("lm_head.weight", (V, H)))
    return out


# ---- presets and synthetic weights --------------------------------------------------------------------------------
PRESETS: dict[str, Qwen3Config] = {
    # seconds to write and run; odd widths (head_dim 24 != 80/4, intermediate 136); the top 7 ids are the specials of
    # the synth tokenizer (tokenizer.py: <|endoftext|> 505, <|im_start|> 506, <|im_end|> 507, ...)
    "qwen3-tiny": Qwen3Config(
        vocab_size=512, hidden_size=80, intermediate_size=136, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, max_window_layers=3, max_position_embeddings=4096,
        eos_token_ids=(507, 505), pad_token_id=505, bos_token_id=None,
    ),
    # the published shapes (Qwen/Qwen3-0.6B, Qwen/Qwen3-8B config.json)
    "qwen3-0.6b": Qwen3Config(),
    "qwen3-8b": Qwen3Config(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                            num_key_value_heads=8, max_window_layers=36, tie_word_embeddings=False),
}


def init_std_mean(name: str, cfg: Qwen3Config) -> tuple[float, float]:
    """(std, mean) of a synthetic tensor: norms around 1, projections fan-in scaled."""
    if name.endswith("norm.weight"):
        return 0.1, 1.0
    if name.endswith("bias"):
        return 0.02, 0.0
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        return 0.5 if cfg.tie_word_embeddings else 0.02, 0.0  # a tied table is also the head: logits need spread
    fan_in = cfg.num_attention_heads * cfg.head_dim if "o_proj" in name else (
        cfg.intermediate_size if "down_proj" in name else cfg.hidden_size)
    return float(1.0 / np.sqrt(fan_in)), 0.0



FAMILY = Family(
    name="qwen3",
    architectures=("Qwen3ForCausalLM",),
    model_types=("qwen3",),
    config_from_dict=config_from_dict,
    config_to_dict=config_to_dict,
    tensors=expected_tensors,
    graph=graph,
    presets=PRESETS,
    chat_format="template",
    init=init_std_mean,
    synth_files=write_synth_files,
)
