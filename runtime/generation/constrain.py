"""Structured outputs: constrained decoding with llguidance (a JSON schema, or a tool's parameters, as a grammar over
token ids, and the mask of the tokens it allows next).

    grammars = Grammars(tokenizer, vocab, "harmony" | "template")   # once per model: llguidance's tokenizer
    c = grammars.for_response_format(spec, prompt_ids, max_tokens)  # or for_tool_choice(tools, choice, ...)
    each step:  logits = c.mask(logits)   (tokens the grammar refuses -> -inf)  ... sample ...  c.advance(token)

The grammar covers the whole reply in the chat format's skeleton, so the model reasons freely first and only its
answer is constrained (a reply the model ends early or never closes cannot happen):

    harmony   [<|channel|>analysis<|message|> FREE <|end|><|start|>assistant]
              <|channel|>final<|message|> JSON <|return|>
              tool call: ... <|channel|>commentary to=functions.NAME <|constrain|>json<|message|> ARGS <|call|>
    template  [<think> FREE </think>\\n\\n]  JSON <|im_end|>       (the think block only while the prompt left it open)
              tool call: ... <tool_call>\\n{"name": NAME, "arguments": ARGS}\\n</tool_call><|im_end|>

FREE is any text without special tokens, at most half of max_tokens (then the end of reasoning is forced); JSON
follows the schema with no free whitespace; the stop token is forced once the JSON is complete. A reply cut off
by max_tokens (finish_reason "length") can still be incomplete JSON, as with any server. Special tokens are named
by id (`<[id]>`): the ids come from the model's tokenizer, never from constants.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from mxport.errors import MxportError
from mxport.runtime.generation.tokenizer import Tokenizer

MAX_SCHEMA_BYTES = 64 * 1024  # of a schema's JSON text
MAX_SCHEMA_DEPTH = 24  # nesting of objects and lists in a schema
JSON_OPTIONS = {"whitespace_flexible": False}  # compact JSON: a model cannot pad it with whitespace forever
HARMONY_TOKENS = ("<|channel|>", "<|message|>", "<|end|>", "<|start|>", "<|return|>", "<|call|>", "<|constrain|>")
TEMPLATE_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<|im_end|>", "<|im_start|>")


class ConstraintError(MxportError):
    """A schema or tool choice that cannot be a grammar; `param` names the request field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class Constraint:
    """One row's grammar state: the mask of the next token and the token taken."""

    def __init__(self, matcher: Any, vocab: int) -> None:
        import llguidance.numpy as lln

        self.matcher, self.vocab = matcher, vocab
        self._bits = lln.allocate_token_bitmask(1, vocab)
        self._fill = lln.fill_next_token_bitmask

    def copy(self) -> Constraint:
        """The same grammar in its own state (another choice of the request)."""
        return Constraint(self.matcher.deep_copy(), self.vocab)

    def allowed(self) -> np.ndarray:
        """[V] bool: the tokens the grammar takes next."""
        self._fill(self.matcher, self._bits)
        if self.matcher.is_error():
            raise MxportError(f"grammar: {self.matcher.get_error()}")
        return np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self.vocab].astype(bool)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """logits [1, V] -> a copy with the refused tokens at -inf (a wider row than the vocab: -inf beyond)."""
        ok = self.allowed()
        if ok.shape[0] < logits.shape[-1]:
            ok = np.concatenate([ok, np.zeros(logits.shape[-1] - ok.shape[0], bool)])
        return np.where(ok[: logits.shape[-1]], logits, np.array(-np.inf, logits.dtype))

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise MxportError(f"grammar: token {token} refused ({self.matcher.get_error()})")

    @property
    def done(self) -> bool:
        return bool(self.matcher.is_stopped())


