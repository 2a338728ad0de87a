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
from datetime import datetime
from pathlib import Path
from typing import Any

from mxport.errors import MxportError
from mxport.runtime.chat.format import Event, FormatError, ReplyParser, check_tool_choice, message_text
from mxport.runtime.generation.tokenizer import Tokenizer

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


# ---- rendering ------------------------------------------------------------------------------------------------------
def _environment():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or {"content": ...}."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


class ChatTemplate:
    """A jinja chat template plus the special-token variables transformers passes to it."""

    def __init__(self, source: str, specials: Mapping[str, str] | None = None, where: str = "<memory>") -> None:
        import jinja2

        self.source, self.where = source, where
        self.specials = dict(specials or {})
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateError as exc:
            raise MxportError(f"{where}: chat_template does not compile ({exc})") from None

    @classmethod
    def from_folder(cls, folder: str | Path) -> ChatTemplate:
        """chat_template.jinja when present (transformers prefers it), else tokenizer_config.json's chat_template
        (a string, or a list of {name, template}: the one named 'default')."""
        folder = Path(folder)
        config_file = folder / "tokenizer_config.json"
        config: dict = {}
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise MxportError(f"{config_file}: not valid JSON ({exc})") from None
        specials = {k: t for k in SPECIAL_KEYS if (t := _token_text(config.get(k))) is not None}
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            return cls(jinja_file.read_text(), specials, str(jinja_file))
        source = config.get("chat_template")
        if isinstance(source, list):
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, Mapping)}
            source = named.get("default")
        if not isinstance(source, str) or not source:
            raise MxportError(f"{folder}: no chat template (neither chat_template.jinja nor a 'chat_template' in "
                              "tokenizer_config.json); use `mxport run --prompt` for plain text")
        return cls(source, specials, str(config_file))

    def render(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping] | None = None,
               add_generation_prompt: bool = False, **kwargs: Any) -> str:
        """The prompt text for `messages` (OpenAI-style dicts), as apply_chat_template(tokenize=False) gives it."""
        import jinja2

        chat = []
        for m in messages:
            m = {k: v for k, v in m.items() if v is not None}
            reasoning = next((m[k] for k in REASONING_KEYS if m.get(k) is not None), None)
            if reasoning is not None:
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
            chat.append(m)
        try:
            return self._template.render(**{**self.specials, **kwargs}, messages=chat, tools=list(tools) if tools
                                         else None, add_generation_prompt=add_generation_prompt)
        except jinja2.TemplateError as exc:
            raise MxportError(f"{self.where}: chat template failed: {exc}") from None


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
    system), reasoning_effort -> enable_thinking, tools -> the template's `tools`."""

    name = "template"

    def __init__(self, tokenizer: Tokenizer, folder: str | Path) -> None:
        self.tokenizer = tokenizer
        self.template = ChatTemplate.from_folder(folder)
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
        chat = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
                raise FormatError(f"messages[{i}]: expected a message with a role of system, developer, user, "
                                  f"assistant or tool", f"messages[{i}]")
            m = {**m, "role": "system" if m["role"] == "developer" else m["role"],
                 "content": message_text(m.get("content"), f"messages[{i}].content")}
            chat.append(m)
        extra = {} if thinking is None else {"enable_thinking": thinking}
        try:
            text = self.template.render(chat, tools=list(tools or ()) if tool_choice != "none" else None,
                                        add_generation_prompt=True, **extra)
        except MxportError as exc:
            raise FormatError(str(exc), "messages") from None
        return self.tokenizer.encode(text)

    def parser(self) -> TemplateParser:
        return TemplateParser(self.tokenizer)


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
