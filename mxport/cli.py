"""`mxport` command line: a thin layer over the Python API.

Each subcommand's module (mxport/commands/, for some still the library module that owns the feature) exposes:
  register(parser: argparse.ArgumentParser) -> None   adds the subcommand's options
  run(args: argparse.Namespace) -> int                 does the work, returns the exit code
Modules are imported only when their subcommand runs, so `mxport --help` stays fast and torch-free.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import signal
import sys

from mxport import __version__
from mxport.commands.stop import Terminated, stops
from mxport.errors import MxportError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("mxport.commands.demo", "build, export, verify and chat with a tiny built-in gpt-oss (no download)"),
    "synth": ("mxport.commands.synth", "write a synthetic checkpoint of any family's preset (synth --list: what it holds)"),
    "export": ("mxport.commands.export", "export a checkpoint to ONNX"),
    "inspect": ("mxport.commands.inspect", "summarise an exported folder: ops, inputs/outputs, bytes by dtype"),
    "run": ("mxport.commands.run", "run a checkpoint or an exported folder (greedy or sampled)"),
    "chat": ("mxport.commands.chat", "chat with an exported folder in its family's format (harmony, chat template)"),
    "verify": ("mxport.commands.verify", "compare an export against the NumPy reference model"),
    "bench": ("mxport.commands.bench", "benchmark prefill/decode speed, memory and file size"),
    "serve": ("mxport.commands.serve", "an OpenAI-compatible HTTP server over an exported folder"),
    "kernels": ("mxport.commands.kernels", "print the path of mxport's native ONNX Runtime kernel library and its ops"),
}


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad options already; keep that, with the message on stderr."""

    def unrecognized(self, extra: list[str]) -> None:
        """Exit 2 with this (sub)command's usage and the closest option for each misspelt one."""
        known = [s for action in self._actions for s in action.option_strings]
        hints = []
        for arg in extra:
            close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1) if arg.startswith("-") else []
            if close:
                hints.append(f"{arg} (did you mean {close[0]}?)")
        self.error(f"unrecognized arguments: {' '.join(extra)}" + (f"; {', '.join(hints)}" if hints else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mxport", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mxport {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    argv = sys.argv[1:]
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Import a command's module only when that command is asked for (keeps start-up light).
        if name in argv[:1]:
            importlib.import_module(module).register(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args, extra = parser.parse_known_args()
    if extra:  # a misspelt option: the subcommand's usage, not the top-level one
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.choices.get(getattr(args, "command", None), parser).unrecognized(extra)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        with stops():  # SIGTERM cleans up as Ctrl-C does (serve: uvicorn's own handlers while it serves)
            return int(module.run(args) or 0)
    except MxportError as exc:
        print(f"mxport {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
