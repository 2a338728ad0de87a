"""`mxport chat OUT`: chat with an exported folder in its family's chat format (interactive on a terminal, one-shot
from stdin): harmony for gpt-oss (below), the checkpoint's jinja chat template for Qwen3 (runtime/chat/template.py:
`--reasoning off|on` switches its <think> block). A family without a chat format (GPT-2) is refused.

ChatSession keeps the history: each turn renders system + developer (instructions and function tools) + earlier
turns (their analysis dropped, their `<|return|>` written as `<|end|>`) + the user message + `<|start|>assistant`,
generates until `<|return|>` or `<|call|>` (or an eos id), and streams the reply's channels as they are decoded.
A reply that ends in `<|call|>` is a tool call: `send_tool_result(name, text)` answers it and continues the turn.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from functools import partial

from mxport.errors import MxportError
from mxport.runtime.generation.generate import GenerationConfig, Generator
from mxport.runtime.chat.harmony import (REASONING_EFFORTS, Harmony, Message, Reply, StreamParser, SystemContent, Tool,
                                    as_tools, load_tools)


class ChatSession:
    """A harmony conversation over a Generator (its tokenizer must have the harmony special tokens)."""

    def __init__(self, generator: Generator, system: SystemContent | None = None, developer: str | None = None,
                 tools: Sequence[Tool | dict] = ()) -> None:
        if generator.tokenizer is None:
            raise MxportError(f"{generator.name}: chat needs a tokenizer (tokenizer.json in the exported folder)")
        self.generator = generator
        self.harmony = Harmony(generator.tokenizer)
        self.system = system or SystemContent()
        self.developer = developer
        self.tools = as_tools(tools)  # function tools, rendered in the developer message
        self.messages: list[Message] = []
        self.last_prompt_ids: list[int] = []
        self.last_token_ids: list[int] = []  # the reply as generated, stop token included
        self.last_timing = (0.0, 0.0)  # seconds to the first token (prefill), seconds for the whole turn

    @property
    def last_token_count(self) -> int:
        return len(self.last_token_ids)

    def prompt_ids(self, user_text: str) -> list[int]:
        return self._ids([Message("user", user_text)])

    def _ids(self, new: list[Message]) -> list[int]:
        return self.harmony.render_ids([*self.messages, *new], self.system, self.developer, self.tools)

    @property
    def pending_calls(self) -> list[Message]:
        """The tool calls of the last reply when it stopped on <|call|> (answer them with send_tool_result)."""
        last = self.messages[-1] if self.messages else None
        return [last] if last is not None and last.role == "assistant" and last.recipient else []

    def send(self, user_text: str, config: GenerationConfig | None = None,
             on_delta: Callable[[str | None, str], None] | None = None, **options) -> Reply:
        """One turn: returns the parsed reply; on_delta(channel, text) gets content as it is decoded (except the
        arguments of tool calls, which come whole in reply.tool_calls)."""
        return self._turn([Message("user", user_text)], config, on_delta, **options)

    def send_tool_result(self, name: str, content: str, config: GenerationConfig | None = None,
                         on_delta: Callable[[str | None, str], None] | None = None, **options) -> Reply:
        """Answer a tool call ('functions.get_weather' or 'get_weather') and let the model continue."""
        author = name if "." in name else f"functions.{name}"
        return self._turn([Message("tool", content, "commentary", author=author)], config, on_delta, **options)

    def _turn(self, new: list[Message], config: GenerationConfig | None,
              on_delta: Callable[[str | None, str], None] | None, **options) -> Reply:
        ids = self._ids(new)
        stops = tuple(dict.fromkeys([*self.harmony.stop_token_ids, *self.generator.eos_token_ids]))
        options.setdefault("stop_token_ids", stops)
        parser = StreamParser(self.harmony)
        self.last_prompt_ids, self.last_token_ids = ids, []
        t0 = time.perf_counter()
        first = None
        for delta in self.generator.stream(ids, config, **options):
            first = first if first is not None else time.perf_counter() - t0
            self.last_token_ids.append(delta.token_id)
            to_tool = parser.recipient is not None  # a call's arguments are not streamed: see Reply.tool_calls
            channel, text = parser.add(delta.token_id)
            if text and on_delta is not None and not to_tool:
                on_delta(channel, text)
        self.last_timing = (first or 0.0, time.perf_counter() - t0)
        reply = parser.reply()
        self.messages.extend(new)
        self.messages.extend(self.harmony.to_history(reply))
        return reply


# ---- CLI ----------------------------------------------------------------------------------------------------------

def add_generation_options(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    """Options shared by `run` and `chat`."""
    g = parser.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to generate at most")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = all)")
    g.add_argument("--seed", type=int, default=None, help="seed of the sampler (same seed, same text)")
    g.add_argument("--provider", default="cpu", help="onnxruntime provider: cpu, cuda, auto or a full name")
    g.add_argument("--backend", default="ort", choices=("ort", "numpy"),
                   help="ort = ONNX Runtime; numpy = onnx.reference over the graph / the NumPy reference model")
    g.add_argument("--max-context", type=int, default=None, help="context limit (default max_position_embeddings)")


def generation_config(args: argparse.Namespace, **extra) -> GenerationConfig:
    from mxport.runtime.generation.sampling import SamplingConfig

    if args.max_context is not None and args.max_context < 1:
        raise MxportError(f"--max-context must be >= 1, found {args.max_context}")
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)
    return GenerationConfig(max_new_tokens=args.max_new_tokens, sampling=sampling, **extra)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="exported folder (model.onnx, mxport.json, tokenizer.json)")
    parser.add_argument("--reasoning", default=None, choices=(*REASONING_EFFORTS, "off", "on"),
                        help="harmony (gpt-oss): reasoning effort low|medium|high (default medium); chat-template "
                             "models (Qwen3): thinking off|on (default: the template's, on for Qwen3)")
    parser.add_argument("--show-analysis", action="store_true",
                        help="print the analysis channel (harmony) / the <think> reasoning (chat templates) too")
    parser.add_argument("--system", default=None, help="harmony: model identity line of the system message; "
                                                          "chat-template models: the system message")
    parser.add_argument("--developer", default=None, help="developer instructions (the usual 'system prompt')")
    parser.add_argument("--date", default=None, help="current date in the system message (default today)")
    parser.add_argument("--tools", default=None, metavar="FILE.json",
                        help="function tools: a JSON list of {name, description, parameters} (or OpenAI's "
                             "{type: function, function: {...}}) rendered into the developer message")
    add_generation_options(parser)


def require_chat_format(folder: Path) -> None:
    """MxportError when the folder's model family has no chat format (GPT-2: use `mxport run --prompt`)."""
    from mxport.runtime.generation.generate import _folder_config, folder_kind

    if not folder.is_dir():
        return  # Generator.from_folder names the problem
    config, _, _ = _folder_config(folder, folder_kind(folder))
    if config is not None and config.family.chat_format is None:
        raise MxportError(f"{folder}: the {config.family.name} model family has no chat format, so `mxport chat` "
                          f"cannot talk to it; continue text with `mxport run {folder} --prompt TEXT`")


