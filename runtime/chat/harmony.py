"""The harmony chat format of gpt-oss: render a conversation to token ids, parse the reply back into messages.

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
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from mxport.errors import MxportError
from mxport.runtime.generation.tokenizer import IncrementalDecoder, Tokenizer

IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
REASONING_EFFORTS = ("low", "medium", "high")
CHANNELS = ("analysis", "commentary", "final")
SPECIALS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>")


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
class Reply:
    """A parsed assistant reply."""

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


# ---- function tools (the developer message's `# Tools` section) ---------------------------------------------------
#
# Rendered as openai-harmony renders them (src/encoding.rs: template_tools_section, json_schema_to_typescript):
#
#     # Tools\n\n## functions\n\nnamespace functions {\n\n
#     // {description line}                               one comment line per line of the tool's description
#     type {name} = (_: {\n{fields}}) => any;\n\n        or `type {name} = () => any;` without parameters
#     } // namespace functions
#
# A field: [// {title}\n//\n][// {description}\n][// Examples:\n// - "{ex}"\n]{name}[?]: {type},[ // default: ..]\n

_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Tool:
    """A function tool: name, description and the JSON schema of its arguments (None = takes no arguments)."""

    name: str
    description: str = ""
    parameters: dict | None = None

    @classmethod
    def from_dict(cls, d: object, where: str = "tool") -> Tool:
        """OpenAI's {"type": "function", "function": {name, description, parameters}} or the bare inner dict."""
        if not isinstance(d, dict):
            raise MxportError(f"{where}: expected a JSON object, found {type(d).__name__}")
        if "function" in d or "type" in d:
            if d.get("type", "function") != "function" or not isinstance(d.get("function"), dict):
                raise MxportError(f"{where}: expected {{\"type\": \"function\", \"function\": {{...}}}} or "
                                  f"{{\"name\", \"description\", \"parameters\"}}, found type {d.get('type')!r}")
            d = d["function"]
        name, description, parameters = d.get("name"), d.get("description", ""), d.get("parameters")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise MxportError(f"{where}: 'name' must be letters, digits, '_' or '-', found {name!r}")
        if not isinstance(description, str):
            raise MxportError(f"{where} ({name}): 'description' must be a string, found {description!r}")
        if parameters is not None and not isinstance(parameters, dict):
            raise MxportError(f"{where} ({name}): 'parameters' must be a JSON schema object, found {parameters!r}")
        return cls(name, description, parameters)

    def render(self) -> str:
        """'// {description}\\ntype {name} = (_: {...}) => any;\\n' (one comment line per description line)."""
        lines = [f"// {line}" for line in _rust_lines(self.description)]
        args = f"_: {schema_to_typescript(self.parameters)}" if self.parameters is not None else ""
        return "\n".join([*lines, f"type {self.name} = ({args}) => any;\n"])


