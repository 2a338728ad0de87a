"""A chat session over any chat format (runtime/chat/format.py), and the choice of format for a model.

    fmt = chat_format(tokenizer, folder, kind)           # by the family's chat_format (None: the model has none)
    fmt = folder_chat_format(generator, folder)          # the same for a loaded export, else MxportError naming it
    chat = ChatSession(generator, fmt, [{"role": "developer", "content": "Be brief."}], tools=.., reasoning="low")
    reply = chat.send("What is 2 + 2?", on_event=print)  # Reply(content, reasoning, tool_calls, tool_called, ..)
    reply = chat.send_tool_results([("get_weather", '{"sky": "clear"}')])   # answers the calls, the model goes on

The session keeps the conversation as OpenAI-style messages (what the server receives), renders it with the
format's render (the very call the server's request path makes), generates until one of the format's stop ids
or the model's eos ids, and feeds the reply to the format's parser: on_event gets its events (reasoning, content,
tool_call, tool_args) as they are decoded, and the parsed turn joins the conversation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mxport.contract.folder import is_export, read_manifest
from mxport.errors import MxportError
from mxport.exporter import families
from mxport.runtime.chat.format import ChatFormat, Event, Reply
from mxport.runtime.chat.harmony import SPECIALS, HarmonyFormat
from mxport.runtime.chat.template import TemplateFormat
from mxport.runtime.generation.generate import GenerationConfig, Generator
from mxport.runtime.generation.tokenizer import Tokenizer


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


def folder_chat_format(generator: Generator, folder: str | Path) -> ChatFormat:
    """The chat format of the folder `generator` was loaded from; MxportError when its family has none (GPT-2)."""
    family = generator.config.family if generator.config is not None else None
    if generator.tokenizer is None:
        raise MxportError(f"{generator.name}: chat needs a tokenizer (tokenizer.json in the exported folder)")
    fmt = chat_format(generator.tokenizer, folder, family.chat_format if family is not None else None)
    if fmt is None:
        raise _no_chat(folder, family)
    return fmt


def require_chat(folder: str | Path) -> None:
    """Refuse, before the model loads, an export whose manifest names a family without a chat format (GPT-2)."""
    if is_export(folder):
        name = read_manifest(folder).family
        family = families.get(name) if name in families.names() else None
        if family is not None and family.chat_format is None:
            raise _no_chat(folder, family)


def _no_chat(folder: str | Path, family) -> MxportError:
    what = f"the {family.name} model family has" if family else "the model (no family record, no harmony tokens) has"
    return MxportError(f"{folder}: {what} no chat format, so `mxport chat` cannot talk to it; continue text with "
                       f"`mxport run {folder} --prompt TEXT`")


class ChatSession:
    """A conversation in one chat format over a Generator (its tokenizer is the format's)."""

    def __init__(self, generator: Generator, fmt: ChatFormat, messages: Sequence[dict] = (), *,
                 tools: Sequence[Any] = (), reasoning: str | None = None) -> None:
        if generator.tokenizer is None:
            raise MxportError(f"{generator.name}: chat needs a tokenizer (tokenizer.json in the exported folder)")
        self.generator, self.format = generator, fmt
        self.messages: list[dict] = list(messages)  # OpenAI-style: the opening system/developer messages first
        self.tools = tuple(tools)  # function tools, given to every render
        self.reasoning = reasoning  # the render's reasoning_effort (harmony: low|medium|high; templates: off|on)
        self.last_prompt_ids: list[int] = []
        self.last_token_ids: list[int] = []  # the reply as generated, stop token included
        self.last_timing = (0.0, 0.0)  # seconds to the first token (prefill), seconds for the whole turn

    def prompt_ids(self, user_text: str) -> list[int]:
        return self._ids([{"role": "user", "content": user_text}])

    def _ids(self, new: list[dict]) -> list[int]:
        return self.format.render([*self.messages, *new], self.tools, None, self.reasoning)

    def send(self, user_text: str, config: GenerationConfig | None = None,
             on_event: Callable[[Event], None] | None = None, **options) -> Reply:
        """One turn: on_event gets the reply's events as they are decoded; returns the parsed reply."""
        return self._turn([{"role": "user", "content": user_text}], config, on_event, **options)

    def send_tool_results(self, results: Sequence[tuple[str, str]], config: GenerationConfig | None = None,
                          on_event: Callable[[Event], None] | None = None, **options) -> Reply:
        """Answer the last reply's tool calls with (function name, result text) pairs and let the model go on."""
        new = [{"role": "tool", "name": name, "content": text} for name, text in results]
        return self._turn(new, config, on_event, **options)

    def _turn(self, new: list[dict], config: GenerationConfig | None, on_event: Callable[[Event], None] | None,
              **options) -> Reply:
        ids = self._ids(new)
        options.setdefault("stop_token_ids", tuple(dict.fromkeys([*self.format.stop_token_ids,
                                                                  *self.generator.eos_token_ids])))
        stops = set(options["stop_token_ids"])
        parser = self.format.parser()
        self.last_prompt_ids, self.last_token_ids = ids, []
        emit = on_event or (lambda ev: None)
        t0 = time.perf_counter()
        first, stop = None, None
        for delta in self.generator.stream(ids, config, **options):
            first = first if first is not None else time.perf_counter() - t0
            self.last_token_ids.append(delta.token_id)
            if delta.token_id in stops:
                stop = delta.token_id
                continue
            for ev in parser.add(delta.token_id):
                emit(ev)
        for ev in parser.finish(stop):
            emit(ev)
        self.last_timing = (first or 0.0, time.perf_counter() - t0)
        reply = parser.reply()
        self.messages += [*new, reply.message]
        return reply
