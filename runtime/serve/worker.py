"""A daemon thread that runs the requests' CPU work off the event loop, one request at a time. The server has
two: one parses and validates bodies, one renders and tokenizes (app.py).

One rendering thread, not a pool: the tokenizer's encode flips a flag on the shared `tokenizers.Tokenizer` for
user content (runtime/generation/tokenizer.py), which two concurrent renders would race on. A daemon thread, not a
ThreadPoolExecutor: the interpreter joins executor threads at exit, so a render stuck in a runaway template would
keep a SIGTERMed server alive.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any


class Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _loop(self) -> None:
        while True:
            loop, future, fn, args = self._jobs.get()
            if future.cancelled():
                continue
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the event loop is gone (shutting down)
                pass

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the worker thread; its result or its exception here."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return await future


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
