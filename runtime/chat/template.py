"""Chat in a checkpoint's own jinja `chat_template` (Qwen3), rendered as transformers' apply_chat_template does,
and `<think>...</think>` replies split into reasoning and content.

    tpl = ChatTemplate.from_folder(folder)                  # chat_template.jinja, else tokenizer_config.json
    text = tpl.render(messages, add_generation_prompt=True, enable_thinking=False)
    fmt = TemplateFormat(tokenizer, tpl)                    # the server's ChatFormat (runtime/serve/formats.py)
    ids = fmt.render(messages, tools, tool_choice, reasoning_effort)     # reasoning_effort switches thinking
    parser = fmt.parser(); parser.add(token_id) -> [Event("reasoning" | "content", text)]

Rendering follows transformers (utils/chat_template_utils.py): an ImmutableSandboxedEnvironment with trim_blocks,
lstrip_blocks and loopcontrols; `tojson` without HTML escaping (ensure_ascii=False, indent/separators/sort_keys),
`raise_exception`, `strftime_now`; the tokenizer's special tokens (bos_token, eos_token, ...) as variables, then
`messages`, `tools`, `add_generation_prompt` and any extra keyword (enable_thinking). A message's reasoning given as
`reasoning` or `thinking` is also passed as `reasoning_content`. The text is tokenized with special tokens matched
and none added (add_special_tokens=False), as apply_chat_template(tokenize=True) does.

`write_qwen3_tokenizer(folder, cfg)` gives synthetic Qwen3 checkpoints a byte-level BPE tokenizer with Qwen3's
special tokens and a chat template of Qwen3's shape (`QWEN3_TEMPLATE`), so `mxport synth --preset qwen3-tiny`,
`mxport export` and `mxport chat` work offline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from mxport.errors import MxportError
from mxport.runtime.generation.tokenizer import Tokenizer, build_byte_level_bpe

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Qwen3's special tokens and their ids in its 151936-row vocabulary (Qwen/Qwen3-*/tokenizer_config.json)
QWEN3_SPECIALS: dict[str, int] = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
    "<tool_call>": 151657, "</tool_call>": 151658, THINK_OPEN: 151667, THINK_CLOSE: 151668,
}
QWEN3_VOCAB_MIN = 151669  # rows needed for Qwen3's own ids; smaller vocabularies put the specials at the top

# A chat template of Qwen3's shape (written for mxport): ChatML turns, an optional system turn (with a tools block
# when tools are given), reasoning kept only for assistant turns after the last user message, tool calls as
# <tool_call> JSON, tool results as user turns in <tool_response>, and `enable_thinking=false` closing an empty
# think block in the generation prompt.
QWEN3_TEMPLATE = """\
{%- set ns = namespace(last_user=-1) %}
{%- for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages and messages[0].role == 'system' %}{{ messages[0].content + '\\n\\n' }}{% endif %}
{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with \
function signatures within <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n\
</tool_call><|im_end|>\\n' }}
{%- elif messages and messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for m in messages %}
{%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}
{%- elif m.role == 'assistant' %}
{%- set content = m.content or '' %}
{%- set reasoning = m.reasoning_content or '' %}
{%- if not reasoning and '</think>' in content %}
{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}
{%- endif %}
{{- '<|im_start|>assistant\\n' }}
{%- if loop.index0 > ns.last_user and reasoning %}
{{- '<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' }}
{%- endif %}
{{- content }}
{%- for call in m.tool_calls or [] %}
{%- set f = call.function if call.function else call %}
{{- '\\n<tool_call>\\n{"name": "' + f.name + '", "arguments": ' }}
{%- if f.arguments is string %}{{ f.arguments }}{% else %}{{ f.arguments | tojson }}{% endif %}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif m.role == 'tool' %}
{{- '<|im_start|>user\\n<tool_response>\\n' + m.content + '\\n</tool_response><|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}
{%- endif %}
"""

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


# ---- replies: <think>...</think>, <tool_call>...</tool_call> ---------------------------------------------------------
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


class ThinkParser:
    """Reply token ids -> (kind, text) deltas: text inside <think>...</think> is "reasoning", the rest "content";
    a `<tool_call>{"name": ..., "arguments": ...}</tool_call>` block becomes ("tool_call", name) then
    ("tool_args", arguments as JSON text) when it closes (its text is not streamed).

    The markers are matched by id (they are special tokens). Whitespace at the start and end of each part is
    dropped (the template writes '<think>\n' ... '\n</think>\n\n'). A reply cut off inside the think block is
    all reasoning; a tool block that is not valid JSON comes out as content."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        self.ids = {tokenizer.token_to_id(t): t for t in (THINK_OPEN, THINK_CLOSE, TOOL_OPEN, TOOL_CLOSE)}
        self.ids.pop(None, None)
        self.kind = "content"
        self.reasoning, self.content = "", ""
        self.tool_calls: list[tuple[str, str]] = []  # (name, arguments JSON)
        self._new_part()

    def _new_part(self) -> None:
        self._decoder = self.tok.incremental(skip_special_tokens=True)
        self._started, self._pending, self._tool_text = False, "", ""

    def add(self, token_id: int) -> list[tuple[str, str]]:
        marker = self.ids.get(int(token_id))
        if marker is None:
            return self._emit(self._decoder.add(token_id))
        out = self._end_part()
        self.kind = {THINK_OPEN: "reasoning", TOOL_OPEN: "tool"}.get(marker, "content")
        self._new_part()
        return out

    def finish(self) -> list[tuple[str, str]]:
        return self._end_part()

    def _end_part(self) -> list[tuple[str, str]]:
        out = self._emit(self._decoder.flush())
        if self.kind == "tool":
            out += self._tool(self._tool_text)
        self._pending = ""  # trailing whitespace of a part is dropped
        return out

    def _tool(self, text: str) -> list[tuple[str, str]]:
        try:
            call = json.loads(text)
            name, args = call["name"], call.get("arguments", {})
            if not isinstance(name, str):
                raise TypeError
        except (ValueError, TypeError, KeyError, AttributeError):
            self.content += text
            return [("content", text)] if text else []
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        self.tool_calls.append((name, args))
        return [("tool_call", name), ("tool_args", args)]

    def _emit(self, text: str) -> list[tuple[str, str]]:
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
        if not body:
            return []
        if self.kind == "reasoning":
            self.reasoning += body
        else:
            self.content += body
        return [(self.kind, body)]


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


class TemplateChatSession:
    """A conversation in the checkpoint's chat template over a Generator (`mxport chat` for template families)."""

    def __init__(self, generator, template: ChatTemplate | None = None, system: str | None = None,
                 thinking: bool | None = None) -> None:
        if generator.tokenizer is None:
            raise MxportError(f"{generator.name}: chat needs a tokenizer (tokenizer.json in the exported folder)")
        self.generator, self.tokenizer = generator, generator.tokenizer
        self.template = template
        self.thinking = thinking
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.last_prompt_ids: list[int] = []
        self.last_token_ids: list[int] = []
        self.stop_token_ids = stop_ids(self.tokenizer, template) if template else ()

    def prompt_ids(self, user_text: str) -> list[int]:
        messages = [*self.messages, {"role": "user", "content": user_text}]
        extra = {} if self.thinking is None else {"enable_thinking": self.thinking}
        return self.tokenizer.encode(self.template.render(messages, add_generation_prompt=True, **extra))

    def send(self, user_text: str, config=None, on_delta=None, **options) -> ThinkParser:
        """One turn; on_delta(kind, text) gets "reasoning" / "content" text as it is decoded. Returns the parser
        (its .reasoning, .content, .tool_calls)."""
        ids = self.prompt_ids(user_text)
        options.setdefault("stop_token_ids", tuple(dict.fromkeys([*self.stop_token_ids,
                                                                  *self.generator.eos_token_ids])))
        parser = ThinkParser(self.tokenizer)
        self.last_prompt_ids, self.last_token_ids = ids, []
        for delta in self.generator.stream(ids, config, **options):
            self.last_token_ids.append(delta.token_id)
            if delta.token_id in options["stop_token_ids"]:
                continue
            for kind, text in parser.add(delta.token_id):
                if on_delta is not None and kind in ("reasoning", "content"):
                    on_delta(kind, text)
        for kind, text in parser.finish():
            if on_delta is not None and kind in ("reasoning", "content"):
                on_delta(kind, text)
        self.messages += [{"role": "user", "content": user_text},
                          {"role": "assistant", "content": parser.content, "reasoning_content": parser.reasoning}]
        return parser


# ---- a synthetic Qwen3 tokenizer -------------------------------------------------------------------------------------
def qwen3_special_ids(vocab_size: int) -> dict[str, int]:
    """Qwen3's ids when the vocabulary has room for them, else the top ids in QWEN3_SPECIALS' order."""
    if vocab_size >= QWEN3_VOCAB_MIN:
        return dict(QWEN3_SPECIALS)
    return {tok: vocab_size - len(QWEN3_SPECIALS) + i for i, tok in enumerate(QWEN3_SPECIALS)}


def build_qwen3_tokenizer(vocab_size: int) -> Tokenizer:
    return build_byte_level_bpe(vocab_size, qwen3_special_ids(vocab_size), f"<qwen3-style byte-level BPE, vocab "
                                f"{vocab_size}>")


def write_qwen3_tokenizer(folder: str | Path, cfg) -> None:
    """tokenizer.json, tokenizer_config.json (chat_template, eos <|im_end|>, pad <|endoftext|>), chat_template.jinja
    and generation_config.json beside a synthetic Qwen3 checkpoint. The config's eos/pad ids must be the
    tokenizer's (the presets are built that way)."""
    folder = Path(folder)
    tok = build_qwen3_tokenizer(cfg.vocab_size)
    ids = qwen3_special_ids(cfg.vocab_size)
    if cfg.eos_token_ids and cfg.eos_token_ids[0] != ids["<|im_end|>"]:
        raise MxportError(f"eos_token_id {cfg.eos_token_ids[0]} is not the synthetic tokenizer's <|im_end|> "
                          f"({ids['<|im_end|>']}) for vocab_size {cfg.vocab_size}")
    tok.save(folder / "tokenizer.json")
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in sorted(ids.items(), key=lambda kv: kv[1])}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": added, "bos_token": None,
              "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
              "model_max_length": cfg.max_position_embeddings, "clean_up_tokenization_spaces": False,
              "chat_template": QWEN3_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "chat_template.jinja").write_text(QWEN3_TEMPLATE)
    generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": list(cfg.eos_token_ids),
                  "pad_token_id": cfg.pad_token_id, "do_sample": False}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
