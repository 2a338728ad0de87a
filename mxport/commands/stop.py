"""How a command stops on Ctrl-C or SIGTERM: the same clean-up for both, and a stop that is never lost.

    with stops():                 # cli.main around the command: SIGINT raises KeyboardInterrupt, SIGTERM Terminated
        ...                       # every `except BaseException` clean-up (temporary folders, files) runs as usual
    raise_if_stopped()            # a cancellation point: Bars calls it at every progress report

CPython runs a signal's handler at the next bytecode of the main thread, and the exception it raises there can be
swallowed: a SIGTERM that lands while a C extension module is being imported (numpy.random, imported lazily by the
first synthetic tensor) vanished inside the import machinery, and the command ran to the end and exited 0. So the
handler also records the stop, and the next progress report raises it again.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_stopped: type[KeyboardInterrupt] | None = None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so every `except BaseException` clean-up runs exactly as for Ctrl-C."""


def _stop(signum: int, frame: object) -> None:
    global _stopped
    _stopped = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    raise _stopped()


def raise_if_stopped() -> None:
    """Raise the stop a signal asked for, again (the first raise may have been swallowed); nothing when none came."""
    if _stopped is not None:
        raise _stopped()


@contextlib.contextmanager
def stops() -> Iterator[None]:
    """SIGINT and SIGTERM stop the block (main thread only; elsewhere nothing changes). The previous handlers come
    back after it, so a caller that runs commands in-process (the tests) keeps its own."""
    global _stopped
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _stopped = None
    for s in before:
        signal.signal(s, _stop)
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        _stopped = None
