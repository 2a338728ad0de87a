"""The harmony chat format of gpt-oss: render a conversation to token ids, parse the reply back into messages.

    fmt = HarmonyFormat(tokenizer, identity=IDENTITY, current_date=None)   # the ChatFormat (runtime/chat/format.py)
    ids = fmt.render(openai_messages, tools, tool_choice, reasoning_effort)  # system/developer -> instructions
    parser = fmt.parser()     # analysis = reasoning, final / commentary = content, a message to functions.f = a call
    Harmony(tokenizer).render_ids(messages, SystemContent(..), developer, tools) / .parse(ids)   # harmony Messages

    <|start|>system<|message|>{identity}\\nKnowledge cutoff: ..\\nCurrent date: ..\\n\\nReasoning: medium\\n\\n
        # Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>
    <|start|>developer<|message|># Instructions\\n\\n{instructions}<|end|>           (optional)
        (+ '\\n\\n# Tools\\n\\n## functions\\n\\nnamespace functions {..} // namespace functions' with function tools,
         which also add "Calls to these tools must go to the commentary channel: 'functions'." to the system message)
    <|start|>user<|message|>{text}<|end|>
    <|start|>assistant<|channel|>final<|message|>{text}<|end|>                      (history: <|return|> -> <|end|>)
    <|start|>assistant                                                              (the prompt ends here)

The reply: <|channel|>analysis<|message|>..<|end|><|start|>assistant<|channel|>final<|message|>..<|return|>
or a tool call: <|channel|>commentary to=functions.f <|constrain|>json<|message|>{..}<|call|>.
Special token ids always come from the tokenizer (token_to_id), never from constants: a tiny model's tokenizer
puts them inside its small vocab.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mxport.errors import MxportError
from mxport.runtime.chat.format import Event, FormatError, ReplyParser, check_tool_choice, message_text
from mxport.runtime.chat.harmony_tools import Tool, as_tools, developer_text
from mxport.runtime.generation.tokenizer import IncrementalDecoder, Tokenizer

IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
REASONING_EFFORTS = ("low", "medium", "high")
CHANNELS = ("analysis", "commentary", "final")
SPECIALS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>")
HEADER_SPECIALS = ("<|channel|>", "<|constrain|>")
HEADER_WORD = re.compile(r"[A-Za-z0-9_.:/+-]{1,128}")  # a role, author, recipient, channel or content type
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a function's name in a call or a tool message


def check_header(value: str | None, field: str) -> None:
    """A word that goes into a message header: letters, digits and _.:/+- only (never special-token text)."""
    if value is not None and not (isinstance(value, str) and HEADER_WORD.fullmatch(value)):
        raise FormatError(f"{field}: a harmony header takes 1 to 128 letters, digits or _.:/+-, found "
                          f"{repr(value)[:80]}", field)


def check_function_name(value: object, field: str) -> str:
    """A function name from a request (tool call, tool message): as OpenAI's, 1 to 64 of A-Za-z0-9_.-."""
    if not (isinstance(value, str) and FUNCTION_NAME.fullmatch(value)):
        raise FormatError(f"{field}: a function name is 1 to 64 letters, digits, '_', '.' or '-', found "
                          f"{repr(value)[:80]}", field)
    return value


@dataclass(frozen=True)
class Message:
    """One harmony message. recipient is a tool ('functions.get_weather') for calls; author names a tool reply."""

    role: str  # system | developer | user | assistant | tool
    content: str
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None  # after <|constrain|>, e.g. 'json'
    author: str | None = None  # tool messages: 'functions.get_weather'


@dataclass(frozen=True)
class SystemContent:
    reasoning: str = "medium"
    current_date: str | None = None  # YYYY-MM-DD; None = today (UTC)
    knowledge_cutoff: str = KNOWLEDGE_CUTOFF
    identity: str = IDENTITY
    channels: tuple[str, ...] = CHANNELS
    function_tools: bool = False  # adds the "Calls to these tools must go to the commentary channel" line

    def __post_init__(self) -> None:
        if self.reasoning not in REASONING_EFFORTS:
            raise MxportError(f"--reasoning {self.reasoning!r}: expected one of {', '.join(REASONING_EFFORTS)}")

    def render(self) -> str:
        date = self.current_date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
        text = (f"{self.identity}\nKnowledge cutoff: {self.knowledge_cutoff}\nCurrent date: {date}\n\n"
                f"Reasoning: {self.reasoning}\n\n"
                f"# Valid channels: {', '.join(self.channels)}. Channel must be included for every message.")
        if self.function_tools:
            text += "\nCalls to these tools must go to the commentary channel: 'functions'."
        return text


