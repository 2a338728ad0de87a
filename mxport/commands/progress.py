"""The commands' progress bars: tqdm on stderr, on a terminal only, silenced by --quiet; never in piped output.

    add_quiet_option(parser)                          # -q/--quiet (export also keeps its old --no-progress)
    with Bars(args.quiet) as bars:                    # bars(stage, done, total, unit): mxport.contract.progress
        export(..., progress=bars)                    # one bar per stage, replaced when the stage changes
        bars.write("a line")                          # a message on stderr that does not break the bar

A bar shows only when stderr is a terminal (an explicit isatty check, and tqdm's disable=None besides), so a
pipe, a log file or a JSON report gets nothing of it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO

from tqdm import tqdm

from mxport.commands.stop import raise_if_stopped


def add_quiet_option(parser: argparse.ArgumentParser, *aliases: str) -> None:
    parser.add_argument("-q", "--quiet", *aliases, dest="quiet", action="store_true",
                        help="no progress bars (they show on a terminal only, on stderr)")


def shown(quiet: bool, file: IO[str] | None = None) -> bool:
    """Whether bars show: not --quiet, and the stream is a terminal."""
    file = sys.stderr if file is None else file
    try:
        return not quiet and file.isatty()
    except (AttributeError, ValueError):  # a stream without isatty, or a closed one
        return False


def _width(file: IO[str]) -> dict:
    """tqdm's size options: follow the terminal, or 80 x 24 on one that reports no size (a fresh pty says 0 x 0,
    where tqdm would draw nothing)."""
    try:
        size = os.get_terminal_size(file.fileno())
    except (AttributeError, OSError, ValueError):
        size = os.terminal_size((0, 0))
    return {"dynamic_ncols": True} if size.columns and size.lines else {"ncols": 80, "nrows": 24}


class Bars:
    """A progress callback (mxport.contract.progress) drawing one tqdm bar per stage on stderr."""

    def __init__(self, quiet: bool = False, file: IO[str] | None = None, leave: bool = False) -> None:
        self.file = sys.stderr if file is None else file
        self.enabled = shown(quiet, self.file)
        self.leave = leave
        self.bar: tqdm | None = None
        self.stage: str | None = None

    def __call__(self, stage: str, done: int, total: int, unit: str = "it") -> None:
        raise_if_stopped()  # a stop whose first raise a library swallowed (mxport/commands/stop.py)
        if not self.enabled:
            return
        if self.bar is None or stage != self.stage or done < self.bar.n:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, unit=unit, unit_scale=unit == "B", file=self.file,
                            disable=None, leave=self.leave, **_width(self.file))
        if total != self.bar.total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def write(self, message: str) -> None:
        """A line on stderr, above the bar when one shows."""
        if self.bar is not None:
            tqdm.write(message, file=self.file)
        else:
            print(message, file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
