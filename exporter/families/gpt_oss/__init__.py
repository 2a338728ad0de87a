"""Family `gpt_oss` (GptOssForCausalLM): tensor table, the openai original/ layout, presets, registry entry.

Config spellings: exporter/families/gpt_oss/config.py (GptOssConfig). Graph wiring: exporter/families/gpt_oss/graph.py. NumPy wiring:
runtime/oracle/families/gpt_oss.py. Chat: harmony (runtime/chat/harmony.py). Synthetic tokenizer (harmony specials):
exporter/families/gpt_oss/tokenizer.py.

Two stored layouts map onto one set of canonical names (docs/ARCHITECTURE.md, "Checkpoints"):

    Hugging Face                                   openai original/
    model.embed_tokens.weight                      embedding.weight
    model.layers.N.input_layernorm.weight          block.N.attn.norm.scale
    model.layers.N.self_attn.{q,k,v}_proj.{w,b}    block.N.attn.qkv.{weight,bias}  rows: q (heads*D), k, v (kv*D each)
    model.layers.N.self_attn.sinks                 block.N.attn.sinks
    model.layers.N.self_attn.o_proj.{w,b}          block.N.attn.out.{weight,bias}
    model.layers.N.post_attention_layernorm.weight block.N.mlp.norm.scale
    model.layers.N.mlp.router.{weight,bias}        block.N.mlp.gate.{weight,bias}
    ...mlp.experts.gate_up_proj_{blocks,scales}    block.N.mlp.mlp1_weight.{blocks,scales}
    ...mlp.experts.gate_up_proj_bias               block.N.mlp.mlp1_bias
    ...mlp.experts.down_proj_{blocks,scales}       block.N.mlp.mlp2_weight.{blocks,scales}
    ...mlp.experts.down_proj_bias                  block.N.mlp.mlp2_bias
    model.norm.weight                              norm.scale
    lm_head.weight                                 unembedding.weight
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mxport.exporter.families.base import Expected, Family, Source
from mxport.exporter.families.gpt_oss import graph, synth
from mxport.exporter.families.gpt_oss.tokenizer import harmony_stop_ids, write_synth_files
from mxport.exporter.families.gpt_oss.config import FULL, SLIDING, GptOssConfig
from mxport.ops.mxfp4 import BLOCK_SIZE, BYTES_PER_BLOCK, HF_SUFFIXES, ORIGINAL_SUFFIXES


# ---- the tensor table a config implies -------------------------------------------------------------------------
def expected_tensors(cfg: GptOssConfig, lm_head: bool | None = None) -> list[Expected]:
    """Canonical (HF) tensors in stable order: embeddings, layer 0..N-1, final norm, lm_head.

    lm_head: whether `lm_head.weight` is stored; by default not when the config ties it to the embeddings."""
    H, I, E, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.vocab_size
    q_rows, kv_rows = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    out = [Expected("model.embed_tokens.weight", (V, H))]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out += [
            Expected(p + "input_layernorm.weight", (H,)),
            Expected(p + "self_attn.q_proj.weight", (q_rows, H)),
            Expected(p + "self_attn.q_proj.bias", (q_rows,)),
            Expected(p + "self_attn.k_proj.weight", (kv_rows, H)),
            Expected(p + "self_attn.k_proj.bias", (kv_rows,)),
            Expected(p + "self_attn.v_proj.weight", (kv_rows, H)),
            Expected(p + "self_attn.v_proj.bias", (kv_rows,)),
            Expected(p + "self_attn.o_proj.weight", (H, q_rows)),
            Expected(p + "self_attn.o_proj.bias", (H,)),
            Expected(p + "self_attn.sinks", (cfg.num_attention_heads,)),
            Expected(p + "post_attention_layernorm.weight", (H,)),
            Expected(p + "mlp.router.weight", (E, H)),
            Expected(p + "mlp.router.bias", (E,)),
        ]
        x = p + "mlp.experts."
        if cfg.experts_mxfp4:
            blocks, scales = HF_SUFFIXES
            out += [
                Expected(x + "gate_up_proj" + blocks, (E, 2 * I, H // BLOCK_SIZE, BYTES_PER_BLOCK), packed=True),
                Expected(x + "gate_up_proj" + scales, (E, 2 * I, H // BLOCK_SIZE), packed=True),
                Expected(x + "gate_up_proj_bias", (E, 2 * I)),
                Expected(x + "down_proj" + blocks, (E, H, I // BLOCK_SIZE, BYTES_PER_BLOCK), packed=True),
                Expected(x + "down_proj" + scales, (E, H, I // BLOCK_SIZE), packed=True),
                Expected(x + "down_proj_bias", (E, H)),
            ]
        else:  # dense, input-major as transformers saves them
            out += [
                Expected(x + "gate_up_proj", (E, H, 2 * I)),
                Expected(x + "gate_up_proj_bias", (E, 2 * I)),
                Expected(x + "down_proj", (E, I, H)),
                Expected(x + "down_proj_bias", (E, H)),
            ]
    out += [Expected("model.norm.weight", (H,))]
    if not cfg.tie_word_embeddings if lm_head is None else lm_head:
        out += [Expected("lm_head.weight", (V, H))]
    return out


# canonical suffix -> original suffix, per layer (qkv handled separately: it fuses three canonical tensors)
_ORIGINAL_LAYER_NAMES = {
    "input_layernorm.weight": "attn.norm.scale",
    "self_attn.sinks": "attn.sinks",
    "self_attn.o_proj.weight": "attn.out.weight",
    "self_attn.o_proj.bias": "attn.out.bias",
    "post_attention_layernorm.weight": "mlp.norm.scale",
    "mlp.router.weight": "mlp.gate.weight",
    "mlp.router.bias": "mlp.gate.bias",
    "mlp.experts.gate_up_proj" + HF_SUFFIXES[0]: "mlp.mlp1_weight" + ORIGINAL_SUFFIXES[0],
    "mlp.experts.gate_up_proj" + HF_SUFFIXES[1]: "mlp.mlp1_weight" + ORIGINAL_SUFFIXES[1],
    "mlp.experts.gate_up_proj_bias": "mlp.mlp1_bias",
    "mlp.experts.down_proj" + HF_SUFFIXES[0]: "mlp.mlp2_weight" + ORIGINAL_SUFFIXES[0],
    "mlp.experts.down_proj" + HF_SUFFIXES[1]: "mlp.mlp2_weight" + ORIGINAL_SUFFIXES[1],
    "mlp.experts.down_proj_bias": "mlp.mlp2_bias",
}
_ORIGINAL_TOP_NAMES = {
    "model.embed_tokens.weight": "embedding.weight",
    "model.norm.weight": "norm.scale",
    "lm_head.weight": "unembedding.weight",
}


def original_sources(cfg: GptOssConfig, lm_head: bool | None = None) -> dict[str, Source]:
    """Canonical name -> Source in the openai original/ layout (qkv rows: q = heads*D, then k, then v)."""
    q_rows, kv_rows = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    spans = {"q": (0, q_rows), "k": (q_rows, q_rows + kv_rows), "v": (q_rows + kv_rows, q_rows + 2 * kv_rows)}
    out: dict[str, Source] = {}
    for e in expected_tensors(cfg, lm_head):
        if e.name in _ORIGINAL_TOP_NAMES:
            out[e.name] = Source(_ORIGINAL_TOP_NAMES[e.name])
            continue
        _, _, layer, rest = e.name.split(".", 3)
        if rest.startswith("self_attn.") and rest[10] in "qkv" and rest[11:17] == "_proj.":
            kind = rest.rsplit(".", 1)[1]  # weight | bias
            out[e.name] = Source(f"block.{layer}.attn.qkv.{kind}", spans[rest[10]])
        else:
            out[e.name] = Source(f"block.{layer}.{_ORIGINAL_LAYER_NAMES[rest]}")
    return out


def layout_of(d: Mapping[str, Any]) -> str:
    """'original' for the openai original/ config.json spellings, else 'hf'."""
    return "original" if ("num_experts" in d and "num_local_experts" not in d or "rope_ntk_beta" in d) else "hf"


def sources(cfg: GptOssConfig, layout: str, lm_head: bool | None, stored: set[str]) -> dict[str, Source] | None:
    """Canonical name -> Source: the original/ layout's names; the HF layout reads float experts saved under the
    `_blocks` names (transformers 5 saves a dequantized model that way, without quantization_config)."""
    if layout == "original":
        if not cfg.experts_mxfp4:
            from mxport.errors import MxportError

            raise MxportError("the original layout stores MXFP4 experts only (float experts need layout='hf')")
        return original_sources(cfg, lm_head)
    out = {}
    if not cfg.experts_mxfp4:
        for e in expected_tensors(cfg, lm_head):
            alias = e.name + HF_SUFFIXES[0]
            if e.name.endswith(("experts.gate_up_proj", "experts.down_proj")) and e.name not in stored and alias in stored:
                out[e.name] = Source(alias)
    return out


# ---- presets ------------------------------------------------------------------------------------------------------
# eos <|return|> <|endoftext|> <|call|>, pad <|endoftext|>: the ids of the harmony tokenizer synth writes beside
# each preset (tokenizer.py: the top ids of a small vocabulary; o200k_harmony's in the published shapes' 201088)
_TINY_STOPS, _MINI_STOPS = harmony_stop_ids(512), harmony_stop_ids(32000)
PRESETS: dict[str, GptOssConfig] = {
    # seconds to write and run; small window so sliding attention matters on short prompts
    "tiny": GptOssConfig(
        vocab_size=512, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_experts=8, experts_per_token=2, sliding_window=8,
        eos_token_ids=_TINY_STOPS[0], pad_token_id=_TINY_STOPS[1],
    ),
    # ~0.57 GB: big enough for timing and memory checks, small enough for CI
    "mini": GptOssConfig(
        vocab_size=32000, hidden_size=1024, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=16,
        num_key_value_heads=4, head_dim=64, num_experts=32, experts_per_token=4, sliding_window=128,
        eos_token_ids=_MINI_STOPS[0], pad_token_id=_MINI_STOPS[1],
    ),
    # the published shapes (GptOssConfig's defaults are gpt-oss-20b)
    "gpt-oss-20b": GptOssConfig(),
    "gpt-oss-120b": GptOssConfig(num_hidden_layers=36, num_experts=128),
}
assert PRESETS["tiny"].layer_types == (SLIDING, FULL)



FAMILY = Family(
    name="gpt_oss",
    architectures=("GptOssForCausalLM",),
    model_types=("gpt_oss",),
    config_from_dict=lambda d, source: GptOssConfig.from_dict(d, source=source),
    config_to_dict=GptOssConfig.to_hf_dict,
    tensors=expected_tensors,
    graph=graph,
    presets=PRESETS,
    layouts=("hf", "original"),
    layout_of=layout_of,
    sources=sources,
    chat_format="harmony",
    init=synth.init_std_mean,
    synth=synth.synth_tensor,
    synth_files=write_synth_files,  # the harmony tokenizer (tokenizer.py)
)