class Grammars:
    """llguidance's tokenizer for one model (built once from its tokenizer.json) and the grammars of its chat format
    ("harmony" or "template"). Thread-safe: matchers are made on the server's render thread."""

    def __init__(self, tokenizer: Tokenizer, vocab: int, kind: str) -> None:
        try:
            import llguidance
        except ImportError:
            raise MxportError("structured outputs need llguidance (pip install 'mxport[serve]')") from None
        self._ll = llguidance
        self.vocab, self.kind, self.tokenizer = vocab, kind, tokenizer
        self.lltok = llguidance.LLTokenizer(tokenizer.to_json(), n_vocab=vocab)
        names = HARMONY_TOKENS if kind == "harmony" else TEMPLATE_TOKENS
        self.ids = {n: i for n in names if (i := tokenizer.token_to_id(n)) is not None}
        if kind == "harmony" and len(self.ids) < len(HARMONY_TOKENS):
            raise MxportError(f"harmony structured outputs need the tokens {', '.join(HARMONY_TOKENS)}")
        if kind == "template" and "<|im_end|>" not in self.ids:
            raise MxportError("structured outputs with a chat template need its <|im_end|> token")
        self._lock = threading.Lock()

    # ---- the requests' constraints --------------------------------------------------------------------------------
    def for_response_format(self, spec: dict, prompt: Sequence[int], max_tokens: int) -> Constraint | None:
        """response_format {"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": ..}}."""
        kind = spec.get("type")
        if kind == "text":
            return None
        schema = {"type": "object"} if kind == "json_object" else spec["json_schema"].get("schema", {})
        answer = f"answer: %json {_schema_text(schema, 'response_format')}\n"
        if self.kind == "harmony":
            body = f'body: {self._t("<|channel|>")} "final" {self._t("<|message|>")} answer {self._t("<|return|>")}\n'
        else:
            body = f'body: answer {self._t("<|im_end|>")}\n'
        return self._matcher(body + answer, prompt, max_tokens, "response_format")

    def for_tool_choice(self, tools: Sequence[Any], choice: Any, prompt: Sequence[int],
                        max_tokens: int) -> Constraint | None:
        """tool_choice "required" (any of the tools) or {"type": "function", "function": {"name": ..}} (that one):
        the reply is a call whose arguments follow the tool's parameter schema."""
        named = _named_choice(choice)
        if named is None and choice != "required":
            return None
        schemas = _tool_schemas(tools)
        if named is not None:
            if named not in schemas:
                raise ConstraintError(f"tool_choice: no tool named {named[:64]!r} among the request's tools",
                                      "tool_choice")
            schemas = {named: schemas[named]}
        if not schemas:
            raise ConstraintError("tool_choice 'required' needs at least one function tool", "tool_choice")
        rules, calls = [], []
        for i, (name, params) in enumerate(schemas.items()):
            calls.append(f"call{i}")
            if self.kind == "harmony":
                rules.append(f'call{i}: {json.dumps(name + " ")} {self._t("<|constrain|>")} "json" '
                             f'{self._t("<|message|>")} args{i} {self._t("<|call|>")}\n'
                             f"args{i}: %json {_schema_text(params, 'tools')}\n")
            else:
                wrapped = {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                           "properties": {"name": {"const": name}, "arguments": params}}
                rules.append(f"call{i}: %json {_schema_text(wrapped, 'tools')}\n")
        if self.kind == "harmony":
            body = f'body: {self._t("<|channel|>")} "commentary to=functions." ({" | ".join(calls)})\n'
        else:
            body = (f'body: {self._t("<tool_call>")} "\\n" ({" | ".join(calls)}) "\\n" {self._t("</tool_call>")} '
                    f'{self._t("<|im_end|>")}\n')
        return self._matcher(body + "".join(rules), prompt, max_tokens, "tool_choice")

    # ---- grammar text ---------------------------------------------------------------------------------------------
    def _t(self, name: str) -> str:
        if name not in self.ids:
            raise ConstraintError(f"this model's tokenizer has no {name} token, which the grammar needs", "model")
        return f"<[{self.ids[name]}]>"

    def _reasoning(self, prompt: Sequence[int], budget: int) -> str:
        """The optional free reasoning before the body, in the format's markers."""
        free = f"free[max_tokens={budget}]: /(?s:.*)/\n"
        if self.kind == "harmony":
            return (f'start: (analysis)? body\nanalysis: {self._t("<|channel|>")} "analysis" {self._t("<|message|>")} '
                    f'free {self._t("<|end|>")} {self._t("<|start|>")} "assistant"\n' + free)
        if "<think>" in self.ids and "</think>" in self.ids and not self._thinking_closed(prompt):
            return (f'start: (think)? body\nthink: {self._t("<think>")} free {self._t("</think>")} /\\n{{0,2}}/\n'
                    + free)
        return "start: body\n"

    def _thinking_closed(self, prompt: Sequence[int]) -> bool:
        """The prompt's last turn already holds '</think>' (a template with thinking switched off writes it)."""
        start = self.ids.get("<|im_start|>")
        last = max((i for i, t in enumerate(prompt) if t == start), default=0) if start is not None else 0
        return self.ids["</think>"] in prompt[last:]

    def _matcher(self, rules: str, prompt: Sequence[int], max_tokens: int, param: str) -> Constraint:
        lark = self._reasoning(prompt, max(1, max_tokens // 2)) + rules
        grammar = self._ll.LLMatcher.grammar_from_lark(lark)
        with self._lock:
            matcher = self._ll.LLMatcher(self.lltok, grammar, log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"{param}: this schema cannot be enforced ({_short(matcher.get_error())})", param)
        return Constraint(matcher, self.vocab)


def _named_choice(choice: Any) -> str | None:
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        return name if isinstance(name, str) else None
    return None


def _tool_schemas(tools: Sequence[Any]) -> dict[str, Any]:
    """Function name -> its parameter schema ({"type": "object"} when it has none)."""
    out = {}
    for tool in tools or ():
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            out[fn["name"]] = params if isinstance(params, dict) and params else {"type": "object"}
    return out


def _schema_text(schema: Any, param: str) -> str:
    """The schema as JSON text for the grammar, within the size and depth bounds, with the compact-JSON options."""
    if not isinstance(schema, dict):
        raise ConstraintError(f"{param}: a JSON schema must be an object, found {type(schema).__name__}", param)
    if (depth := _depth(schema)) > MAX_SCHEMA_DEPTH:
        raise ConstraintError(f"{param}: the schema nests {depth} levels deep; this server takes at most "
                              f"{MAX_SCHEMA_DEPTH}", param)
    text = json.dumps({**schema, "x-guidance": JSON_OPTIONS}, ensure_ascii=False)  # (a client's own is replaced)
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise ConstraintError(f"{param}: the schema has {len(text.encode())} bytes of JSON; this server takes at "
                              f"most {MAX_SCHEMA_BYTES}", param)
    return text


def _depth(value: Any, level: int = 1) -> int:
    stack, deepest = [(value, level)], level
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_SCHEMA_DEPTH:
            return d
        if isinstance(v, dict):
            stack += [(x, d + 1) for x in v.values() if isinstance(x, (dict, list))]
        elif isinstance(v, list):
            stack += [(x, d + 1) for x in v if isinstance(x, (dict, list))]
    return deepest


def _short(text: str) -> str:
    return text if len(text) <= 300 else text[:297] + "..."
