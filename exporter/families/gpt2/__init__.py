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

from mxport.contract.folder import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from mxport.errors import MxportError
from mxport.exporter.families.base import Expected, Family, Source
from mxport.exporter.families.gpt2 import graph
from mxport.exporter.families.gpt2.config import PREFIX, GPT2Config, config_from_dict


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
    build_tokenizer(cfg).save(str(folder / TOKENIZER_FILE))
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT,
              "unk_token": ENDOFTEXT, "add_prefix_space": False, "model_max_length": cfg.max_position_embeddings}
    (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")



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
