"""Byte-level BPE tokenizers built in code, for synthetic checkpoints and tests (no download).

    tok = build_byte_level_bpe(512, {"<|im_end|>": 507, ...})   # a `tokenizers.Tokenizer`; tok.save(path)

Family folders build their synthetic tokenizers with it (exporter/families/qwen3/tokenizer.py), and so does the
harmony tokenizer of gpt-oss presets (exporter/families/gpt_oss/tokenizer.py). Deterministic: the same
arguments give the same tokenizer.json.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from mxport.errors import MxportError

if TYPE_CHECKING:
    import tokenizers

CORPUS = """\
The quick brown fox jumps over the lazy dog. A language model predicts the next token from the ones before it.
You are a helpful assistant. What is the capital of France? The capital of France is Paris.
User asks a simple question; answer briefly and correctly. Reasoning: low, medium, high.
analysis commentary final system developer user assistant Instructions Knowledge cutoff Current date
Valid channels: analysis, commentary, final. Channel must be included for every message.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2024-06 2025-01-01. Hello, world! How are you today?
Mixture of experts routes every token to a few experts; attention sinks and sliding windows keep long contexts cheap.
ONNX Runtime runs the exported graph; the NumPy reference checks every number it produces.
Les élèves étudient à l'école. Über den Wolken. ¿Qué tal? 日本語のテキスト。 Emoji 🙂 and symbols ±×÷.
"""


def build_byte_level_bpe(vocab_size: int, special_ids: dict[str, int], corpus: str | None = None, *,
                         gaps: bool | None = None) -> tokenizers.Tokenizer:
    """A byte-level BPE tokenizer trained on `corpus` with the special tokens at the given ids, below `vocab_size`.

    The trained tokens take the ids below the lowest special (at most 4096 of them). Without `gaps`, every other
    unused id below vocab_size is a `<|reserved_N|>` special, so every id decodes; with gaps (the default for
    vocabularies over 65536, e.g. real-sized ones), unused ids decode to '' and building stays fast. Deterministic."""
    if vocab_size < 256 + 1 + len(special_ids) or max(special_ids.values()) >= vocab_size:
        raise MxportError(f"vocab_size={vocab_size} is too small for a byte-level tokenizer with "
                          f"{len(special_ids)} special tokens at ids {sorted(special_ids.values())}")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # only synth and tests need it

    gaps = vocab_size > 65536 if gaps is None else gaps
    base_target = min(vocab_size - len(special_ids), min(special_ids.values()), 4096 if gaps else vocab_size)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=base_target,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    text = corpus if corpus is not None else CORPUS
    bpe.train_from_iterator(text.splitlines() * 4, trainer)

    spec = json.loads(bpe.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    used = set(vocab.values())
    added = []
    for tok, tid in special_ids.items():
        vocab[tok] = tid
        used.add(tid)
        added.append((tok, tid))
    # Fill every unused id below vocab_size with a reserved special (o200k_harmony does the same). An o200k-sized
    # vocab is left with gaps instead (ids without a token decode to ''), which keeps building it fast.
    last = 0 if gaps else vocab_size
    for tid in range(last):
        if tid not in used:
            tok = f"<|reserved_{tid}|>"
            vocab[tok] = tid
            added.append((tok, tid))
    spec["added_tokens"] = [
        {"id": tid, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for tok, tid in sorted(added, key=lambda t: t[1])
    ]
    return Tokenizer.from_str(json.dumps(spec))
