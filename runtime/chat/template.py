"""Chat in a checkpoint's own jinja `chat_template` (Qwen3), rendered as transformers' apply_chat_template does,
and `<think>...</think>` replies split into reasoning and content.

    tpl = ChatTemplate.from_folder(folder)                  # chat_template.jinja, else tokenizer_config.json
    text = tpl.render(messages, add_generation_prompt=True, enable_thinking=False)
    fmt = TemplateFormat(tokenizer, folder)                 # the ChatFormat (runtime/chat/format.py)
    ids = fmt.render(messages, tools, tool_choice, reasoning_effort)     # reasoning_effort switches thinking
    parser = fmt.parser(); parser.add(token_id) -> [Event("reasoning" | "content" | "tool_call" | ..., text)]

Rendering follows transformers (utils/chat_template_utils.py): an ImmutableSandboxedEnvironment with trim_blocks,
lstrip_blocks and loopcontrols; `tojson` without HTML escaping (ensure_ascii=False, indent/separators/sort_keys),
`raise_exception`, `strftime_now`; the tokenizer's special tokens (bos_token, eos_token, ...) as variables, then
`messages`, `tools`, `add_generation_prompt` and any extra keyword (enable_thinking). A message's reasoning given as
`reasoning` or `thinking` is also passed as `reasoning_content`. The text is tokenized with special tokens matched
and none added (add_special_tokens=False), as apply_chat_template(tokenize=True) does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mxport.contract.folder import CHAT_TEMPLATE_FILE, TOKENIZER_CONFIG_FILE
from mxport.errors import MxportError
from mxport.runtime.chat.format import Event, FormatError, ReplyParser, check_tool_choice, message_text
from mxport.runtime.chat.literal import encode_literal, protect
from mxport.runtime.chat.sandbox import Limits, compile_template, render_template
from mxport.runtime.generation.tokenizer import Tokenizer

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


# ---- rendering ------------------------------------------------------------------------------------------------------
def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or {"content": ...}."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


class ChatTemplate:
    """A jinja chat template plus the special-token variables transformers passes to it."""

    def __init__(self, source: str, specials: Mapping[str, str] | None = None, where: str = "<memory>",
                 limits: Limits = Limits()) -> None:
        self.source, self.where, self.limits = source, where, limits
        self.specials = dict(specials or {})
        self._template = compile_template(source, limits, where)  # (runtime/chat/sandbox.py: resource limits)

    @classmethod
    def from_folder(cls, folder: str | Path, limits: Limits = Limits()) -> ChatTemplate:
        """chat_template.jinja when present (transformers prefers it), else tokenizer_config.json's chat_template
        (a string, or a list of {name, template}: the one named 'default')."""
        folder = Path(folder)
        config_file = folder / TOKENIZER_CONFIG_FILE
        config: dict = {}
        if config_file.is_file():
            try:
                config = json.loads(_read(config_file, 64 * limits.max_source))
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise MxportError(f"{config_file}: not valid JSON ({exc})") from None
            if not isinstance(config, dict):
                raise MxportError(f"{config_file}: expected a JSON object, found {type(config).__name__}")
        specials = {k: t for k in SPECIAL_KEYS if (t := _token_text(config.get(k))) is not None}
        jinja_file = folder / CHAT_TEMPLATE_FILE
        if jinja_file.is_file():
            return cls(_read(jinja_file, limits.max_source), specials, str(jinja_file), limits)
        source = config.get("chat_template")
        if isinstance(source, list):
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, Mapping)}
            source = named.get("default")
        if not isinstance(source, str) or not source:
            raise MxportError(f"{folder}: no chat template (neither chat_template.jinja nor a 'chat_template' in "
                              "tokenizer_config.json); use `mxport run --prompt` for plain text")
        return cls(source, specials, str(config_file), limits)

    def render(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping] | None = None,
               add_generation_prompt: bool = False, **kwargs: Any) -> str:
        """The prompt text for `messages` (OpenAI-style dicts), as apply_chat_template(tokenize=False) gives it,
        within the template's limits (MxportError naming the template on any failure)."""
        chat = []
        for m in messages:
            m = {k: v for k, v in m.items() if v is not None}
            reasoning = next((m[k] for k in REASONING_KEYS if m.get(k) is not None), None)
            if reasoning is not None:
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
            chat.append(m)
        return render_template(self._template, self.limits, self.where, **{**self.specials, **kwargs}, messages=chat,
                               tools=list(tools) if tools else None, add_generation_prompt=add_generation_prompt)


