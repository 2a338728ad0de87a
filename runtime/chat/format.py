"""One chat-format interface, used alike by `mxport chat` (runtime/chat/session.py) and `mxport serve`.

    fmt = chat_format(tokenizer, folder, kind)  # (runtime/chat/session.py) by the family's chat_format:
                                                # HarmonyFormat (gpt-oss, runtime/chat/harmony.py) | TemplateFormat
                                                # (Qwen3: the folder's jinja chat_template, runtime/chat/template.py)
    ids = fmt.render(messages, tools, tool_choice, reasoning_effort)   # OpenAI-style messages -> prompt ids
    fmt.stop_token_ids                                                  # ids that end a reply (besides the eos ids)
    parser = fmt.parser()                                               # one per reply
    for token in reply: events = parser.add(token)      # Event(kind="reasoning" | "content" | "tool_call" |
    events = parser.finish(stop_token)                   #       "tool_args", text, index, name)
    parser.reply()   # Reply(content, reasoning, tool_calls, tool_called, message): `message` is the turn as the
                     # conversation keeps it (render takes it back)

A new format implements `name`, `stop_token_ids`, `render` and `parser` (a ReplyParser subclass: `_add`,
`_finish`, `_message`). Bad messages raise FormatError naming the field (OpenAI's error.param: the server answers
400). `TextParser` is the plain parser (/v1/completions): every token's text is content.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mxport.errors import MxportError
from mxport.runtime.generation.tokenizer import Tokenizer


class FormatError(MxportError):
    """A conversation the format cannot render; `param` names the field (OpenAI's error.param)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Event:
    kind: str  # "reasoning" | "content" | "tool_call" (a call starts: index, name) | "tool_args" (index, text)
    text: str = ""
    index: int = 0
    name: str | None = None


@dataclass
class ToolCall:
    name: str
    arguments: str = ""  # JSON text, as the model wrote it


@dataclass
class Reply:
    """A parsed reply: the events put together."""

    content: str
    reasoning: str
    tool_calls: list[ToolCall]
    tool_called: bool  # the reply ended in a tool call (OpenAI's finish_reason "tool_calls")
    message: dict  # the assistant turn as the conversation keeps it (the format renders it back)


class ReplyParser:
    """Reply token ids -> events, one reply at a time; the events are also gathered for reply()."""

    def __init__(self) -> None:
        self.content, self.reasoning = "", ""
        self.tool_calls: list[ToolCall] = []

    def add(self, token_id: int) -> list[Event]:
        """One generated token (not a stop token) -> the events it completes."""
        return self._gather(self._add(int(token_id)))

    def finish(self, stop_token: int | None = None) -> list[Event]:
        """The end of the reply; `stop_token` is the stop id that ended it (None: cut off)."""
        return self._gather(self._finish(stop_token))

    @property
    def tool_called(self) -> bool:
        return bool(self.tool_calls)

    def reply(self) -> Reply:
        message: dict[str, Any] = {"role": "assistant", "content": self.content, "reasoning_content": self.reasoning}
        if self.tool_calls:
            message["tool_calls"] = [{"id": f"call_{i}", "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}}
                                     for i, c in enumerate(self.tool_calls)]
        return Reply(self.content, self.reasoning, self.tool_calls, self.tool_called, self._message(message))

    def _gather(self, events: list[Event]) -> list[Event]:
        for ev in events:
            if ev.kind == "content":
                self.content += ev.text
            elif ev.kind == "reasoning":
                self.reasoning += ev.text
            elif ev.kind == "tool_call":
                self.tool_calls.append(ToolCall(ev.name or ""))
            elif ev.kind == "tool_args":
                self.tool_calls[ev.index].arguments += ev.text
        return events

    def _add(self, token_id: int) -> list[Event]:
        raise NotImplementedError

    def _finish(self, stop_token: int | None) -> list[Event]:
        raise NotImplementedError

    def _message(self, message: dict) -> dict:
        """The history entry of this reply (a format may keep more than OpenAI's fields)."""
        return message


class ChatFormat(Protocol):
    name: str
    stop_token_ids: tuple[int, ...]

    def render(self, messages: Sequence[dict], tools: Sequence[Any] = (), tool_choice: Any = None,
               reasoning_effort: str | None = None) -> list[int]: ...

    def parser(self) -> ReplyParser: ...


_SURROGATE = re.compile("[\ud800-\udfff]")


def message_text(content: Any, where: str) -> str:
    """OpenAI message content: a string, None, or a list of {"type": "text", "text": ...} parts (valid Unicode:
    a lone surrogate, which no UTF-8 text holds, is a FormatError naming the field)."""
    if content is None:
        return ""
    if isinstance(content, str):
        if _SURROGATE.search(content):
            raise FormatError(f"{where}: not valid Unicode (a lone surrogate at {_SURROGATE.search(content).start()})",
                              where)
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise FormatError(f"{where}[{i}]: only text content parts are supported ({{'type': 'text', "
                                  f"'text': ...}}), found {str(part)[:80]}", where)
            parts.append(part["text"])
        return message_text("".join(parts), where)
    raise FormatError(f"{where}: expected a string or a list of text parts, found {type(content).__name__}", where)


def check_tool_choice(tool_choice: Any) -> None:
    """'auto', 'none', 'required' or {"type": "function", "function": {"name": ...}} (the last two are enforced by
    the server's constrained decoding: runtime/generation/constrain.py)."""
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    named = isinstance(fn, dict) and tool_choice.get("type") == "function" and isinstance(fn.get("name"), str)
    if tool_choice not in (None, "auto", "none", "required") and not named:
        raise FormatError(f"tool_choice {str(tool_choice)[:80]!r} is not supported (expected 'auto', 'none', "
                          "'required' or {'type': 'function', 'function': {'name': ...}})", "tool_choice")


class TextParser(ReplyParser):
    """Plain text: every token's text is content (UTF-8 characters are never split)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self._decoder = tokenizer.incremental()

    def _add(self, token_id: int) -> list[Event]:
        text = self._decoder.add(token_id)
        return [Event("content", text)] if text else []

    def _finish(self, stop_token: int | None) -> list[Event]:
        text = self._decoder.flush()
        return [Event("content", text)] if text else []
