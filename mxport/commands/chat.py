"""`mxport chat OUT`: chat with an exported folder in its family's chat format (interactive on a terminal, one-shot
from stdin). Harmony for gpt-oss; the checkpoint's jinja chat template for Qwen3 (`--reasoning off|on` switches
its <think> block). A family without a chat format (GPT-2) is refused.

Each turn goes through ChatSession (runtime/chat/session.py) and the format's render and parser, the same objects
`mxport serve` uses; this module maps the options onto them and prints the events: content as it streams, the
reasoning too with --show-analysis, tool calls whole at the end. On a terminal, a turn that ends in tool calls asks
for each call's result and lets the model go on; from stdin the calls are printed and end the turn.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from mxport.commands.options import add_generation_options, generation_config
from mxport.errors import MxportError
from mxport.runtime.chat.format import Event, Reply
from mxport.runtime.chat.harmony import IDENTITY, REASONING_EFFORTS, HarmonyFormat
from mxport.runtime.chat.harmony_tools import load_tools
from mxport.runtime.chat.session import ChatSession, folder_chat_format, require_chat
from mxport.runtime.generation.generate import GenerationConfig, Generator


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


def run(args: argparse.Namespace) -> int:
    config = generation_config(args)  # checks the options before the model loads
    require_chat(args.folder)  # and the family (GPT-2 has no chat format)
    generator = Generator.from_folder(args.folder, backend=args.backend, provider=args.provider,
                                      max_context=args.max_context)
    chat = session(generator, args)

    def turn(text: str, interactive: bool) -> bool:
        reply = _turn(chat, lambda **kw: chat.send(text, **kw), config, args.show_analysis)
        # interactive: ask for each call's result and let the model go on (one-shot: the calls are printed, and end it)
        while interactive and reply.tool_called:
            results = []
            for call in reply.tool_calls:
                result = _read_line(f"[tool result] {call.name}> ")
                if result is None:
                    return False
                results.append((call.name, result))
            reply = _turn(chat, lambda **kw: chat.send_tool_results(results, **kw), config, args.show_analysis)
        return True

    return _converse(generator, turn)


def session(generator: Generator, args: argparse.Namespace) -> ChatSession:
    """The options mapped onto the folder's chat format: harmony takes --system as its identity line, --developer,
    --date, --tools and a reasoning effort; a chat template takes --system as its system message and off|on."""
    fmt = folder_chat_format(generator, Path(args.folder))
    if isinstance(fmt, HarmonyFormat):
        if args.reasoning not in (None, *REASONING_EFFORTS):
            raise MxportError(f"--reasoning {args.reasoning}: harmony models take one of "
                              f"{', '.join(REASONING_EFFORTS)}")
        fmt = HarmonyFormat(generator.tokenizer, identity=args.system or IDENTITY, current_date=args.date)
        opening = [{"role": "developer", "content": args.developer}] if args.developer else []
        tools = load_tools(args.tools) if args.tools else ()
        return ChatSession(generator, fmt, opening, tools=tools, reasoning=args.reasoning or "medium")
    if args.reasoning in REASONING_EFFORTS:
        raise MxportError(f"--reasoning {args.reasoning}: this model's thinking is switched by --reasoning off|on")
    for option in ("developer", "date", "tools"):
        if getattr(args, option):
            raise MxportError(f"--{option} is a harmony option; chat-template models take --system")
    opening = [{"role": "system", "content": args.system}] if args.system else []
    return ChatSession(generator, fmt, opening, reasoning=args.reasoning)


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


def _turn(chat: ChatSession, send: Callable[..., Reply], config: GenerationConfig, show_reasoning: bool) -> Reply:
    """Run one generation (send(config=, on_event=)), stream its text, print its tool calls."""
    state = {"kind": None}

    def on_event(ev: Event) -> None:
        if ev.kind not in ("content", "reasoning") or (ev.kind == "reasoning" and not show_reasoning):
            return  # tool calls are printed whole below
        if ev.kind != state["kind"] and show_reasoning:
            sys.stdout.write(f"\n[{ev.kind}] ")
            state["kind"] = ev.kind
        sys.stdout.write(ev.text)
        sys.stdout.flush()

    reply = send(config=config, on_event=on_event)
    sys.stdout.write("\n")
    for call in reply.tool_calls:
        print(f"[tool call] {call.name} {call.arguments}")  # the arguments as the model wrote them
    if not reply.content and not reply.tool_calls:  # e.g. a model with random weights ignores the format
        raw = chat.generator.tokenizer.decode(chat.last_token_ids)
        print(f"[no answer text in the reply; raw reply: {raw!r}]", file=sys.stderr)
    return reply

