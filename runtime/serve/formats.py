"""Chat formats behind one small interface, so the server never branches on a model family.

    fmt = chat_format(tokenizer, folder, kind)   # by the family's chat_format: HarmonyFormat (gpt-oss) |
                                                 # TemplateFormat (Qwen3) | None (no chat: /v1/chat/completions 400)
    ids = fmt.render(messages, tools, tool_choice, reasoning_effort)      # OpenAI messages -> prompt ids
    parser = fmt.parser()                                                  # one per request
    for token in generated: events = parser.add(token)    # Event(kind="reasoning" | "content" | "tool_call" |
    events = parser.finish(stop_token)                     #       "tool_args", text, index, name)
    parser.tool_called                                     # the reply ended in a tool call (finish_reason tool_calls)
    fmt.stop_token_ids                                     # ids that end a reply (with the model's eos ids)

TemplateFormat renders the folder's own jinja chat_template (runtime/chat/template.py): `<think>...</think>` is
reasoning, switched by reasoning_effort (none/minimal = off, low/medium/high = on; absent = the template's default),
`<tool_call>` JSON blocks are tool calls. A new format implements the same three members. `TextParser` is the plain one (/v1/completions).
Bad request content raises FormatError naming the request field (the server answers 400).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mxport.errors import MxportError
from mxport.runtime.chat.harmony import (REASONING_EFFORTS, SPECIALS, Harmony, Message, StreamParser, SystemContent,
                                    as_tools)
from mxport.runtime.generation.tokenizer import Tokenizer


class FormatError(MxportError):
    """A request the format cannot render; `param` names the field (OpenAI's error.param)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Event:
    kind: str  # "reasoning" | "content" | "tool_call" (a call starts: index, name) | "tool_args" (index, text)
    text: str = ""
    index: int = 0
    name: str | None = None


class ReplyParser(Protocol):
    tool_called: bool

    def add(self, token_id: int) -> list[Event]: ...

    def finish(self, stop_token: int | None = None) -> list[Event]: ...


class ChatFormat(Protocol):
    name: str
    stop_token_ids: tuple[int, ...]

    def render(self, messages: Sequence[dict], tools: Sequence[dict] = (), tool_choice: Any = None,
               reasoning_effort: str | None = None) -> list[int]: ...

    def parser(self) -> ReplyParser: ...


def chat_format(tokenizer: Tokenizer | None, folder: str | Path | None = None,
                kind: str | None = None) -> ChatFormat | None:
    """The chat format of a model: `kind` is its family's chat_format ("harmony" | "template" | None); without it
    (an export without a family record), harmony when the tokenizer has harmony's special tokens."""
    if tokenizer is None:
        return None
    if kind is None and all(tokenizer.token_to_id(t) is not None for t in SPECIALS):
        kind = "harmony"
    if kind == "template" and folder is None:
        raise MxportError("a chat-template model needs its folder (chat_template.jinja / tokenizer_config.json)")
    make = {"harmony": lambda: HarmonyFormat(tokenizer), "template": lambda: TemplateFormat(tokenizer, folder)}
    return make[kind]() if kind in make else None


class TextParser:
    """Plain text: every token's text is content (UTF-8 characters are never split)."""

    tool_called = False

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._decoder = tokenizer.incremental()

    def add(self, token_id: int) -> list[Event]:
        text = self._decoder.add(token_id)
        return [Event("content", text)] if text else []

    def finish(self, stop_token: int | None = None) -> list[Event]:
        text = self._decoder.flush()
        return [Event("content", text)] if text else []


# ---- harmony (gpt-oss) ---------------------------------------------------------------------------------------------

def message_text(content: Any, where: str) -> str:
    """OpenAI message content: a string, None, or a list of {"type": "text", "text": ...} parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise FormatError(f"{where}[{i}]: only text content parts are supported ({{'type': 'text', "
                                  f"'text': ...}}), found {str(part)[:80]}", where)
            parts.append(part["text"])
        return "".join(parts)
    raise FormatError(f"{where}: expected a string or a list of text parts, found {type(content).__name__}", where)


class HarmonyFormat:
    """gpt-oss' harmony: system/developer messages -> developer instructions, functions.* calls <-> tool_calls."""

    name = "harmony"

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.harmony = Harmony(tokenizer)
        self.stop_token_ids = self.harmony.stop_token_ids

    def render(self, messages: Sequence[dict], tools: Sequence[dict] = (), tool_choice: Any = None,
               reasoning_effort: str | None = None) -> list[int]:
        if reasoning_effort is not None and reasoning_effort not in REASONING_EFFORTS:
            raise FormatError(f"reasoning_effort {reasoning_effort!r}: this model takes one of "
                              f"{', '.join(REASONING_EFFORTS)}", "reasoning_effort")
        if tool_choice not in (None, "auto", "none"):
            raise FormatError(f"tool_choice {tool_choice!r} is not supported (only 'auto' and 'none')", "tool_choice")
        try:
            tool_list = as_tools(tools or (), "tools") if tool_choice != "none" else ()
        except MxportError as exc:
            raise FormatError(str(exc), "tools") from None
        instructions, history = self._messages(messages)
        system = SystemContent(reasoning=reasoning_effort or "medium")
        try:
            return self.harmony.render_ids(history, system, instructions or None, tool_list)
        except MxportError as exc:
            raise FormatError(str(exc), "messages") from None

    def _messages(self, messages: Sequence[dict]) -> tuple[str, list[Message]]:
        if not isinstance(messages, list) or not messages:
            raise FormatError("messages: expected a non-empty list of messages", "messages")
        instructions: list[str] = []
        out: list[Message] = []
        call_names: dict[str, str] = {}  # tool_call_id -> function name
        for i, m in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise FormatError(f"{where}: expected an object with 'role' and 'content'", where)
            role = m.get("role")
            text = message_text(m.get("content"), f"{where}.content")
            if role in ("system", "developer"):
                instructions.append(text)
            elif role == "user":
                out.append(Message("user", text))
            elif role == "assistant":
                out += self._assistant(m, text, where, call_names)
            elif role == "tool":
                name = m.get("name") or call_names.get(m.get("tool_call_id") or "")
                if not name:
                    raise FormatError(f"{where}: a tool message needs the 'tool_call_id' of an earlier assistant "
                                      "tool call (or a 'name')", f"{where}.tool_call_id")
                out.append(Message("tool", text, "commentary", author=f"functions.{name}"))
            else:
                raise FormatError(f"{where}.role {role!r}: expected system, developer, user, assistant or tool",
                                  f"{where}.role")
        return "\n\n".join(instructions), out

    @staticmethod
    def _assistant(m: dict, text: str, where: str, call_names: dict[str, str]) -> list[Message]:
        calls = m.get("tool_calls") or []
        out = []
        reasoning = m.get("reasoning") or m.get("reasoning_content")
        if calls and isinstance(reasoning, str) and reasoning:  # kept while the call is open (harmony drops it later)
            out.append(Message("assistant", reasoning, "analysis"))
        if text:
            out.append(Message("assistant", text, "final"))
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise FormatError(f"{where}.tool_calls[{j}]: expected {{'id', 'type': 'function', 'function': "
                                  "{'name', 'arguments'}}", f"{where}.tool_calls")
            call_names[str(call.get("id", ""))] = fn["name"]
            args = fn.get("arguments") or "{}"
            out.append(Message("assistant", args if isinstance(args, str) else str(args), "commentary",
                               recipient=f"functions.{fn['name']}", content_type="json"))
        return out

    def parser(self) -> HarmonyParser:
        return HarmonyParser(self.harmony)


class HarmonyParser:
    """Harmony reply tokens -> events: analysis = reasoning, final / commentary = content, a message to
    `functions.f` = a tool call whose arguments stream as tool_args. Text outside any message (a model that ignores
    the format) comes out as content when its message closes."""

    def __init__(self, harmony: Harmony) -> None:
        self._p = StreamParser(harmony)
        self.calls = 0

    @property
    def tool_called(self) -> bool:
        return self._p.stop == "call" and self.calls > 0

    def add(self, token_id: int) -> list[Event]:
        p = self._p
        was_content, recipient, closed = p.in_content, p.recipient, len(p.messages)
        channel, text = p.add(token_id)
        out = self._unstreamed(closed) if not was_content else []
        if text:
            if recipient is not None:
                out.append(Event("tool_args", text, index=self.calls - 1))
            else:
                out.append(Event("reasoning" if channel == "analysis" else "content", text))
        if not was_content and p.in_content and p.recipient is not None:
            self.calls += 1
            out.append(Event("tool_call", index=self.calls - 1, name=p.recipient.removeprefix("functions.")))
        return out

    def finish(self, stop_token: int | None = None) -> list[Event]:
        """The end of the reply; a stop token (<|return|>, <|call|>) closes the last message as harmony says."""
        out = self.add(stop_token) if stop_token is not None and stop_token in self._p.h.stop_token_ids else []
        p = self._p
        closed, was_content = len(p.messages), p.in_content
        p.reply()
        return out + ([] if was_content else self._unstreamed(closed))

    def _unstreamed(self, since: int) -> list[Event]:
        """Messages closed without ever reaching <|message|>: their decoded text as content."""
        return [Event("content", m.content) for m in self._p.messages[since:] if m.content]


# ---- a checkpoint's own jinja chat template (Qwen3) -----------------------------------------------------------------

class TemplateFormat:
    """The folder's chat_template: OpenAI messages passed to it as they are (text parts joined), reasoning_effort
    -> enable_thinking, tools -> the template's `tools`."""

    name = "template"

    def __init__(self, tokenizer: Tokenizer, folder: str | Path) -> None:
        from mxport.runtime.chat.template import ChatTemplate, stop_ids

        self.tokenizer = tokenizer
        self.template = ChatTemplate.from_folder(folder)
        self.stop_token_ids = stop_ids(tokenizer, self.template)

    def render(self, messages: Sequence[dict], tools: Sequence[dict] = (), tool_choice: Any = None,
               reasoning_effort: str | None = None) -> list[int]:
        from mxport.runtime.chat.template import enable_thinking

        if tool_choice not in (None, "auto", "none"):
            raise FormatError(f"tool_choice {tool_choice!r} is not supported (only 'auto' and 'none')", "tool_choice")
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


class TemplateParser:
    """ThinkParser's deltas as events: reasoning, content, and a tool call with its arguments when it closes."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        from mxport.runtime.chat.template import ThinkParser

        self._p = ThinkParser(tokenizer)
        self.calls = 0

    @property
    def tool_called(self) -> bool:
        return self.calls > 0

    def add(self, token_id: int) -> list[Event]:
        return self._events(self._p.add(token_id))

    def finish(self, stop_token: int | None = None) -> list[Event]:
        return self._events(self._p.finish())

    def _events(self, deltas: list[tuple[str, str]]) -> list[Event]:
        out = []
        for kind, text in deltas:
            if kind == "tool_call":
                self.calls += 1
                out.append(Event("tool_call", index=self.calls - 1, name=text))
            elif kind == "tool_args":
                out.append(Event("tool_args", text, index=self.calls - 1))
            else:
                out.append(Event(kind, text))
        return out


class StopMatcher:
    """Stop strings over streamed text: text that could still become a stop string is held back."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """-> (text to show now, whether a stop string was completed; text from it on is dropped)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        cut = min((i for s in self.stops if (i := self.pending.find(s)) >= 0), default=None)
        if cut is not None:
            out, self.pending = self.pending[:cut], ""
            return out, True
        hold = max((n for s in self.stops for n in range(1, len(s)) if self.pending.endswith(s[:n])), default=0)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
