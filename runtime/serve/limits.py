"""What one request may cost the server, checked before it costs it (docs/SERVING.md "Limits and security").

    ServeLimits          every limit with its default; `mxport serve` makes each field a flag (--max-body-mb, ...)
    parse_body(raw)      bytes -> JSON: strict UTF-8, finite numbers only (no NaN / Infinity / 1e999), nesting
                         bounded, no lone surrogates in any string; each failure is one 400 naming what was wrong
    bytes_per_token(spec)  from a tokenizer.json: the most input bytes one token can stand for, or None when the
                         tokenizer's pipeline can drop text (then no early refusal is made)
    min_tokens(text, b)  the fewest tokens a text can encode to: a prompt whose text alone cannot fit the context
                         is refused before it is rendered or tokenized
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from mxport.runtime.serve.protocol import ApiError, bad


def _limit(default: Any, help_: str) -> Any:
    return field(default=default, metadata={"help": help_})


@dataclass(frozen=True)
class ServeLimits:
    max_body_mb: float = _limit(4.0, "largest request body in MB (1e6 bytes); larger is 413")
    max_json_depth: int = _limit(32, "deepest JSON nesting of a request body; deeper is 400")
    max_stop_chars: int = _limit(1024, "longest stop string in characters (at most 4 of them); longer is 400")
    max_tools: int = _limit(128, "most tools in one chat request; more is 400")
    max_tools_kb: int = _limit(256, "largest `tools` of one chat request, as JSON, in KiB; larger is 400")
    request_timeout: float = _limit(60.0, "seconds a client has to send a request's headers and body; then the "
                                          "connection is closed")
    keep_alive: int = _limit(5, "seconds an idle keep-alive connection stays open")
    max_header_kb: int = _limit(16, "largest request head (request line + headers) in KiB; larger is 400")
    max_connections: int = _limit(512, "open connections at most; more are answered 503 and closed")
    max_stored_responses: int = _limit(1024, "responses kept for previous_response_id (least recently used "
                                              "leave first)")
    max_store_mb: float = _limit(64.0, "MB (1e6 bytes) of conversation kept for previous_response_id, as JSON")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1_000_000)

    def check(self) -> None:
        """ValueError naming the first limit that is not positive."""
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, found {value}")


def too_large(n: int | None, limits: ServeLimits) -> ApiError:
    size = f"{n} bytes" if n is not None else "more"
    return ApiError(413, f"the request body is {size}; this server takes at most {limits.max_body_bytes} bytes "
                         f"(--max-body-mb {limits.max_body_mb:g})", None, "request_too_large")


# ---- the body -------------------------------------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range (numbers must be finite)")
    return value


def parse_body(raw: bytes, max_depth: int) -> Any:
    """The request body as JSON, or a 400 `invalid_json` that says why."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"the request body is not UTF-8 (byte {exc.start}: {exc.reason})", None, "invalid_json") from None
    try:
        body = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise bad(f"the request body nests JSON deeper than {max_depth} levels", None, "invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, a non-finite number, an integer of more than 4300 digits
        raise bad(f"the request body is not valid JSON ({str(exc)[:200]})", None, "invalid_json") from None
    _check_tree(body, max_depth)
    return body


def _where(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path)) or None


def _check_tree(body: Any, max_depth: int) -> None:
    """Nesting depth and lone surrogates (which no tokenizer or UTF-8 writer takes), without recursion."""
    stack: list[tuple[Any, int, tuple]] = [(body, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                where = _where(path)
                raise bad(f"{where or 'the request body'}: a string holds a lone UTF-16 surrogate (not valid "
                          "Unicode text)", where, "invalid_json")
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > max_depth:
            where = _where(path)
            raise bad(f"the request body nests JSON deeper than {max_depth} levels (at {where})", where,
                      "invalid_json")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and _SURROGATE.search(key):
                raise bad("the request body: an object key holds a lone UTF-16 surrogate", _where(path),
                          "invalid_json")
            if isinstance(item, (str, dict, list)):
                stack.append((item, depth + 1, (*path, key)))


# ---- the early refusal ------------------------------------------------------------------------------------------

# How many input bytes at most fold into one byte of normalized text (NFC composes a Hangul syllable from three
# 3-byte jamo; lowercasing the 3-byte Kelvin sign gives 1-byte 'k'). A normalizer not listed may drop text.
_SHRINK = {"NFC": 3, "NFKC": 3, "NFD": 1, "NFKD": 1, "Lowercase": 3, "Prepend": 1}
# Pre-tokenizers that keep every byte (Split and Punctuation unless their behaviour removes the delimiter).
_KEEPS = {"ByteLevel", "Metaspace", "Digits", "Split", "Punctuation", "UnicodeScripts"}


def _shrink(normalizer: dict | None) -> int | None:
    if normalizer is None:
        return 1
    if normalizer.get("type") == "Sequence":
        factor = 1
        for n in normalizer.get("normalizers", []):
            f = _shrink(n)
            if f is None:
                return None
            factor *= f
        return factor
    return _SHRINK.get(normalizer.get("type"))


def _keeps(pre: dict | None) -> bool:
    if pre is None:
        return True
    if pre.get("type") == "Sequence":
        return all(_keeps(p) for p in pre.get("pretokenizers", []))
    return pre.get("type") in _KEEPS and pre.get("behavior") != "Removed"


def bytes_per_token(spec: dict) -> int | None:
    """The most input bytes one token of this tokenizer.json can cover, or None when no such bound holds (a model
    other than BPE, fused unknown tokens, a normalizer or pre-tokenizer that can drop text)."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or (model.get("unk_token") is not None and model.get("fuse_unk")):
        return None
    factor = _shrink(spec.get("normalizer"))
    if factor is None or not _keeps(spec.get("pre_tokenizer")):
        return None
    vocab = model.get("vocab") or {}
    longest = max((len(t.encode("utf-8", "replace")) for t in vocab), default=1)
    added = max((len(str(t.get("content", "")).encode("utf-8", "replace")) for t in spec.get("added_tokens") or []),
                default=1)
    return factor * max(longest, added, 4)  # 4: an unknown character stands for one character


def min_tokens(texts: list[str], per_token: int | None) -> int:
    """The fewest tokens these texts encode to (0 when unknown); whitespace at their ends may be stripped."""
    if per_token is None:
        return 0
    return -(-sum(len(t.strip().encode("utf-8")) for t in texts) // per_token)
