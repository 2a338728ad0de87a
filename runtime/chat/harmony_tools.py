"""Harmony's function tools: the `# Tools` section of the developer message, as openai-harmony renders it.

    tools = as_tools([{"type": "function", "function": {"name", "description", "parameters"}}, ...])
    tools = load_tools("tools.json")         # `mxport chat --tools`: a JSON list of such definitions
    developer_text("Be brief.", tools)       # '# Instructions\\n\\nBe brief.\\n\\n# Tools ...'

Rendered as openai-harmony renders them (src/encoding.rs: template_tools_section, json_schema_to_typescript):

    # Tools\\n\\n## functions\\n\\nnamespace functions {\\n\\n
    // {description line}                               one comment line per line of the tool's description
    type {name} = (_: {\\n{fields}}) => any;\\n\\n        or `type {name} = () => any;` without parameters
    } // namespace functions

A field: [// {title}\\n//\\n][// {description}\\n][// Examples:\\n// - "{ex}"\\n]{name}[?]: {type},[ // default: ..]\\n
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mxport.errors import MxportError

_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # as OpenAI's function names


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
            raise MxportError(f"{where}: 'name' must be 1 to 64 letters, digits, '_' or '-', found "
                              f"{repr(name)[:80]}")
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
