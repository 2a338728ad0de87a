"""OpenAI's Responses API, the output side: the events of one engine job -> output items, the response object and
the Responses event stream (the request side: responses.py).

    b = ResponseBuilder(call, model, n_prompt)
    b.start()        -> [response.created, response.in_progress]
    b.feed(item)     -> the events one handler item (choices.QueueHandler: ("token", id), ("reasoning" | "content",
                        text), ("tool_call", _, index, name), ("tool_args", text, index), ("done", reason, n, _))
                        makes; b.body() is the response object so far
    await collect(items, b, store) / stream(items, b, store)     the JSON body / the SSE text of the whole job

Each output item is opened when its first event arrives and closed when another kind begins or the job ends:

    reasoning      output_item.added, content_part.added (reasoning_text), reasoning_text.delta..., reasoning_text.done,
                   content_part.done, output_item.done
    message        output_item.added, content_part.added (output_text), output_text.delta..., output_text.done,
                   content_part.done, output_item.done
    function_call  output_item.added, function_call_arguments.delta..., function_call_arguments.done, output_item.done

framed by response.created, response.in_progress ... response.completed (or response.incomplete when
max_output_tokens cut the reply, response.failed when generation failed); every event has `sequence_number`.
Usage counts every generated token (a stop token included) as output; reasoning_tokens are those up to the last
token of each reasoning item's text (its channel header included).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from mxport.runtime.serve.protocol import ApiError
from mxport.runtime.serve.responses import ResponsesCall, canonical, entry_size
from mxport.runtime.serve.store import ResponseStore

KIND = {"reasoning": "reasoning", "content": "message", "tool_call": "function_call"}


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponseBuilder:
    def __init__(self, call: ResponsesCall, model: str, n_prompt: int) -> None:
        self.call, self.model, self.n_prompt = call, model, n_prompt
        self.id, self.created = item_id("resp"), int(time.time())
        self.output: list[dict] = []
        self.open: dict | None = None  # the output item being written
        self.status, self.error, self.incomplete = "in_progress", None, None
        self.n_output = 0
        self.reasoning_tokens, self._unplaced = 0, 0  # tokens not yet followed by text
        self.seq = 0

    # ---- the response object --------------------------------------------------------------------------------
    def body(self) -> dict[str, Any]:
        done = self.status != "in_progress"
        usage = {"input_tokens": self.n_prompt, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": self.n_output, "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
                 "total_tokens": self.n_prompt + self.n_output} if done else None
        return {"id": self.id, "object": "response", "created_at": self.created, "status": self.status,
                "error": self.error, "incomplete_details": self.incomplete, "model": self.model,
                "output": [dict(i) for i in self.output] if done else [], "previous_response_id": self.call.previous,
                "store": self.call.store, "text": {"format": {"type": "text"}}, "truncation": "disabled",
                "background": False, "usage": usage, **self.call.echo}

    def _event(self, kind: str, **fields) -> dict:
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq - 1, **fields}

    def start(self) -> list[dict]:
        return [self._event("response.created", response=self.body()),
                self._event("response.in_progress", response=self.body())]

    # ---- items ----------------------------------------------------------------------------------------------
    def _where(self) -> dict:
        return {"item_id": self.open["id"], "output_index": len(self.output) - 1}

    def _open(self, kind: str, name: str | None = None) -> list[dict]:
        out = self._close("completed")
        if kind == "function_call":
            item = {"id": item_id("fc"), "type": kind, "call_id": item_id("call"), "name": name or "",
                    "arguments": "", "status": "in_progress"}
        elif kind == "reasoning":
            item = {"id": item_id("rs"), "type": kind, "summary": [], "content": [], "status": "in_progress"}
        else:
            item = {"id": item_id("msg"), "type": kind, "role": "assistant", "content": [], "status": "in_progress"}
        self.output.append(item)
        self.open = item
        out.append(self._event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item)))
        if kind != "function_call":
            part = self._part("")
            item["content"] = [part]
            out.append(self._event("response.content_part.added", content_index=0, part=dict(part), **self._where()))
        return out

    def _part(self, text: str) -> dict:
        if self.open["type"] == "reasoning":
            return {"type": "reasoning_text", "text": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _close(self, status: str) -> list[dict]:
        item, out = self.open, []
        if item is None:
            return out
        where = self._where()
        if item["type"] == "function_call":
            out.append(self._event("response.function_call_arguments.done", arguments=item["arguments"],
                                   name=item["name"], **where))
        else:
            text = item["content"][0]["text"]
            if item["type"] == "reasoning":
                out.append(self._event("response.reasoning_text.done", content_index=0, text=text, **where))
            else:
                out.append(self._event("response.output_text.done", content_index=0, text=text, logprobs=[],
                                       **where))
            out.append(self._event("response.content_part.done", content_index=0, part=dict(item["content"][0]),
                                   **where))
        item["status"] = status
        out.append(self._event("response.output_item.done", output_index=where["output_index"], item=dict(item)))
        self.open = None
        return out

    def feed(self, event: tuple) -> list[dict]:
        kind = event[0]
        if kind == "token":
            self._unplaced += 1
            return []
        if kind == "done":
            return self._done(*event[1:3])
        if kind == "reasoning":
            self.reasoning_tokens += self._unplaced
        self._unplaced = 0
        out: list[dict] = []
        if kind == "tool_call":
            return self._open("function_call", event[3])
        if kind == "tool_args":
            if self.open is None or self.open["type"] != "function_call":
                return out
            self.open["arguments"] += event[1]
            return [self._event("response.function_call_arguments.delta", delta=event[1], **self._where())]
        if self.open is None or self.open["type"] != KIND[kind]:
            out += self._open(KIND[kind])
        part = self.open["content"][0]
        part["text"] += event[1]
        if kind == "reasoning":
            return out + [self._event("response.reasoning_text.delta", content_index=0, delta=event[1],
                                      **self._where())]
        return out + [self._event("response.output_text.delta", content_index=0, delta=event[1], logprobs=[],
                                  **self._where())]

    def _done(self, reason: str, n_output: int) -> list[dict]:
        self.n_output = n_output
        if reason.startswith("error"):
            self.status, self.error = "failed", {"code": "server_error",
                                                 "message": f"generation failed: {reason[6:].strip()}"}
            out = self._close("incomplete")
            return out + [self._event("response.failed", response=self.body())]
        length = reason in ("length", "cancelled")
        out = self._close("incomplete" if length else "completed")
        self.status = "incomplete" if length else "completed"
        if length:
            self.incomplete = {"reason": "max_output_tokens"}
        return out + [self._event(f"response.{self.status}", response=self.body())]

    def save(self, store: ResponseStore) -> None:
        """Keep this response's conversation for previous_response_id (unless store=false or it failed)."""
        if self.call.store and self.status in ("completed", "incomplete"):
            items = [*self.call.items, *(canonical(i, "output") for i in self.output)]
            store.put(self.id, {"model": self.model, "items": items}, entry_size(items))


async def collect(items: AsyncGenerator[tuple, None], b: ResponseBuilder, store: ResponseStore) -> dict | None:
    """The response object once the job ends (None: the client went away); a failed generation is a 500."""
    async with aclosing(items):
        async for item in items:
            b.feed(item)
            if item[0] == "done":
                if b.status == "failed":
                    raise ApiError(500, b.error["message"], code="generation_failed")
                b.save(store)
                return b.body()
    return None


async def stream(items: AsyncGenerator[tuple, None], b: ResponseBuilder,
                 store: ResponseStore) -> AsyncIterator[str]:
    """Server-sent events `event: TYPE\\ndata: {...}\\n\\n`; the terminal event ends the stream (no [DONE])."""
    async with aclosing(items):  # a client gone mid-stream: the job is cancelled at once
        for event in b.start():
            yield sse(event)
        async for item in items:
            for event in b.feed(item):
                yield sse(event)
            if item[0] == "done":
                b.save(store)


def sse(event: dict) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"