def as_tools(tools: Iterable[Tool | dict], where: str = "tools") -> tuple[Tool, ...]:
    """Tools from Tool objects or dicts (both shapes); duplicate names are an error."""
    out = tuple(t if isinstance(t, Tool) else Tool.from_dict(t, f"{where}[{i}]") for i, t in enumerate(tools))
    names = [t.name for t in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MxportError(f"{where}: tool names must be unique, found {', '.join(dup)} more than once")
    return out


def load_tools(path: str | Path) -> tuple[Tool, ...]:
    """A JSON file holding a list of tool definitions (OpenAI's shape or the bare one)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MxportError(f"--tools {path}: cannot read the file ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MxportError(f"--tools {path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise MxportError(f"--tools {path}: expected a JSON list of tool definitions, found {type(data).__name__}")
    return as_tools(data, f"--tools {path}: tool")


def render_tools(tools: Sequence[Tool], namespace: str = "functions") -> str:
    """The `# Tools` section of the developer message ('' without tools)."""
    if not tools:
        return ""
    body = [f"## {namespace}\n", f"namespace {namespace} {{\n", *(t.render() for t in tools),
            f"}} // namespace {namespace}"]
    return "# Tools\n\n" + "\n".join(body)


def developer_text(instructions: str | None, tools: Sequence[Tool] = ()) -> str:
    """The developer message: '# Instructions\\n\\n{instructions}' and the tools section, joined by a blank line."""
    sections = ["# Instructions", instructions] if instructions else []
    if tools:
        sections.append(render_tools(tools))
    return "\n\n".join(sections)


def schema_to_typescript(schema: object, indent: str = "") -> str:
    """A JSON schema as the TypeScript-like type openai-harmony writes (json_schema_to_typescript)."""
    if not isinstance(schema, dict):
        return "any"
    if isinstance(schema.get("oneOf"), list):  # (an enum's string default is JSON here, bare in a property)
        return "".join(f"\n{indent} | " + _variant(v, indent + "   ", None, False, enum_bare=False)
                       for v in schema["oneOf"])
    kind = schema.get("type")
    if isinstance(kind, list) and any(isinstance(k, str) for k in kind):
        return " | ".join("number" if k == "integer" else k for k in kind if isinstance(k, str))
    if kind == "object":
        return _object(schema, indent)
    if kind == "string":
        values = [f'"{v}"' for v in schema["enum"] if isinstance(v, str)] if _is_enum(schema) else []
        return " | ".join(values) if values else "string"
    if kind in ("number", "integer"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "array":
        return f"{schema_to_typescript(schema['items'], indent)}[]" if "items" in schema else "Array<any>"
    return "any"


def _object(schema: dict, indent: str) -> str:
    out = f"{indent}// {schema['description']}\n" if isinstance(schema.get("description"), str) else ""
    out += "{\n"
    props = schema.get("properties")
    required = {r for r in schema.get("required") or [] if isinstance(r, str)}
    for key, val in (props.items() if isinstance(props, dict) else ()):
        val = val if isinstance(val, dict) else {}
        opt = "" if key in required else "?"
        if isinstance(val.get("title"), str):
            out += f"{indent}// {val['title']}\n{indent}//\n"
        if "oneOf" not in val and isinstance(val.get("description"), str):
            out += f"{indent}// {val['description']}\n"
        if isinstance(val.get("examples"), list) and val["examples"]:
            out += f"{indent}// Examples:\n"
            out += "".join(f'{indent}// - "{ex}"\n' for ex in val["examples"] if isinstance(ex, str))
        if isinstance(val.get("oneOf"), list):
            out += _one_of_field(key, opt, val, indent)
            continue
        out += f"{indent}{key}{opt}: {_nullable(val, schema_to_typescript(val, indent + '    '))},"
        if "oneOf" not in val and "default" in val:
            out += f" // default: {_default(val)}"
        out += "\n"
    return out + f"{indent}}}"


def _one_of_field(key: str, opt: str, val: dict, indent: str) -> str:
    """A property whose schema is a oneOf: '{key}?:' then one ' | {variant}' line per variant."""
    desc = val.get("description") if isinstance(val.get("description"), str) else None
    first = val["oneOf"][0] if val["oneOf"] and isinstance(val["oneOf"][0], dict) else {}
    above = desc is not None and first.get("description") != desc
    out = f"{indent}// {desc}\n" if above else ""
    if "default" in val:
        out += f"{indent}// default: {_default(val)}\n"
    out += f"{indent}{key}{opt}:\n"
    for i, variant in enumerate(val["oneOf"]):
        out += f"{indent} | " + _variant(variant, indent + "   ", desc, i == 0 and above) + "\n"
    return out + f"{indent},\n"


def _variant(variant: object, indent: str, parent_desc: str | None, skip_desc: bool,
             enum_bare: bool = True) -> str:
    """One oneOf variant: its type, then ' // {description} default: ..' when it has them."""
    text = _nullable(variant, schema_to_typescript(variant, indent))
    v = variant if isinstance(variant, dict) else {}
    notes = []
    if not skip_desc and isinstance(v.get("description"), str) and v["description"] != parent_desc:
        notes.append(v["description"])
    if "default" in v:
        notes.append(f"default: {_default(v, enum_bare)}")
    return text + (f" // {' '.join(notes)}" if notes else "")


def _nullable(schema: object, text: str) -> str:
    nullable = isinstance(schema, dict) and schema.get("nullable") is True
    return f"{text} | null" if nullable and "null" not in text else text


def _default(schema: dict, enum_bare: bool = True) -> str:
    """'"text"' for a string default (not escaped), the bare string for an enum's default, compact JSON otherwise."""
    value = schema["default"]
    if isinstance(value, str) and not _is_enum(schema):
        return f'"{value}"'
    if isinstance(value, str) and enum_bare:
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _is_enum(schema: dict) -> bool:
    return isinstance(schema.get("enum"), list) and bool(schema["enum"])


def _rust_lines(text: str) -> list[str]:
    """str::lines() of Rust: split on '\\n', drop a '\\r' before it, no empty last line after a final newline."""
    *lines, last = text.split("\n")
    return [line[:-1] if line.endswith("\r") else line for line in lines] + ([last] if last else [])


# ---- rendering ----------------------------------------------------------------------------------------------------

def render_message(m: Message, end: str = "<|end|>") -> str:
    """'<|start|>{role}[ to=..][<|channel|>{channel}][ to={recipient}][ <|constrain|>{type}]<|message|>{content}{end}'"""
    return "".join(text for text, _ in _message_parts(m, end))


def _message_parts(m: Message, end: str) -> list[tuple[str, bool]]:
    """(text, is_content) pieces; content is encoded with special tokens taken literally (no prompt injection)."""
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

    def parse(self, token_ids: Iterable[int], stop_token_id: int | None = None) -> Reply:
        """Reply tokens (after the prompt's `<|start|>assistant`) -> messages. Lenient: a model that breaks the
        format still gives a Reply (text outside any message header lands in a message with channel None)."""
        parser = StreamParser(self)
        for t in token_ids:
            parser.add(t)
        if stop_token_id is not None:
            parser.add(stop_token_id)
        return parser.reply()

    def to_history(self, reply: Reply) -> list[Message]:
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

    def reply(self) -> Reply:
        if self.stop is None:
            self._close()
        return Reply(list(self.messages), self.stop)

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
            else:  # text without a <|message|>: keep it as channel-less content
                content, head = self.h.tokenizer.decode(cur.header), {"role": self._role}
            role = head.get("role") or self._role
            self.messages.append(Message("assistant" if role == "assistant" else role, content,
                                         head.get("channel"), head.get("recipient"), head.get("content_type")))
        self._cur, self._header, self._decoder = _Open(), {}, None
        self._started_with_start = False