def run(args: argparse.Namespace) -> int:
    config = generation_config(args)  # checks the options before the model loads
    require_chat_format(Path(args.folder))
    generator = Generator.from_folder(args.folder, backend=args.backend, provider=args.provider,
                                      max_context=args.max_context)
    family = generator.config.family if generator.config is not None else None
    kind = family.chat_format if family is not None else "harmony"
    if kind not in CHAT_RUNNERS:
        raise MxportError(f"{args.folder}: the {family.name if family else 'model'} family has no chat format; "
                          "use `mxport run --prompt` for plain text generation")
    return CHAT_RUNNERS[kind](generator, args, config)


def run_harmony(generator: Generator, args: argparse.Namespace, config: GenerationConfig) -> int:
    if args.reasoning not in (None, *REASONING_EFFORTS):
        raise MxportError(f"--reasoning {args.reasoning}: harmony models take one of {', '.join(REASONING_EFFORTS)}")
    tools = load_tools(args.tools) if args.tools else ()
    system = SystemContent(reasoning=args.reasoning or "medium", current_date=args.date,
                           **({"identity": args.system} if args.system else {}))
    chat = ChatSession(generator, system, args.developer, tools)

    def turn(text: str, interactive: bool) -> bool:
        reply = _turn(chat, partial(chat.send, text), config, args.show_analysis)
        # interactive: ask for each call's result and let the model go on (one-shot: the call is printed, and ends it)
        while interactive and reply.stop == "call" and chat.pending_calls:
            (call,) = chat.pending_calls
            result = _read_line(f"[tool result] {call.recipient}> ")
            if result is None:
                return False
            reply = _turn(chat, partial(chat.send_tool_result, call.recipient, result), config, args.show_analysis)
        return True

    return _converse(generator, turn)


