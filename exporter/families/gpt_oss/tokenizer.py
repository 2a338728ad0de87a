"""gpt-oss's synthetic tokenizer: byte-level BPE with the harmony special tokens, written beside every gpt-oss
preset by `mxport synth` (the family's synth_files), so synth -> export -> run --prompt / chat / serve works offline.

    HARMONY_SPECIAL_TOKENS                 harmony's special tokens at their o200k_harmony ids
    harmony_special_ids(vocab_size)        those ids when the vocabulary has o200k_harmony's rows, else its top ids
    build_harmony_bpe(vocab_size)          a `tokenizers.Tokenizer` (runtime/generation/tokenizer.py wraps it)
    write_synth_files(cfg, folder)         tokenizer.json, tokenizer_config.json, generation_config.json

The runtime's harmony tokenizer for tests and the demo (build_harmony_tokenizer) is this one, so the exporter never
imports the runtime. The built-in chat model (mxport/data/chat-tiny) has the same shape: specials at the top ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from mxport.contract.folder import GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from mxport.errors import MxportError
from mxport.exporter.synth_tokenizer import build_byte_level_bpe

if TYPE_CHECKING:
    import tokenizers

# Harmony special tokens and their ids in o200k_harmony (docs/NUMERICS.md "Harmony chat format (gpt-oss)").
# Code that needs an id asks the tokenizer (token_to_id); these ids are used only to *build* a tokenizer.
HARMONY_SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": 199999,
    "<|return|>": 200002,
    "<|constrain|>": 200003,
    "<|channel|>": 200005,
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|call|>": 200012,
}
O200K_HARMONY_VOCAB = 201088  # rows of gpt-oss' embedding (o200k_harmony padded)
_MIN_VOCAB = 256 + 1 + len(HARMONY_SPECIAL_TOKENS)  # the byte alphabet, one merge, the specials


def harmony_special_ids(vocab_size: int) -> dict[str, int]:
    """o200k_harmony's ids when the vocabulary has its rows; otherwise the top ids of the vocabulary in
    HARMONY_SPECIAL_TOKENS' order (like o200k, whose specials follow the regular tokens)."""
    if vocab_size < _MIN_VOCAB:
        raise MxportError(f"vocab_size={vocab_size} is too small for a byte-level harmony tokenizer (needs >= "
                          f"{_MIN_VOCAB}: 256 bytes, merges, {len(HARMONY_SPECIAL_TOKENS)} special tokens)")
    if vocab_size >= O200K_HARMONY_VOCAB:
        return dict(HARMONY_SPECIAL_TOKENS)
    top = vocab_size - len(HARMONY_SPECIAL_TOKENS)
    return {tok: top + i for i, tok in enumerate(HARMONY_SPECIAL_TOKENS)}


def harmony_stop_ids(vocab_size: int) -> tuple[tuple[int, ...], int]:
    """(eos ids, pad id) of the harmony tokenizer for `vocab_size` rows: stops <|return|>, <|endoftext|>, <|call|>
    (gpt-oss' generation_config.json), pad <|endoftext|>."""
    ids = harmony_special_ids(vocab_size)
    return (ids["<|return|>"], ids["<|endoftext|>"], ids["<|call|>"]), ids["<|endoftext|>"]


def build_harmony_bpe(vocab_size: int, corpus: str | None = None) -> tokenizers.Tokenizer:
    """A byte-level BPE tokenizer with exactly `vocab_size` ids and the harmony special tokens at
    harmony_special_ids(vocab_size). In a small vocab, ids between the trained BPE tokens and the specials are
    `<|reserved_N|>` specials, so every id decodes. Deterministic."""
    special_ids = harmony_special_ids(vocab_size)
    return build_byte_level_bpe(vocab_size, special_ids, corpus, gaps=vocab_size >= O200K_HARMONY_VOCAB)


def write_synth_files(cfg, folder: str | Path) -> None:
    """tokenizer.json, tokenizer_config.json (eos <|return|>, pad <|endoftext|>) and generation_config.json (the
    config's eos / pad ids) beside a synthetic gpt-oss checkpoint. The presets' eos / pad ids are the tokenizer's
    (harmony_stop_ids); a config too small for a byte-level tokenizer (a test's vocab of 96) gets none. The chat
    format is harmony, rendered in code (runtime/chat/harmony.py), so there is no chat template."""
    if cfg.vocab_size < _MIN_VOCAB:
        return
    folder = Path(folder)
    ids = harmony_special_ids(cfg.vocab_size)
    build_harmony_bpe(cfg.vocab_size).save(str(folder / TOKENIZER_FILE))
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in sorted(ids.items(), key=lambda kv: kv[1])}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": added, "bos_token": None,
              "eos_token": "<|return|>", "pad_token": "<|endoftext|>", "unk_token": None,
              "model_max_length": cfg.max_position_embeddings, "clean_up_tokenization_spaces": False}
    (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    generation = {"eos_token_id": list(cfg.eos_token_ids), "pad_token_id": cfg.pad_token_id, "do_sample": False}
    (folder / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")
