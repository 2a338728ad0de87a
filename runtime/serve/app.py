"""The HTTP side: FastAPI routes in OpenAI's shapes over the engine (engine.py) and the model's chat format (the one
`mxport chat` uses: runtime/chat/format.py; `prepare` renders a request with it).

    GET  /health                503 while the models load (or one failed to), then 200
    GET  /metrics               Prometheus text (metrics.py)
    GET  /v1/models             the models this server serves (models.py; ids: folder names or --model-name)
    POST /v1/chat/completions   messages (+ tools, reasoning_effort) -> the chat format's prompt ids
    POST /v1/completions        prompt text or token ids, plain text out
    POST /v1/responses          OpenAI's Responses API: input items -> the same chat path (responses.py,
                                responses_output.py); previous_response_id reads the bounded store (store.py)

A POST's head has passed the Guard (guard.py: Host, API key, Content-Type, declared length); its body is read
up to --max-body-mb (413 beyond), then parsed and validated on one worker thread and rendered and tokenized on
another (worker.py), never on the event loop, so /health, every stream and token-id requests keep answering
while a big request is handled. Each request becomes one engine Job. Its handler runs on the engine thread: it
parses each token (reasoning, content, tool calls), applies the stop strings to the content and hands events to
the request's asyncio queue (loop.call_soon_threadsafe). The route either collects them into one response or
streams them as SSE `data: {chunk}\\n\\n` ... `data: [DONE]\\n\\n`. A client that goes away cancels its job: the
engine drops the row at its next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from mxport.errors import MxportError
from mxport.runtime.chat.format import FormatError, ReplyParser, TextParser
from mxport.runtime.generation.constrain import ConstraintError
from mxport.runtime.serve.choices import (Choice, QueueHandler, TokenText, job_items, logprobs_body, next_item,
                                          row_sampling, submit_all)
from mxport.runtime.serve.engine import Job, QueueFull
from mxport.runtime.serve.guard import CatchAll, Guard
from mxport.runtime.serve.metrics import Metrics, RequestCounter
from mxport.runtime.serve.limits import ServeLimits, min_tokens, parse_body, too_large
from mxport.runtime.serve.models import Served, grammars, load_folder, load_folders  # noqa: F401 - the loaders
from mxport.runtime.serve.protocol import (MAX_N_TOKENS, ApiError, Request, bad, chunk, completion_body, new_id,
                                           parse_request, shorten, usage)
from mxport.runtime.serve import responses_output
from mxport.runtime.serve.responses import ResponsesCall, parse_responses
from mxport.runtime.serve.store import ResponseStore
from mxport.runtime.serve.worker import Worker

log = logging.getLogger("mxport.serve")


def create_app(load: Callable[[], Served | list[Served]], *, default_max_tokens: int = 4096,
               limits: ServeLimits = ServeLimits(), api_key: str | None = None,
               allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The app; `load()` runs in a thread at startup (/health answers 503 until it returns) and gives the model, or
    the models a request's `model` picks from (the first is the one /health reports at its top level). `api_key`:
    requests need `Authorization: Bearer KEY`; `allowed_hosts`: the Host names answered (None: any; guard.py)."""
    state: dict[str, Any] = {"served": None, "error": None, "models": {},  # served: the first (or only) model
                             "store": ResponseStore(limits.max_stored_responses, int(limits.max_store_mb * 1e6))}
    parsing, rendering = Worker("mxport-parse"), Worker("mxport-render")
    metrics = Metrics(lambda: list(state["models"].values()))

    def loader() -> None:
        try:
            got = load()  # one Served or a list of them (models.load_folders)
            for s in got if isinstance(got, list) else [got]:
                s.engine.observe = metrics.observer(s.name)
                state["models"][s.name] = s
                log.info("model %s loaded (memory MB: %s)", s.name, s.memory_mb)
            state["served"] = next(iter(state["models"].values()))
        except Exception as exc:  # reported by /health and every route
            state["error"] = f"{type(exc).__name__}: {exc}"
            log.error("loading the model failed: %s", state["error"])

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=loader, name="mxport-load", daemon=True).start()
        yield
        for s in state["models"].values():
            s.engine.stop()

    app = FastAPI(title="mxport", lifespan=lifespan)
    app.state.mxport = state
    app.add_middleware(Guard, limits=limits, api_key=api_key, hosts=allowed_hosts)
    app.add_middleware(CatchAll)
    app.add_middleware(RequestCounter, metrics=metrics, routes=lambda: [r.path for r in app.routes])  # outermost

    def served(model: str | None = None) -> Served:
        """The first model, or the one named `model` (404 model_not_found for an id not served)."""
        if state["served"] is None:
            why = f"the model failed to load: {state['error']}" if state["error"] else "the model is still loading"
            raise ApiError(503, why, code="model_not_ready")
        if model is None or model in state["models"]:
            return state["models"].get(model, state["served"])
        raise ApiError(404, f"The model {shorten(model)} does not exist; this server serves "
                       f"{', '.join(repr(n) for n in state['models'])}", "model", "model_not_found")

    @app.exception_handler(ApiError)
    async def api_error(_: HttpRequest, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(http: HttpRequest, exc: HTTPException) -> JSONResponse:
        """Unknown routes (404) and wrong methods (405) in OpenAI's shape."""
        where = f"{http.method} {http.url.path[:200]}"
        message = {404: f"Invalid URL ({where}): no such route", 405: f"Method not allowed ({where}); allowed: "
                   f"{(exc.headers or {}).get('Allow', '?')}"}.get(exc.status_code, f"{exc.detail} ({where})")
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(ApiError(exc.status_code, message, None, code).body(), status_code=exc.status_code,
                            headers=exc.headers)

    @app.get("/health")
    async def health() -> JSONResponse:
        s = state["served"]
        if s is None:
            status = "error" if state["error"] else "loading"
            return JSONResponse({"status": status, "error": state["error"]}, status_code=503)
        every = {m.name: {**m.engine.stats(), "memory_mb": m.memory_mb} for m in state["models"].values()}
        return JSONResponse({"status": "ok", "model": s.name, **every[s.name],
                             **({"models": every} if len(every) > 1 else {})})

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        served()
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                          "owned_by": "mxport"} for name in state["models"]]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        return await respond(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        return await respond(request, chat=False)

    async def respond(http: HttpRequest, chat: bool):
        served()  # 503 before the body is read while loading
        raw = await read_body(http, limits)
        s, req = await parsing.run(parse, raw, chat)
        work = rendering if chat or isinstance(req.prompt, str) else parsing  # token ids need no tokenizer
        prompt, parsers, stop_ids, max_tokens, constraints = await work.run(render, s, req, chat)
        ids = not chat and (req.return_token_ids or s.tokenizer is None)
        jobs, queue = submit(s, req, prompt, parsers, stop_ids, max_tokens, ids, constraints)
        meta = (new_id("chatcmpl" if chat else "cmpl"), s.name, len(prompt))
        if req.stream:
            return StreamingResponse(stream(http, jobs, queue, req, chat, meta), media_type="text/event-stream")
        return await collect(http, jobs, queue, req, chat, meta, ids)

    @app.post("/v1/responses")
    async def responses(http: HttpRequest):
        served()  # 503 before the body is read while loading
        store = state["store"]
        s, call = await parsing.run(parse_call, await read_body(http, limits))
        prompt, parsers, stop_ids, max_tokens, constraints = await rendering.run(call.renamed, render, s, call.req,
                                                                                  True)
        jobs, queue = submit(s, call.req, prompt, parsers, stop_ids, max_tokens, True, constraints)
        builder = responses_output.ResponseBuilder(call, s.name, len(prompt))
        if call.req.stream:
            return StreamingResponse(responses_output.stream(job_items(http, jobs, queue), builder, store),
                                     media_type="text/event-stream")
        body = await responses_output.collect(job_items(http, jobs, queue), builder, store)
        return JSONResponse(body if body is not None else {}, status_code=200 if body is not None else 499)

    def parse_call(raw: bytes) -> tuple[Served, ResponsesCall]:
        """On the parsing thread: a Responses body -> the model it names and its chat request, checked as a chat
        request is."""
        call = parse_responses(parse_body(raw, limits.max_json_depth), state["store"], limits.max_stop_chars,
                               limits.max_tools, limits.max_tools_kb * 1024)
        return call.renamed(check, call.req, True), call

    def parse(raw: bytes, chat: bool) -> tuple[Served, Request]:
        """On the parsing thread: body -> the model it names and a validated request that fits (or an ApiError)."""
        req = parse_request(parse_body(raw, limits.max_json_depth), chat, limits.max_stop_chars, limits.max_tools,
                            limits.max_tools_kb * 1024)
        return check(req, chat), req

    def check(req: Request, chat: bool) -> Served:
        """The model the request names (404 for another id), and the request's text fits its context."""
        s = served(req.model)
        refuse_early(s, req, chat)
        return s

    def render(s: Served, req: Request, chat: bool) -> tuple:
        """On the rendering thread (one: renders share the tokenizer): prompt ids, a parser per choice, stop ids,
        max_tokens, a grammar state per choice (None: unconstrained)."""
        prompt, parser, stop_ids, param = prepare(s, req, chat)
        max_tokens = check_context(s, req, len(prompt), param, default_max_tokens)
        if req.n * max_tokens > MAX_N_TOKENS:
            raise bad(f"n: {req.n} choices of up to {max_tokens} tokens each exceed this server's {MAX_N_TOKENS} "
                      "tokens per request (lower n or max_tokens)", "n")
        parsers = [parser] + [another_parser(s, chat, parser) for _ in range(req.n - 1)]
        return prompt, parsers, stop_ids, max_tokens, constraints(s, req, prompt, max_tokens)

    return app


def submit(s: Served, req: Request, prompt: list[int], parsers: list[ReplyParser | None], stop_ids: set[int],
           max_tokens: int, ids: bool, constraints: list) -> tuple[list[Job], asyncio.Queue]:
    """The request's engine jobs, one per choice (row i seeded seed + i), all queued or none (503 when the queue is
    full), and the one queue their events arrive on as (choice, event)."""
    queue: asyncio.Queue = asyncio.Queue()
    text = TokenText(s.tokenizer) if req.logprobs is not None else None
    loop = asyncio.get_running_loop()
    jobs = [Job(prompt, max_tokens, QueueHandler(loop, parser, req.stop, ids, queue, i, text),
                row_sampling(req.sampling, i), frozenset(stop_ids), constraint=constraint, top_logprobs=req.logprobs)
            for i, (parser, constraint) in enumerate(zip(parsers, constraints))]
    try:
        submit_all(s.engine, jobs)
    except QueueFull as exc:
        raise ApiError(503, f"the server is busy: {exc}; retry later", code="queue_full") from None
    return jobs, queue


async def read_body(http: HttpRequest, limits: ServeLimits) -> bytes:
    """The body, up to the limit (a chunked body is counted as it comes); 413 beyond it."""
    parts, size = [], 0
    async for part in http.stream():
        size += len(part)
        if size > limits.max_body_bytes:
            raise too_large(None, limits)
        parts.append(part)
    return b"".join(parts)


def another_parser(s: Served, chat: bool, parser: ReplyParser | None) -> ReplyParser | None:
    """A fresh parser for one more choice of the request (prepare made the first)."""
    if chat:
        return s.chat.parser()
    return TextParser(s.tokenizer) if parser is not None else None


def constraints(s: Served, req: Request, prompt: list[int], max_tokens: int) -> list:
    """One grammar state per choice for response_format or a tool_choice that forces a call (else None each); the
    model's Grammars are built on first use (400 naming the field when the model or the schema cannot have one)."""
    forced = req.tool_choice == "required" or isinstance(req.tool_choice, dict)
    if req.response_format is None and not forced:
        return [None] * req.n
    param = "tool_choice" if forced else "response_format"
    if forced and req.response_format is not None:
        raise bad("response_format and a tool_choice that forces a call cannot be combined", "response_format")
    try:
        one = (grammars(s).for_tool_choice(req.tools, req.tool_choice, prompt, max_tokens) if forced else
               grammars(s).for_response_format(req.response_format, prompt, max_tokens))
    except ConstraintError as exc:
        raise bad(str(exc), exc.param) from None
    except MxportError as exc:
        raise bad(f"{param}: {exc}", param, "unsupported_parameter") from None
    return [one] + [one.copy() if one is not None else None for _ in range(req.n - 1)]


def refuse_early(s: Served, req: Request, chat: bool) -> None:
    """400 when the request's text alone cannot fit the context: before the costly render and tokenizing."""
    if s.max_context is None or s.bytes_per_token is None:
        return
    if chat:
        texts = [t for m in req.messages if isinstance(m, dict) and m.get("role") != "assistant"
                 for t in _texts(m.get("content"))]
    else:
        texts = [req.prompt] if isinstance(req.prompt, str) else []
    need = min_tokens(texts, s.bytes_per_token) + (req.max_tokens or 0)
    if need > s.max_context:
        raise bad(f"the request's text alone needs at least {need - (req.max_tokens or 0)} tokens"
                  + (f" and max_tokens is {req.max_tokens}" if req.max_tokens else "")
                  + f": more than the model's context of {s.max_context} tokens", "messages" if chat else "prompt",
                  "context_length_exceeded")


def _texts(content: Any) -> list[str]:
    """The text of a message's content: a string or OpenAI's [{"type": "text", "text": ...}] parts."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def prepare(s: Served, req: Request, chat: bool) -> tuple[list[int], ReplyParser | None, set[int], str]:
    """Prompt ids, a reply parser (None without a tokenizer: token ids only), the stop ids and the request field
    that holds the prompt."""
    if chat:
        if s.chat is None:
            why = "no tokenizer.json" if s.tokenizer is None else "no chat format (a tokenizer without a chat template)"
            raise bad(f"the model '{s.name}' has {why}; use /v1/completions"
                      + (" with token-id prompts" if s.tokenizer is None else ""), "messages", "chat_not_supported")
        try:
            ids = s.chat.render(req.messages, req.tools, req.tool_choice, req.reasoning_effort)
        except FormatError as exc:
            raise bad(str(exc), exc.param) from None
        except MxportError as exc:  # a template over its limits, ...
            raise bad(str(exc), "messages") from None
        except Exception as exc:  # noqa: BLE001 - the template met input it cannot take: the request's fault
            raise bad(f"the chat format cannot render this request ({type(exc).__name__}: {str(exc)[:200]})",
                      "messages", "invalid_messages") from None
        return ids, s.chat.parser(), set(s.chat.stop_token_ids) | set(s.eos_ids), "messages"
    if s.tokenizer is None and isinstance(req.prompt, str):
        raise bad(f"the model '{s.name}' has no tokenizer.json: send the prompt as token ids", "prompt")
    if s.tokenizer is None and req.stop:
        raise bad(f"the model '{s.name}' has no tokenizer.json: stop strings need text", "stop")
    if isinstance(req.prompt, str):
        ids = s.tokenizer.encode(req.prompt)
    else:
        ids = list(req.prompt)
        if s.vocab_size is not None and any(not 0 <= t < s.vocab_size for t in ids):
            raise bad(f"prompt: token ids must be in [0, {s.vocab_size})", "prompt")
    if not ids:
        raise bad("prompt: encodes to no tokens", "prompt")
    return ids, TextParser(s.tokenizer) if s.tokenizer is not None else None, set(s.eos_ids), "prompt"


def check_context(s: Served, req: Request, n: int, param: str, default_max_tokens: int) -> int:
    """max_tokens for the job; a prompt that does not fit is a 400 with both numbers (never truncated)."""
    ctx = s.max_context
    if ctx is None:
        return req.max_tokens or default_max_tokens
    if n >= ctx:
        raise bad(f"the prompt has {n} tokens; the model's context is {ctx} tokens (no room for a reply)", param,
                  "context_length_exceeded")
    if req.max_tokens is not None and n + req.max_tokens > ctx:
        raise bad(f"the prompt has {n} tokens and max_tokens is {req.max_tokens}: {n + req.max_tokens} > the "
                  f"model's context of {ctx} tokens", "max_tokens", "context_length_exceeded")
    return req.max_tokens or min(ctx - n, default_max_tokens)


def _finish_reason(reason: str, tool_called: bool) -> str:
    if reason.startswith("error"):
        raise ApiError(500, f"generation failed: {reason[6:].strip()}", code="generation_failed")
    return "tool_calls" if tool_called and reason == "stop" else ("length" if reason == "length" else "stop")


async def collect(http: HttpRequest, jobs: list[Job], queue: asyncio.Queue, req: Request, chat: bool, meta: tuple,
                  ids: bool = False) -> JSONResponse:
    rid, model, n_prompt = meta
    choices = [Choice() for _ in jobs]
    left = len(jobs)
    while left and (tagged := await next_item(http, jobs, queue)) is not None:
        i, item = tagged
        if item[0] == "done":
            _, reason, n, tool_called = item
            choices[i].finish, choices[i].completion_tokens = _finish_reason(reason, tool_called), n
            left -= 1
        else:
            choices[i].add(item)
    if left:
        return JSONResponse({}, status_code=499)  # the client is gone; nobody reads this
    body = completion_body(rid, model, chat, [c.body(i, chat, ids, req.logprobs is not None)
                                              for i, c in enumerate(choices)],
                           usage(n_prompt, sum(c.completion_tokens for c in choices)))
    return JSONResponse(body)


async def stream(http: HttpRequest, jobs: list[Job], queue: asyncio.Queue, req: Request, chat: bool,
                 meta: tuple) -> AsyncIterator[str]:
    rid, model, n_prompt = meta
    created = int(time.time())
    pending: list[list[tuple]] = [[] for _ in jobs]  # logprob entries not yet sent, per choice
    offsets = [0] * len(jobs)  # completions: text sent so far, per choice (the legacy text_offset)

    def sse(choice: dict | None, usage_: dict | None = None) -> str:
        return f"data: {json.dumps(chunk(rid, model, created, chat, choice, usage_, req.include_usage))}\n\n"

    def delta(i: int, d: dict, finish: str | None = None) -> dict:
        logprobs = None
        if pending[i]:
            logprobs, pending[i] = logprobs_body(chat, pending[i], offsets[i]), []
        if not chat:
            offsets[i] += len(d.get("content", ""))
        return ({"index": i, "delta": d, "finish_reason": finish, "logprobs": logprobs} if chat else
                {"index": i, "text": d.get("content", ""), "finish_reason": finish, "logprobs": logprobs})

    try:
        if chat:
            for i in range(len(jobs)):
                yield sse(delta(i, {"role": "assistant", "content": ""}))
        left, used = len(jobs), 0
        while left and (tagged := await next_item(http, jobs, queue)) is not None:
            i, item = tagged
            kind = item[0]
            if kind == "done":
                _, reason, n, tool_called = item
                try:
                    finish = _finish_reason(reason, tool_called)
                except ApiError as exc:
                    yield f"data: {json.dumps(exc.body())}\n\n"
                    break
                yield sse(delta(i, {}, finish))
                left, used = left - 1, used + n
                if not left and req.include_usage:
                    yield sse(None, usage(n_prompt, used))
            elif kind == "logprob":
                pending[i].append(item[1])
            elif kind == "token":
                yield sse({**delta(i, {}), "token_ids": [item[1]]})
            elif kind == "content":
                yield sse(delta(i, {"content": item[1]}))
            elif kind == "reasoning" and chat:
                yield sse(delta(i, {"reasoning": item[1], "reasoning_content": item[1]}))
            elif kind == "tool_call" and chat:
                call = {"index": item[2], "id": new_id("call"), "type": "function",
                        "function": {"name": item[3], "arguments": ""}}
                yield sse(delta(i, {"tool_calls": [call]}))
            elif kind == "tool_args" and chat:
                yield sse(delta(i, {"tool_calls": [{"index": item[2], "function": {"arguments": item[1]}}]}))
        yield "data: [DONE]\n\n"
    finally:
        for job in jobs:
            job.cancel()  # a no-op for a finished job; frees the slot of one whose client went away
