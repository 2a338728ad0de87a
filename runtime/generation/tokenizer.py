"""Tokenizers for generation: a folder's tokenizer.json via the `tokenizers` library (no transformers),
incremental decoding for streaming, and the self-built harmony tokenizer for tiny models and tests (the one
`mxport synth` writes beside gpt-oss presets: exporter/families/gpt_oss/tokenizer.py, which also holds the harmony
special tokens' o200k ids).

Incremental decoding never splits a multi-byte UTF-8 character: byte-level BPE can put the bytes of one
character into different tokens, and decoding a prefix then shows '\\ufffd' at its end. The decoder holds the
text back until the character is complete (the trick of transformers' TextStreamer and vLLM's detokenizer):

    ids ... [prefix_offset ........ read_offset) [new ids ...]
             text already emitted from here  |   decode(prefix..end) minus decode(prefix..read) = delta
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from mxport.contract.folder import TOKENIZER_FILE
from mxport.errors import MxportError
from mxport.exporter.families.gpt_oss.tokenizer import HARMONY_SPECIAL_TOKENS, O200K_HARMONY_VOCAB, build_harmony_bpe

__all__ = ["HARMONY_SPECIAL_TOKENS", "O200K_HARMONY_VOCAB", "IncrementalDecoder", "Tokenizer", "build_harmony_tokenizer"]

def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet read backwards: the character that stands for each byte -> the byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars, extra = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, chars)}


_BYTE_OF = _bytes_to_unicode()


class Tokenizer:
    """A `tokenizers.Tokenizer` with the few calls generation needs. Special tokens are matched in text."""

    def __init__(self, tok: _HFTokenizer, source: str = "<memory>") -> None:
        self._tok = tok
        self.source = source
        self._specials: set[int] | None = None  # special_ids(), once (token_bytes)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise MxportError(f"{path}: tokenizer file not found (generation with text needs tokenizer.json)")
        try:
            return cls(_HFTokenizer.from_file(str(path)), str(path))
        except Exception as exc:  # the Rust side raises plain Exception subclasses
            raise MxportError(f"{path}: cannot load tokenizer ({exc})") from None

    @property
    def vocab_size(self) -> int:
        """Largest id + 1 (added tokens included)."""
        return max(self._tok.get_vocab(with_added_tokens=True).values()) + 1

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Text -> ids. allow_special=False encodes '<|end|>' etc. in the text as plain text (for user content).
        Text that is not valid Unicode (a lone surrogate) is an MxportError."""
        try:
            if allow_special:
                return list(self._tok.encode(text, add_special_tokens=False).ids)
            self._tok.encode_special_tokens = True
            try:
                return list(self._tok.encode(text, add_special_tokens=False).ids)
            finally:
                self._tok.encode_special_tokens = False
        except TypeError:
            if isinstance(text, str):
                raise MxportError(f"{self.source}: text to encode is not valid Unicode (a lone surrogate?)") from None
            raise

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    def special_ids(self) -> set[int]:
        return {int(i) for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    def special_tokens(self) -> list[str]:
        """The text of every special token (the ones allow_special=False encodes as plain text)."""
        return [t.content for t in self._tok.get_added_tokens_decoder().values() if t.special]

    def require(self, token: str) -> int:
        """The id of a token that must exist (e.g. '<|start|>'), else MxportError naming it and the file."""
        token_id = self.token_to_id(token)
        if token_id is None:
            raise MxportError(f"{self.source}: tokenizer has no token {token!r} (needed for the harmony format)")
        return token_id

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for: a byte-level BPE token's characters mapped back to bytes (so a token
        holding part of a UTF-8 character gives those bytes), a special token's text, else its decoded text."""
        piece = self._tok.id_to_token(int(token_id))
        if piece is None:
            return b""
        if self._specials is None:
            self._specials = self.special_ids()
        if int(token_id) in self._specials:
            return piece.encode("utf-8")
        if all(c in _BYTE_OF for c in piece):
            return bytes(_BYTE_OF[c] for c in piece)
        return self.decode([token_id]).encode("utf-8")

    def to_json(self) -> str:
        """The tokenizer as tokenizer.json text (what llguidance builds its token table from)."""
        return self._tok.to_str()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        self._tok.save(str(path))
        return path

    def incremental(self, skip_special_tokens: bool = False) -> IncrementalDecoder:
        return IncrementalDecoder(self, skip_special_tokens)


class IncrementalDecoder:
    """Feed token ids one at a time, get text deltas; the deltas concatenate to decode(all ids)."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # decode window start: a few tokens back, so merges at the boundary decode right
        self._read = 0  # ids up to here are emitted
        self.text = ""  # everything emitted so far

    def add(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix_text = self._tok.decode(self.ids[self._prefix : self._read], self._skip)
        new_text = self._tok.decode(self.ids[self._prefix :], self._skip)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 character (or nothing visible yet): hold back
        delta = new_text[len(prefix_text) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Whatever is held back at the end (a truly broken byte sequence decodes to '\\ufffd' here)."""
        full = self._tok.decode(self.ids, self._skip)
        delta = full[len(self.text) :] if full.startswith(self.text) else ""
        self.text += delta
        self._prefix = self._read = len(self.ids)
        return delta


# ---- a small harmony tokenizer built in code ------------------------------------------------------------------

def build_harmony_tokenizer(vocab_size: int, corpus: str | None = None) -> Tokenizer:
    """A byte-level BPE tokenizer with exactly `vocab_size` ids and the harmony special tokens (at their o200k ids
    in an o200k-sized vocab, else at its top ids): gpt-oss' synthetic tokenizer (build_harmony_bpe). Deterministic."""
    return Tokenizer(build_harmony_bpe(vocab_size, corpus), f"<harmony byte-level BPE, vocab {vocab_size}>")
