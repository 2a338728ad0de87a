"""Tokenizer and token-level encoding of the synthetic harmony conversations (no torch).

Tokenizer: byte-level BPE (every byte has a token, so any text encodes), trained on the conversations' text
with two rules that keep the arithmetic learnable and the sequences short:

    digits are split one per token                ("2024" -> 2 0 2 4: sums work digit by digit)
    no split at spaces                            ("You are ChatGPT, a large" can be one token: the long,
                                                   fixed system message costs a handful of positions)

The harmony special tokens are single tokens at the top ids (as in o200k_harmony they follow the regular
tokens); unused ids below them are `<|reserved_N|>` specials. The words of the letter-count task are kept out
of the BPE corpus so that they stay (mostly) spelled in single letters.

A training example = the prompt exactly as mxport renders it (runtime.chat.harmony.Harmony.render_ids: system
message with the reasoning effort and a date, optional earlier turn, user message, `<|start|>assistant`) +
the reply `<|channel|>analysis<|message|>..<|end|><|start|>assistant<|channel|>final<|message|>..<|return|>`;
the loss covers the reply only.
"""

from __future__ import annotations

import json
import random

from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

from mxport.runtime.chat.harmony import Harmony, Message, SystemContent, render_conversation
from mxport.runtime.generation.tokenizer import HARMONY_SPECIAL_TOKENS, Tokenizer

import tasks

SPECIALS = tuple(HARMONY_SPECIAL_TOKENS)  # <|endoftext|> <|return|> <|constrain|> <|channel|> <|start|> ...


def _corpus(rng: random.Random, n: int) -> list[str]:
    """Text pieces of n training conversations, split where mxport's renderer splits (special tokens)."""
    out = []
    for _ in range(n):
        task = rng.choice(tasks.TASKS)
        ex = tasks.sample(rng, task, held_out=False)
        text = render_conversation([Message("user", ex.question)],
                                   SystemContent(reasoning=ex.reasoning, current_date=tasks.random_date(rng)))
        text += f"<|channel|>analysis<|message|>{ex.analysis}<|end|>"
        text += f"<|start|>assistant<|channel|>final<|message|>{ex.final}<|return|>"
        for special in SPECIALS:
            text = text.replace(special, "\x00")
        pieces = [p for p in text.split("\x00") if p]
        if task == "letters":  # keep the counted word out of the merges
            word = ex.final.split('"')[1]
            pieces = [q for p in pieces for q in p.split(word) if q]
        out += pieces
    return out


def build_tokenizer(vocab_size: int, seed: int = 0, corpus_examples: int = 3000) -> Tokenizer:
    """Byte-level BPE with exactly vocab_size ids, digits split, harmony specials at the top ids."""
    bpe = HFTokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[0-9]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    base = vocab_size - len(SPECIALS)
    if base < 257:
        raise ValueError(f"vocab_size {vocab_size} too small: 256 bytes + merges + {len(SPECIALS)} specials")
    trainer = trainers.BpeTrainer(vocab_size=base, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False, max_token_length=32)
    bpe.train_from_iterator(_corpus(random.Random(seed), corpus_examples), trainer)
    spec = json.loads(bpe.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    added = [(tok, base + i) for i, tok in enumerate(SPECIALS)]
    used = set(vocab.values()) | {tid for _, tid in added}
    added += [(f"<|reserved_{tid}|>", tid) for tid in range(vocab_size) if tid not in used]
    for tok, tid in added:
        vocab[tok] = tid
    spec["added_tokens"] = [
        {"id": tid, "content": tok, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True} for tok, tid in sorted(added, key=lambda t: t[1])]
    return Tokenizer(HFTokenizer.from_str(json.dumps(spec)), f"<tiny chat BPE, vocab {vocab_size}>")


def prompt_ids(harmony: Harmony, ex: tasks.Example, date: str,
               earlier: tasks.Example | None = None) -> list[int]:
    """The prompt as mxport's chat renders it (an earlier turn keeps only its final answer, as history())."""
    messages = []
    if earlier is not None:
        messages += [Message("user", earlier.question), Message("assistant", earlier.final, channel="final")]
    messages.append(Message("user", ex.question))
    return harmony.render_ids(messages, SystemContent(reasoning=ex.reasoning, current_date=date))


def reply_ids(harmony: Harmony, ex: tasks.Example) -> list[int]:
    tok, ids = harmony.tokenizer, harmony.ids
    return (tok.encode("<|channel|>analysis<|message|>") + tok.encode(ex.analysis, allow_special=False)
            + [ids["<|end|>"]] + tok.encode("<|start|>assistant<|channel|>final<|message|>")
            + tok.encode(ex.final, allow_special=False) + [ids["<|return|>"]])


TASK_WEIGHTS = {"sum": 0.27, "diff": 0.23, "capital": 0.22, "letters": 0.18, "chat": 0.10}


def training_example(harmony: Harmony, rng: random.Random, two_turn: float = 0.1,
                     weights: dict[str, float] | None = None) -> tuple[list[int], int]:
    """(ids, start of the reply) of one random training conversation (tasks drawn by `weights`)."""
    weights = weights or TASK_WEIGHTS
    task = rng.choices(list(weights), weights=list(weights.values()))[0]
    ex = tasks.sample(rng, task, held_out=False)
    earlier = None
    if rng.random() < two_turn:
        earlier = tasks.sample(rng, rng.choice(tasks.TASKS), held_out=False)
    prompt = prompt_ids(harmony, ex, tasks.random_date(rng), earlier)
    return prompt + reply_ids(harmony, ex), len(prompt)
