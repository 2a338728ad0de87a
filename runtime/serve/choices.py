"""The choices of one request: `n` engine rows sharing the prompt, each with its own random stream, parser and
grammar state, gathered from one queue; their logprobs in OpenAI's shapes.

    row i samples with seed + i (mod 2**63) when the request has a seed: the set of n choices is reproducible, and
    choice 0 equals the n = 1 reply with the same seed
    every event of choice i reaches the route as (i, event) on the request's one asyncio queue (QueueHandler, on
    the engine thread: tokens -> parser events -> stop strings -> the queue; next_item / job_items read it)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from mxport.runtime.chat.format import ReplyParser
from mxport.runtime.generation.sampling import SamplingConfig
from mxport.runtime.generation.stops import StopMatcher
from mxport.runtime.generation.tokenizer import Tokenizer
from mxport.runtime.serve.engine import Engine, Job, QueueFull
from mxport.runtime.serve.protocol import INT64, chat_logprobs, choice_body, completion_logprobs, new_id


def row_sampling(sampling: SamplingConfig, row: int) -> SamplingConfig:
    """The sampling of choice `row`: its own seed (seed + row) when the request has one."""
    return sampling if sampling.seed is None or row == 0 else replace(sampling, seed=(sampling.seed + row) % INT64)


def submit_all(engine: Engine, jobs: list[Job]) -> None:
    """All of the request's rows or none: a full queue cancels the rows already submitted (QueueFull goes on)."""
    for i, job in enumerate(jobs):
        try:
            engine.submit(job)
        except QueueFull:
            for done in jobs[:i]:
                done.cancel()
            raise


class QueueHandler:
    """Engine-thread side of one request: tokens -> parser events -> stop strings -> the request's asyncio queue.
    With `ids` each generated token id is also handed over (a ("token", id) event); with `logprobs` (a TokenText)
    each token's ("logprob", entry) comes before its events. With a `tag` (the choice index of an n-choice
    request sharing one `queue`) events arrive as (tag, event)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, parser: ReplyParser | None, stops: tuple[str, ...],
                 ids: bool = False, queue: asyncio.Queue | None = None, tag: int | None = None,
                 logprobs: TokenText | None = None) -> None:
        self.loop, self.parser, self.ids, self.tag, self.text = loop, parser, ids, tag, logprobs
        self.queue: asyncio.Queue = asyncio.Queue() if queue is None else queue
        self.matcher = StopMatcher(stops)
        self.stopped = False  # a stop string was hit
        self._logprob: tuple | None = None  # the sampled token's, until it turns out not to be a stop token

    def _put(self, item: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item if self.tag is None else (self.tag, item))
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass

    def _events(self, events) -> bool:
        for ev in events:
            if ev.kind == "content":
                text, hit = self.matcher.feed(ev.text)
                if text:
                    self._put(("content", text))
                if hit:
                    self.stopped = True
                    return True
                continue
            if held := self.matcher.flush():
                self._put(("content", held))
            self._put((ev.kind, ev.text, ev.index, ev.name))
        return False

    def logprob(self, token_id: int, logprob: float, top: list[tuple[int, float]]) -> None:
        self._logprob = self.text.entry(token_id, logprob, top) if self.text is not None else None

    def token(self, token_id: int) -> bool:
        if self._logprob is not None:
            self._put(("logprob", self._logprob))
            self._logprob = None
        if self.ids:
            self._put(("token", token_id))
        return self._events(self.parser.add(token_id)) if self.parser is not None else False

    def finish(self, reason: str, completion_tokens: int, stop_token: int | None = None) -> None:
        if not self.stopped and not reason.startswith("error") and self.parser is not None:
            self._events(self.parser.finish(stop_token))
            if held := self.matcher.flush():
                self._put(("content", held))
        self._put(("done", reason, completion_tokens, self.parser is not None and self.parser.tool_called))


async def next_item(http: Any, jobs: list[Job], queue: asyncio.Queue) -> tuple | None:
    """The next (choice, event); None when the client has gone (its jobs are then cancelled)."""
    while True:
        try:
            return await asyncio.wait_for(queue.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await http.is_disconnected():
                for job in jobs:
                    job.cancel()
                return None


async def job_items(http: Any, jobs: list[Job], queue: asyncio.Queue) -> AsyncIterator[tuple]:
    """The events of a one-choice request up to its "done" (or the client's going away); the job ends with them."""
    try:
        while (tagged := await next_item(http, jobs, queue)) is not None:
            yield tagged[1]
            if tagged[1][0] == "done":
                return
    finally:
        for job in jobs:
            job.cancel()


class TokenText:
    """A token id's text and bytes for logprobs (cached); without a tokenizer 'token_id:N' (vLLM's spelling)."""

    def __init__(self, tokenizer: Tokenizer | None, size: int = 65536) -> None:
        self.tokenizer, self.size = tokenizer, size
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        got = self._cache.get(token_id)
        if got is None:
            if self.tokenizer is None:
                text = f"token_id:{token_id}"
                got = (text, text.encode())
            else:
                raw = self.tokenizer.token_bytes(token_id)
                got = (raw.decode("utf-8", errors="replace"), raw)
            if len(self._cache) >= self.size:
                self._cache.clear()
            self._cache[token_id] = got
        return got

    def entry(self, token_id: int, logprob: float, top: list[tuple[int, float]]) -> tuple:
        """(text, bytes, logprob, [(text, bytes, logprob) of the top tokens])."""
        return (*self(token_id), logprob, [(*self(t), lp) for t, lp in top])


def logprobs_body(chat: bool, entries: list[tuple], offset: int = 0) -> dict:
    return chat_logprobs(entries) if chat else completion_logprobs(entries, offset)


@dataclass
class Choice:
    """One choice of a non-streamed reply, gathered from its events."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[tuple] = field(default_factory=list)
    finish: str | None = None
    completion_tokens: int = 0

    def add(self, item: tuple) -> None:
        kind = item[0]
        if kind == "token":
            self.tokens.append(item[1])
        elif kind == "logprob":
            self.logprobs.append(item[1])
        elif kind == "content":
            self.text.append(item[1])
        elif kind == "reasoning":
            self.reasoning.append(item[1])
        elif kind == "tool_call":
            self.calls.append({"id": new_id("call"), "type": "function",
                               "function": {"name": item[3], "arguments": ""}})
        elif kind == "tool_args":
            self.calls[item[2]]["function"]["arguments"] += item[1]

    def body(self, index: int, chat: bool, ids: bool, logprobs: bool) -> dict:
        out = choice_body(index, chat, "".join(self.text), "".join(self.reasoning), self.calls, self.finish or "stop",
                          logprobs_body(chat, self.logprobs) if logprobs else None)
        if ids:
            out["token_ids"] = self.tokens
        return out
