"""The progress callback of every slow library function (synth, export, verify, the NumPy reference, bench).

    progress(stage: str, done: int, total: int, unit: str = "it") -> None

`stage` names what runs ("write tensors", "layers", "measure"), `done` of `total` is how far it got (a new
stage starts a new bar); unit "B" counts bytes. Libraries call it and never print: the command that runs them
draws it (mxport/commands/progress.py: a tqdm bar on a terminal, nothing when piped or with --quiet). None (or
False) is no callback: `given` says so and `report` then does nothing.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int, unit: str = "it") -> None: ...


def given(progress: Progress | None | bool) -> bool:
    """Whether `progress` is a callback (None and False are not; any callable is, even one that is falsy)."""
    return progress is not None and progress is not False


def report(progress: Progress | None | bool, stage: str, done: int, total: int, unit: str = "it") -> None:
    """progress(stage, done, total, unit) when a callback was given."""
    if given(progress):
        progress(stage, done, total, unit)