def _read(path: Path, limit: int) -> str:
    """A text file of at most `limit` characters (4 bytes each at most), else MxportError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(limit + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise MxportError(f"{path}: cannot read ({exc})") from None
    if len(text) > limit:
        raise MxportError(f"{path}: more than {limit} characters (the limit on a chat template)")
    return text


REASONING_SWITCH = {"off": False, "none": False, "minimal": False, "on": True, "low": True, "medium": True,
                    "high": True}  # reasoning_effort / --reasoning -> enable_thinking


def enable_thinking(reasoning: str | None, where: str = "reasoning") -> bool | None:
    """--reasoning off|on (and OpenAI's reasoning_effort: none/minimal = off, low/medium/high = on) -> the
    template's enable_thinking; None leaves the template's default (Qwen3: thinking on)."""
    if reasoning is None:
        return None
    if reasoning not in REASONING_SWITCH:
        raise MxportError(f"{where} {reasoning!r}: this model's thinking is switched by one of "
                          f"{', '.join(REASONING_SWITCH)}")
    return REASONING_SWITCH[reasoning]


def stop_ids(tokenizer: Tokenizer, template: ChatTemplate) -> tuple[int, ...]:
    """The ids that end a reply: the template's eos_token and <|im_end|> / <|endoftext|> when the vocabulary has them."""
    names = [template.specials.get("eos_token"), "<|im_end|>", "<|endoftext|>"]
    return tuple(dict.fromkeys(i for n in names if n and (i := tokenizer.token_to_id(n)) is not None))


# ---- the ChatFormat ---------------------------------------------------------------------------------------------------

class TemplateFormat:
    """The folder's chat_template: OpenAI messages passed to it as they are (text parts joined, developer ->
    system), reasoning_effort -> enable_thinking, tools -> the template's `tools`.

    Special-token text in the conversation stays text (runtime/chat/literal.py); content_specials=True turns it
    into control tokens instead, as transformers' apply_chat_template does (for trusted conversations only)."""

    name = "template"

    def __init__(self, tokenizer: Tokenizer, folder: str | Path, *, content_specials: bool = False,
                 limits: Limits = Limits()) -> None:
        self.tokenizer, self.content_specials = tokenizer, content_specials
        self.template = ChatTemplate.from_folder(folder, limits)
        self.stop_token_ids = stop_ids(tokenizer, self.template)

    def render(self, messages: Sequence[dict], tools: Sequence[Mapping] = (), tool_choice: Any = None,
               reasoning_effort: str | None = None) -> list[int]:
        check_tool_choice(tool_choice)
        try:
            thinking = enable_thinking(reasoning_effort, "reasoning_effort")
        except MxportError as exc:
            raise FormatError(str(exc), "reasoning_effort") from None
        if not isinstance(messages, list) or not messages:
            raise FormatError("messages: expected a non-empty list of messages", "messages")
        chat = [_message(m, f"messages[{i}]") for i, m in enumerate(messages)]
        values = {"messages": chat, "tools": list(tools or ()) if tool_choice != "none" else None}
        placeholders: dict[str, str] = {}
        if not self.content_specials:
            values, placeholders = protect(values, self.tokenizer.special_tokens(), self.template.source)
        extra = {} if thinking is None else {"enable_thinking": thinking}
        try:
            text = self.template.render(values["messages"], tools=values["tools"], add_generation_prompt=True,
                                        **extra)
        except MxportError as exc:
            raise FormatError(str(exc), "messages") from None
        try:
            return encode_literal(self.tokenizer, text, placeholders)
        except MxportError as exc:  # (text the template made from the conversation: a lone surrogate)
            raise FormatError(str(exc), "messages") from None

    def parser(self) -> TemplateParser:
        return TemplateParser(self.tokenizer)


MAX_NAME = 256  # characters of a tool-call name


def _message(m: Any, where: str) -> dict:
    """One OpenAI message as the template gets it: a known role (developer -> system), content as text, tool calls
    with string names (a template adds the name to text: any other type would fail inside it)."""
    if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
        raise FormatError(f"{where}: expected a message with a role of system, developer, user, assistant or tool",
                          where)
    calls = m.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise FormatError(f"{where}.tool_calls: expected a list of tool calls", f"{where}.tool_calls")
    for j, call in enumerate(calls or ()):
        fn = call.get("function", call) if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise FormatError(f"{where}.tool_calls[{j}].function.name: expected a string of 1 to {MAX_NAME} "
                              f"characters, found {repr(name)[:80]}", f"{where}.tool_calls[{j}].function.name")
    return {**m, "role": "system" if m["role"] == "developer" else m["role"],
            "content": message_text(m.get("content"), f"{where}.content")}


TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


class TemplateParser(ReplyParser):
    """Reply token ids -> events: text inside <think>...</think> is reasoning, the rest content; a
    `<tool_call>{"name": ..., "arguments": ...}</tool_call>` block becomes a tool_call event (its name) then
    tool_args (the arguments as JSON text) when it closes (its text is not streamed).

    The markers are matched by id (they are special tokens). Whitespace at the start and end of each part is
    dropped (the template writes '<think>\\n' ... '\\n</think>\\n\\n'). A reply cut off inside the think block is
    all reasoning; a tool block that is not valid JSON comes out as content."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.tok = tokenizer
        self.ids = {tokenizer.token_to_id(t): t for t in (THINK_OPEN, THINK_CLOSE, TOOL_OPEN, TOOL_CLOSE)}
        self.ids.pop(None, None)
        self.kind = "content"
        self._new_part()

    def _new_part(self) -> None:
        self._decoder = self.tok.incremental(skip_special_tokens=True)
        self._started, self._pending, self._tool_text = False, "", ""

    def _add(self, token_id: int) -> list[Event]:
        marker = self.ids.get(token_id)
        if marker is None:
            return self._emit(self._decoder.add(token_id))
        out = self._end_part()
        self.kind = {THINK_OPEN: "reasoning", TOOL_OPEN: "tool"}.get(marker, "content")
        self._new_part()
        return out

    def _finish(self, stop_token: int | None) -> list[Event]:
        return self._end_part()

    def _end_part(self) -> list[Event]:
        out = self._emit(self._decoder.flush())
        if self.kind == "tool":
            out += self._tool(self._tool_text)
        self._pending = ""  # trailing whitespace of a part is dropped
        return out

    def _tool(self, text: str) -> list[Event]:
        try:
            call = json.loads(text)
            name, args = call["name"], call.get("arguments", {})
            if not isinstance(name, str):
                raise TypeError
        except (ValueError, TypeError, KeyError, AttributeError):
            return [Event("content", text)] if text else []
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        index = len(self.tool_calls)  # the calls gathered so far (ReplyParser)
        return [Event("tool_call", index=index, name=name), Event("tool_args", args, index=index)]

    def _emit(self, text: str) -> list[Event]:
        if self.kind == "tool":
            self._tool_text += text
            return []
        if not self._started:
            text = text.lstrip()
            if not text:
                return []
            self._started = True
        text = self._pending + text
        body = text.rstrip()
        self._pending = text[len(body):]
        return [Event(self.kind, body)] if body else []