@dataclass
class HarmonyReply:
    """A parsed assistant reply, as harmony messages."""

    messages: list[Message]
    stop: str | None = None  # "return" | "call" | None (cut off by length)

    def channel_text(self, channel: str) -> str:
        return "".join(m.content for m in self.messages if m.channel == channel and m.recipient is None)

    @property
    def final(self) -> str:
        return self.channel_text("final")

    @property
    def analysis(self) -> str:
        return self.channel_text("analysis")

    @property
    def tool_calls(self) -> list[Message]:
        return [m for m in self.messages if m.recipient is not None]


# ---- rendering ----------------------------------------------------------------------------------------------------

def _message_parts(m: Message, end: str) -> list[tuple[str, bool]]:
    """(text, is_content) pieces; content is encoded with special tokens taken literally (no prompt injection), and
    the header's words are checked (check_header), so no field can put special-token text into it."""
    for value, what in ((m.role, "role"), (m.author, "author"), (m.recipient, "recipient"),
                        (m.channel, "channel"), (m.content_type, "content type")):
        check_header(value, f"harmony message {what}")
    head = m.author or m.role
    if m.role == "tool":  # a tool's answer: '<|start|>functions.f to=assistant<|channel|>commentary<|message|>'
        head += f" to={m.recipient or 'assistant'}"
    if m.channel:
        head += f"<|channel|>{m.channel}"
    if m.recipient and m.role != "tool":  # a call: 'assistant<|channel|>commentary to=functions.f'
        head += f" to={m.recipient}"
    if m.content_type:
        head += f" <|constrain|>{m.content_type}"
    return [(f"<|start|>{head}<|message|>", False), (m.content, True), (end, False)]


def history(messages: Sequence[Message]) -> list[Message]:
    """Drop the analysis of turns that ended in a final answer (kept while a tool call is still open)."""
    out = []
    for i, m in enumerate(messages):
        later_final = any(n.role == "assistant" and n.channel == "final" for n in messages[i + 1:])
        if m.role == "assistant" and m.channel == "analysis" and later_final:
            continue
        out.append(m)
    return out


def render_conversation(messages: Sequence[Message], system: SystemContent | None = None,
                        developer: str | None = None, *, tools: Iterable[Tool | dict] = (),
                        for_completion: bool = True) -> str:
    """The prompt string (with special tokens spelled out) ending with `<|start|>assistant`. Function tools go
    into the developer message; with any, the system message gets the commentary-channel line."""
    return "".join(text for text, _ in _conversation_parts(messages, system, developer, tools, for_completion))


def _conversation_parts(messages: Sequence[Message], system: SystemContent | None, developer: str | None,
                        tools: Iterable[Tool | dict], for_completion: bool) -> list[tuple[str, bool]]:
    system = system or SystemContent()
    tools = as_tools(tools)
    if tools and not system.function_tools:
        system = replace(system, function_tools=True)
    parts = _message_parts(Message("system", system.render()), "<|end|>")
    if developer or tools:
        parts += _message_parts(Message("developer", developer_text(developer, tools)), "<|end|>")
    for m in history(messages):
        if m.role in ("system", "developer"):
            raise MxportError(f"harmony: pass {m.role} text as system=/developer=, not as a message")
        call = m.role == "assistant" and m.recipient is not None
        parts += _message_parts(m, "<|call|>" if call else "<|end|>")
    if for_completion:
        parts.append(("<|start|>assistant", False))
    return parts


