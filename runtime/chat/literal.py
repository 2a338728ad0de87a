"""Special-token text in a conversation stays text: no message can forge a control token through a chat template.

    values, placeholders = protect({"messages": .., "tools": ..}, tokenizer.special_tokens(), template.source)
    text = template.render(**values)                      # the template sees placeholders, never special text
    ids = encode_literal(tokenizer, text, placeholders)   # each placeholder -> its text, encoded as plain text

A template's text is tokenized with special tokens matched (its `<|im_start|>` must become the control token), so
a user who types `<|im_end|>` would otherwise end their own turn (transformers' apply_chat_template does exactly
that). Every string the conversation brings (contents, names, arguments, tool definitions, object keys) has each special
token's text replaced by a private-use character that appears nowhere in the template or the conversation; the
rendered text is then encoded piece by piece: the template's text with special tokens matched, each placeholder as
the token's text with special tokens off (the ids encode(text, allow_special=False) gives, as harmony encodes
content). A conversation without special-token text renders and encodes exactly as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mxport.runtime.chat.format import FormatError
from mxport.runtime.generation.tokenizer import Tokenizer

MAX_DEPTH = 64  # nesting of lists/objects in a conversation
_PRIVATE = range(0xF0000, 0x10FFFE)  # supplementary private-use planes 15-16


def _walk(value: Any, fn: Callable[[str], str], depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise FormatError(f"messages: nested more than {MAX_DEPTH} levels deep", "messages")
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return [_walk(v, fn, depth + 1) for v in value]
    if isinstance(value, Mapping):
        return {fn(k) if isinstance(k, str) else k: _walk(v, fn, depth + 1) for k, v in value.items()}
    return value


def _strings(value: Any, out: list[str]) -> list[str]:
    _walk(value, lambda s: out.append(s) or s)
    return out


def protect(values: Mapping[str, Any], specials: Iterable[str], source: str = "") -> tuple[dict, dict[str, str]]:
    """`values` with special-token text in every string replaced by placeholders, and placeholder -> text.
    Without any special-token text the values come back as they are (and no placeholders)."""
    specials = sorted({s for s in specials if s}, key=len, reverse=True)
    if not specials:
        return dict(values), {}
    pattern = re.compile("|".join(map(re.escape, specials)))
    strings = _strings(dict(values), [])
    if not any(pattern.search(s) for s in strings):
        return dict(values), {}
    used = set(source).union(*map(set, strings))
    free = (c for c in map(chr, _PRIVATE) if c not in used)
    mapping = dict(zip(specials, free))
    return _walk(dict(values), lambda s: pattern.sub(lambda m: mapping[m.group()], s)), \
        {c: s for s, c in mapping.items()}


def encode_literal(tokenizer: Tokenizer, text: str, placeholders: Mapping[str, str]) -> list[int]:
    """`text` as ids, special tokens matched, each placeholder encoded as its token's text (special tokens off)."""
    if not placeholders:
        return tokenizer.encode(text)
    ids: list[int] = []
    for piece in re.split(f"([{''.join(placeholders)}])", text):
        if piece in placeholders:
            ids += tokenizer.encode(placeholders[piece], allow_special=False)
        elif piece:
            ids += tokenizer.encode(piece)
    return ids