def run_template(generator: Generator, args: argparse.Namespace, config: GenerationConfig) -> int:
    from mxport.runtime.chat.template import ChatTemplate, TemplateChatSession, enable_thinking

    if args.reasoning in REASONING_EFFORTS:
        raise MxportError(f"--reasoning {args.reasoning}: this model's thinking is switched by --reasoning off|on")
    for option in ("developer", "date", "tools"):
        if getattr(args, option):
            raise MxportError(f"--{option} is a harmony option; chat-template models take --system")
    chat = TemplateChatSession(generator, ChatTemplate.from_folder(args.folder), args.system,
                               enable_thinking(args.reasoning, "--reasoning"))

    def turn(text: str) -> None:
        state = {"kind": None}

        def on_delta(kind: str, delta: str) -> None:
            if kind == "reasoning" and not args.show_analysis:
                return
            if kind != state["kind"] and args.show_analysis:
                sys.stdout.write(f"\n[{kind}] ")
                state["kind"] = kind
            sys.stdout.write(delta)
            sys.stdout.flush()

        reply = chat.send(text, config, on_delta)
        sys.stdout.write("\n")
        for name, arguments in reply.tool_calls:
            print(f"[tool call] {name} {arguments}")
        if not reply.content and not reply.tool_calls:
            raw = generator.tokenizer.decode(chat.last_token_ids)
            print(f"[no answer text in the reply; raw reply: {raw!r}]", file=sys.stderr)

    return _converse(generator, lambda text, interactive: turn(text) or True)


CHAT_RUNNERS = {"harmony": run_harmony, "template": run_template}  # by the family's chat_format


def _read_line(prompt: str) -> str | None:
    """One line typed at `prompt`, or None at end of input."""
    try:
        return input(prompt)
    except EOFError:
        print()
        return None


def _converse(generator: Generator, turn: Callable[[str, bool], bool]) -> int:
    """One turn from stdin when it is not a terminal; else turns until an empty line or end of input.
    `turn(text, interactive)` returns False to end the conversation."""
    if not sys.stdin.isatty():
        text = sys.stdin.read().strip()
        if not text:
            raise MxportError("chat: stdin is empty (pipe a message in, or run on a terminal)")
        turn(text, False)
        return 0
    print(f"mxport chat — {generator.name}; empty line or Ctrl-D to quit", file=sys.stderr)
    while True:
        text = _read_line("> ")
        if not text or not text.strip() or not turn(text.strip(), True):
            return 0


def _turn(chat: ChatSession, send: Callable[..., Reply], config: GenerationConfig, show_analysis: bool) -> Reply:
    """Run one generation (send(config=, on_delta=)), stream its text, print its tool calls."""
    state = {"channel": None}

    def on_delta(channel: str | None, delta: str) -> None:
        if channel == "analysis" and not show_analysis:
            return
        if channel != state["channel"] and show_analysis:
            sys.stdout.write(f"\n[{channel or 'no channel'}] ")
            state["channel"] = channel
        sys.stdout.write(delta)
        sys.stdout.flush()

    reply = send(config=config, on_delta=on_delta)
    sys.stdout.write("\n")
    for call in reply.tool_calls:
        print(format_call(call))
    if not reply.final and not reply.tool_calls:  # e.g. a model with random weights ignores the format
        raw = chat.generator.tokenizer.decode(chat.last_token_ids)
        print(f"[no final-channel text in the reply (stop: {reply.stop}); raw reply: {raw!r}]", file=sys.stderr)
    return reply


def format_call(call: Message) -> str:
    """'[tool call] functions.get_weather {"city": "Paris"}' (the arguments as the model wrote them)."""
    return f"[tool call] {call.recipient} {call.content}"