class Harmony:
    """Harmony over one tokenizer: ids of its special tokens, rendering to ids and parsing of reply ids."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids = {name: tokenizer.require(name) for name in SPECIALS}
        self.names = {v: k for k, v in self.ids.items()}

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return (self.ids["<|return|>"], self.ids["<|call|>"])

    def render_ids(self, messages: Sequence[Message], system: SystemContent | None = None,
                   developer: str | None = None, tools: Iterable[Tool | dict] = ()) -> list[int]:
        """The prompt as ids. Message text is encoded literally: a user typing '<|end|>' gets text, not a token."""
        ids: list[int] = []
        for text, is_content in _conversation_parts(messages, system, developer, tools, True):
            ids += self.tokenizer.encode(text, allow_special=not is_content)
        return ids

    def parse(self, token_ids: Iterable[int], stop_token_id: int | None = None) -> HarmonyReply:
        """Reply tokens (after the prompt's `<|start|>assistant`) -> messages. Lenient: a model that breaks the
        format still gives a Reply (text outside any message header lands in a message with channel None)."""
        parser = StreamParser(self)
        for t in token_ids:
            parser.add(t)
        if stop_token_id is not None:
            parser.add(stop_token_id)
        return parser.reply()

    def to_history(self, reply: HarmonyReply) -> list[Message]:
        """The reply's messages as they go into the next prompt (the renderer turns <|return|> into <|end|>)."""
        return [replace(m, role="assistant") for m in reply.messages]


@dataclass
class _Open:
    header: list[int] = field(default_factory=list)
    content: list[int] = field(default_factory=list)
    in_content: bool = False


class StreamParser:
    """Token-by-token harmony parsing. add(id) returns (channel, text delta) of message content, for streaming."""

    def __init__(self, harmony: Harmony, role: str = "assistant") -> None:
        self.h = harmony
        self.messages: list[Message] = []
        self.stop: str | None = None
        self._role = role
        self._cur = _Open()
        self._started_with_start = False
        self._header: dict = {}
        self._decoder: IncrementalDecoder | None = None

    def add(self, token_id: int) -> tuple[str | None, str]:
        ids = self.h.ids
        t = int(token_id)
        if self.stop is not None:
            return None, ""
        if t == ids["<|start|>"]:
            self._close()
            self._started_with_start = True
            return None, ""
        if t in (ids["<|end|>"], ids["<|return|>"], ids["<|call|>"]):
            channel = self._header.get("channel")
            tail = self._decoder.flush() if self._decoder else ""
            self._close()
            if t == ids["<|return|>"]:
                self.stop = "return"
            elif t == ids["<|call|>"]:
                self.stop = "call"
            return channel, tail
        if not self._cur.in_content:
            if t == ids["<|message|>"]:
                self._header = self._parse_header(self._cur.header)
                self._cur.in_content = True
                self._decoder = self.h.tokenizer.incremental()
                return self._header.get("channel"), ""
            self._cur.header.append(t)
            return None, ""
        self._cur.content.append(t)
        return self._header.get("channel"), self._decoder.add(t)

    @property
    def in_content(self) -> bool:
        """Inside a message's content (after its <|message|>): add() returns its text as deltas."""
        return self._cur.in_content

    @property
    def recipient(self) -> str | None:
        """The recipient of the message being read ('functions.f' inside a tool call), else None."""
        return self._header.get("recipient") if self._cur.in_content else None

    def reply(self) -> HarmonyReply:
        if self.stop is None:
            self._close()
        return HarmonyReply(list(self.messages), self.stop)

    def _parse_header(self, header_ids: list[int]) -> dict:
        """'assistant<|channel|>commentary to=functions.f <|constrain|>json' -> role, channel, recipient, type."""
        text = self.h.tokenizer.decode(header_ids)
        role_part, _, rest = text.partition("<|channel|>")
        channel_part, _, ctype = rest.partition("<|constrain|>")
        if "<|constrain|>" in role_part:
            role_part, _, ctype = role_part.partition("<|constrain|>")
        out = {"role": self._role, "channel": None, "recipient": None, "content_type": ctype.strip() or None}
        words = role_part.split()
        if self._started_with_start and words and not words[0].startswith("to="):
            out["role"] = words.pop(0)
        for part in (words, channel_part.split()):
            for w in part:
                if w.startswith("to="):
                    out["recipient"] = w[3:]
                elif part is not words and out["channel"] is None:
                    out["channel"] = w
        return out

    def _close(self) -> None:
        cur = self._cur
        if cur.in_content or cur.header:
            if cur.in_content:
                content = self.h.tokenizer.decode(cur.content)
                head = self._header
            elif self._started_with_start or any(self.h.names.get(t) in HEADER_SPECIALS for t in cur.header):
                self._cur, self._header, self._decoder = _Open(), {}, None  # a header cut off before its
                self._started_with_start = False                               # <|message|>: no content
                return
            else:  # text without a <|message|>: keep it as channel-less content
                content, head = self.h.tokenizer.decode(cur.header), {"role": self._role}
            role = head.get("role") or self._role
            self.messages.append(Message("assistant" if role == "assistant" else role, content,
                                         head.get("channel"), head.get("recipient"), head.get("content_type")))
        self._cur, self._header, self._decoder = _Open(), {}, None
        self._started_with_start = False


# ---- the ChatFormat: OpenAI-style messages in, events out -----------------------------------------------------------

class HarmonyFormat:
    """gpt-oss' harmony: system/developer messages -> developer instructions, functions.* calls <-> tool_calls.
    An assistant turn that HarmonyParser parsed keeps its harmony messages under "harmony" (Message objects, which
    no JSON request can carry), so the next prompt writes that turn back exactly as parsed (preambles and all)."""

    name = "harmony"

    def __init__(self, tokenizer: Tokenizer, *, identity: str = IDENTITY, current_date: str | None = None) -> None:
        self.harmony = Harmony(tokenizer)
        self.identity, self.current_date = identity, current_date
        self.stop_token_ids = self.harmony.stop_token_ids

    def render(self, messages: Sequence[dict], tools: Sequence[Tool | dict] = (), tool_choice: Any = None,
               reasoning_effort: str | None = None) -> list[int]:
        if reasoning_effort is not None and reasoning_effort not in REASONING_EFFORTS:
            raise FormatError(f"reasoning_effort {reasoning_effort!r}: this model takes one of "
                              f"{', '.join(REASONING_EFFORTS)}", "reasoning_effort")
        check_tool_choice(tool_choice)
        try:
            tool_list = as_tools(tools or (), "tools") if tool_choice != "none" else ()
        except MxportError as exc:
            raise FormatError(str(exc), "tools") from None
        instructions, history = self._messages(messages)
        system = SystemContent(reasoning=reasoning_effort or "medium", current_date=self.current_date,
                               identity=self.identity)
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
            elif role == "assistant" and isinstance(m.get("harmony"), tuple):
                out += [h for h in m["harmony"] if isinstance(h, Message)]
            elif role == "assistant":
                out += self._assistant(m, text, where, call_names)
            elif role == "tool":
                call_id = m.get("tool_call_id")
                name = m.get("name") or (call_names.get(call_id) if isinstance(call_id, str) else None)
                if not name:
                    raise FormatError(f"{where}: a tool message needs the 'tool_call_id' of an earlier assistant "
                                      "tool call (or a 'name')", f"{where}.tool_call_id")
                check_function_name(name, f"{where}.name")
                out.append(Message("tool", text, "commentary", author=f"functions.{name}"))
            else:
                raise FormatError(f"{where}.role {role!r}: expected system, developer, user, assistant or tool",
                                  f"{where}.role")
        return "\n\n".join(instructions), out

    @staticmethod
    def _assistant(m: dict, text: str, where: str, call_names: dict[str, str]) -> list[Message]:
        calls = m.get("tool_calls") or []
        if not isinstance(calls, list):
            raise FormatError(f"{where}.tool_calls: expected a list of tool calls", f"{where}.tool_calls")
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
            check_function_name(fn["name"], f"{where}.tool_calls[{j}].function.name")
            call_names[str(call.get("id", ""))] = fn["name"]
            args = fn.get("arguments") or "{}"
            out.append(Message("assistant", args if isinstance(args, str) else str(args), "commentary",
                               recipient=f"functions.{fn['name']}", content_type="json"))
        return out

    def parser(self) -> HarmonyParser:
        return HarmonyParser(self.harmony)


class HarmonyParser(ReplyParser):
    """Harmony reply tokens -> events: analysis = reasoning, final / commentary = content, a message to
    `functions.f` = a tool call whose arguments stream as tool_args. Text outside any message (a model that ignores
    the format) comes out as content when its message closes."""

    def __init__(self, harmony: Harmony) -> None:
        super().__init__()
        self._p = StreamParser(harmony)
        self.calls = 0

    @property
    def tool_called(self) -> bool:
        return self._p.stop == "call" and self.calls > 0

    def _add(self, token_id: int) -> list[Event]:
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

    def _finish(self, stop_token: int | None) -> list[Event]:
        """A stop token (<|return|>, <|call|>) closes the last message as harmony says."""
        out = self._add(stop_token) if stop_token is not None and stop_token in self._p.h.stop_token_ids else []
        p = self._p
        closed, was_content = len(p.messages), p.in_content
        p.reply()
        return out + ([] if was_content else self._unstreamed(closed))

    def _unstreamed(self, since: int) -> list[Event]:
        """Messages closed without ever reaching <|message|>: their decoded text as content."""
        return [Event("content", m.content) for m in self._p.messages[since:] if m.content]

    def _message(self, message: dict) -> dict:
        return {**message, "harmony": tuple(self._p.h.to_history(self._p.reply()))}
