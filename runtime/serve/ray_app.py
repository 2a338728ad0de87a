"""`mxport serve EXPORT --ray`: the same app on Ray Serve replicas, behind one front door (docs/SCALING.md).

    client ──HTTP──► front door (this process: net.py's bounded uvicorn, guard.py's Guard, FrontDoor below)
                          │  reads the body (<= --max-body-mb), computes its routing text (routing_text),
                          │  hands Forwarded(scope, body, prompt) to the deployment handle
                          ▼  (the handle's router: ray_router.PrefixAffinityRouter, or Ray's power of two choices)
                     Replica (a Ray Serve deployment; N replicas, each its own process)
                          each holds create_app(load_folder(EXPORT, threads=T)): the single-process server's
                          FastAPI app, its engine and its Guard, driven in-process over ASGI; the ASGI messages
                          it sends go back as a stream and the front door sends them on unchanged

One code path: every route, validation, limit, auth check and error body is app.py's; the front door adds the Host
and key checks before it reads a body (the same Guard again) and the answers only it can give:

    503 model_not_ready    the deployment is not up yet (/health: {"status": "loading"} as while a model loads)
    503 replica_failed     the replica that had the request died (a stream that had started ends with this error
                           as its last `data:` event, then [DONE]); a request no replica had accepted yet is
                           sent again to another replica instead (ROUTE_RETRIES)
    503 queue_full         every replica is busy and the handle's queue (--max-queue) is full
    503 no_replica         no replica accepted the request within ROUTE_TIMEOUT_S (none alive)

Every answer a replica gave carries `x-mxport-replica: ID`. A client that goes away cancels the Ray call; the
replica then tells the app (http.disconnect), which cancels the engine job. Replicas are restarted by Ray when
they die or fail their health check (the app's /health).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from mxport.runtime.serve.app import _texts, create_app, load_folder
from mxport.runtime.serve.models import PREFIX_CACHE_MB
from mxport.runtime.serve.guard import CatchAll, Guard, send_error
from mxport.runtime.serve.limits import ServeLimits, parse_body, too_large
from mxport.runtime.serve.protocol import ApiError
from mxport.runtime.serve.worker import Worker

log = logging.getLogger("mxport.serve")

ACCEPTED = "mxport.accepted"  # the first message of every replica answer: the request reached a replica
REPLICA_HEADER = b"x-mxport-replica"  # on every answer: the id of the replica that gave it
ROUTE_TIMEOUT_S = 60.0
ROUTE_RETRIES = 2  # sends of a request that no replica accepted (its replica died before it got there)
PREFIX_CHARS = 2048  # routing text kept: the start of a conversation or prompt
MAX_SESSIONS = 65536  # response ids whose routing text the front door remembers (previous_response_id)
PREVIOUS = "\x00previous\x1d"  # routing_text's mark of a previous_response_id
RESPONSE_ID = re.compile(rb'"(resp_[0-9a-f]{1,64})"')  # the first one in a /v1/responses answer is its id
SCOPE_KEYS = ("type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "root_path", "query_string",
              "headers", "client", "server")


@dataclass
class RaySpec:
    """What a replica loads and serves, and how many of them (`mxport serve --ray`'s options)."""

    folder: str
    provider: str = "cpu"
    max_batch: int = 16
    max_queue: int = 64
    model_name: str | None = None
    max_context: int | None = None
    default_max_tokens: int = 4096
    limits: ServeLimits = field(default_factory=ServeLimits)
    api_key: str | None = None
    threads: int = 1  # ORT intra-op threads = Ray CPUs per replica
    replicas: int = 1
    min_replicas: int | None = None  # with max_replicas: autoscaling between the two
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    routing: str = "prefix"  # "prefix" (ray_router.PrefixAffinityRouter) or "random" (Ray's power of two)
    prefix_cache_mb: float = PREFIX_CACHE_MB  # each replica's prefix cache (`--prefix-cache-mb`)
    app_name: str = "mxport"


@dataclass
class Forwarded:
    """One HTTP request as the front door hands it to a replica; `prompt` is its routing text (ray_router)."""

    scope: dict
    body: bytes
    prompt: str | None = None
    pinned: bool = False  # only the prompt's first replica may take it (it holds the previous response)


# ---- the replica ---------------------------------------------------------------------------------------------
async def asgi_messages(app, scope: dict, body: bytes, gone: asyncio.Event) -> AsyncIterator[dict]:
    """Run one HTTP request through `app` in this process; yields the ASGI messages it sends. `gone` set: the
    client has left (the app's receive() then answers http.disconnect)."""
    queue: asyncio.Queue = asyncio.Queue()
    sent_body = False

    async def receive() -> dict:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        if not gone.is_set():
            await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        queue.put_nowait(message)

    task = asyncio.create_task(app(scope, receive, send))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (message := await queue.get()) is not None:
            yield message
            if message["type"] == "http.response.body" and not message.get("more_body"):
                return
        task.result()  # the app ended without a full answer: its exception (CatchAll answers all of them)
    finally:
        gone.set()
        if not task.done():  # give the app a moment to see the disconnect and cancel its engine job
            asyncio.get_running_loop().call_later(5.0, task.cancel)


class Replica:
    """The deployment's class: one export, one engine, the FastAPI app of app.py."""

    async def __init__(self, spec: RaySpec) -> None:
        from ray import serve
        from uvicorn.config import Config
        from uvicorn.lifespan.on import LifespanOn

        self.replica = serve.get_replica_context().replica_id.unique_id

        load = partial(load_folder, spec.folder, provider=spec.provider, max_batch=spec.max_batch,
                       max_queue=spec.max_queue, model_name=spec.model_name, max_context=spec.max_context,
                       threads=spec.threads, prefix_cache_mb=spec.prefix_cache_mb)
        # no Host list here: the front door checks Host; a replica is reached through Ray only
        self.app = create_app(load, default_max_tokens=spec.default_max_tokens, limits=spec.limits,
                              api_key=spec.api_key, allowed_hosts=None)
        self.lifespan = LifespanOn(Config(self.app, lifespan="on", log_config=None))
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            raise RuntimeError("the app's startup failed")
        while (health := await self.health())["status"] == "loading":  # Ray routes here once __init__ returns
            await asyncio.sleep(0.05)
        if health["status"] != "ok":
            raise RuntimeError(f"the replica cannot serve: {health.get('error')}")

    async def health(self) -> dict:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": "/health", "raw_path": b"/health", "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"localhost")], "client": None, "server": None}
        parts = [m.get("body", b"") async for m in asgi_messages(self.app, scope, b"", asyncio.Event())
                 if m["type"] == "http.response.body"]
        return json.loads(b"".join(parts))

    async def check_health(self) -> None:
        """Ray's health check: the app's /health must say ok."""
        health = await self.health()
        if health["status"] != "ok":
            raise RuntimeError(f"/health: {health}")

    async def __call__(self, request: Forwarded) -> AsyncIterator[dict]:
        yield {"type": ACCEPTED, "replica": self.replica}
        async for message in asgi_messages(self.app, dict(request.scope), request.body, asyncio.Event()):
            yield message

    async def __del__(self) -> None:
        await self.lifespan.shutdown()


def deployment_options(spec: RaySpec) -> dict:
    """serve.deployment options: replicas (or autoscaling), CPUs per replica, concurrency, router, health."""
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": spec.threads},
        "max_ongoing_requests": spec.max_batch + spec.max_queue,  # what one engine takes before its 503
        "max_queued_requests": max(1, spec.max_queue),  # waiting in the front door's handle; more: 503
        "health_check_period_s": 2.0, "health_check_timeout_s": 30.0, "graceful_shutdown_timeout_s": 5.0,
        "max_constructor_retry_count": 3,  # a replica that cannot load the export: the deployment fails
    }
    if spec.max_replicas is not None:
        opts["num_replicas"] = "auto"
        opts["autoscaling_config"] = {"min_replicas": spec.min_replicas or 1, "max_replicas": spec.max_replicas,
                                      "initial_replicas": spec.min_replicas or 1,
                                      "target_ongoing_requests": spec.target_ongoing_requests}
    else:
        opts["num_replicas"] = spec.replicas
    if spec.routing == "prefix":
        from mxport.runtime.serve.ray_router import PrefixAffinityRouter

        opts["request_router_config"] = {"request_router_class": PrefixAffinityRouter}
    return opts


def deploy(spec: RaySpec):
    """Start Serve (no Ray HTTP proxy: the front door is this process) and run the deployment; its handle."""
    from ray import serve

    serve.start(proxy_location="Disabled")
    deployment = serve.deployment(Replica, name="mxport").options(**deployment_options(spec))
    return serve.run(deployment.bind(spec), name=spec.app_name, route_prefix=None)


# ---- the front door ------------------------------------------------------------------------------------------
def routing_text(body: bytes, limits: ServeLimits) -> str | None:
    """What a request's replica is chosen by: a conversation's instructions, leading system/developer messages and
    its first user message (the same for every turn), or the start of a prompt (text or token ids); PREVIOUS +
    the id for a Responses follow-up (previous_response_id); None for a body that does not parse (its replica
    answers the 400)."""
    try:
        obj = parse_body(body, limits.max_json_depth)
    except Exception:  # noqa: BLE001 - the replica refuses it with the app's own error
        return None
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("previous_response_id"), str):  # a Responses follow-up: where that response is stored
        return f"{PREVIOUS}{obj['previous_response_id'][:256]}"
    head = f"{obj.get('model')}\x1d{obj.get('instructions') if isinstance(obj.get('instructions'), str) else ''}\x1d"
    turns = obj.get("messages", obj.get("input"))
    if isinstance(turns, list):
        parts = []
        for m in turns:
            if not isinstance(m, dict):
                break
            parts.append(f"{m.get('role')}\x1f{''.join(_texts(m.get('content')))}\x1e")
            if m.get("role") == "user":
                break
        return (head + "".join(parts))[:PREFIX_CHARS]
    prompt = obj.get("prompt", turns)
    if isinstance(prompt, str):
        return (head + prompt)[:PREFIX_CHARS]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return (head + ",".join(map(str, prompt)))[:PREFIX_CHARS]
    return None


class AnswerCut(Exception):
    """A replica's stream of ASGI messages stopped before the answer's last body part (its process died)."""


def _failed_replica(exc: BaseException) -> bool:
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import ReplicaUnavailableError

    return isinstance(exc, (RayActorError, ReplicaUnavailableError, AnswerCut))


class FrontDoor:
    """The ASGI app of the front door; `handle` is set once the deployment runs (503 until then)."""

    def __init__(self, limits: ServeLimits, route_timeout: float = ROUTE_TIMEOUT_S) -> None:
        self.limits, self.route_timeout = limits, route_timeout
        self.handle = None
        self.error: str | None = None
        self.parsing = Worker("mxport-route")
        self.retried = 0  # requests sent again because their replica died before accepting them
        self.sessions: OrderedDict[str, str] = OrderedDict()  # response id -> the routing text that made it
        self.failed = 0  # requests that ended with replica_failed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if self.handle is None:
            await self.not_ready(scope, send)
            return
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.limits.max_body_bytes:
                await send_error(send, too_large(None, self.limits))
                return
            if not message.get("more_body"):
                break
        body = b"".join(parts)
        prompt = await self.parsing.run(routing_text, body, self.limits) if body else None
        pinned = prompt is not None and prompt.startswith(PREVIOUS)
        if pinned:  # the conversation's text, so that the response is asked of the replica that stored it
            prompt = self.sessions.get(prompt[len(PREVIOUS):], prompt)
        fwd = Forwarded({k: scope[k] for k in SCOPE_KEYS if k in scope}, body, prompt, pinned)
        gone = asyncio.Event()
        watcher = asyncio.create_task(_disconnected(receive, gone))
        try:
            for attempt in range(ROUTE_RETRIES + 1):
                if not await self.attempt(fwd, send, gone, retry=attempt < ROUTE_RETRIES):
                    break
                self.retried += 1
                await asyncio.sleep(0.2 * (attempt + 1))  # time for the router to learn the replica is gone
        finally:
            watcher.cancel()

    def remember(self, response_id: str, prompt: str) -> None:
        self.sessions[response_id] = prompt
        self.sessions.move_to_end(response_id)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)

    async def not_ready(self, scope, send) -> None:
        if scope["path"] == "/health":
            body = json.dumps({"status": "error" if self.error else "loading", "error": self.error}).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})
            return
        why = f"the model failed to load: {self.error}" if self.error else "the model is still loading"
        await send_error(send, ApiError(503, why, code="model_not_ready"))

    async def attempt(self, fwd: Forwarded, send, gone: asyncio.Event, retry: bool) -> bool:
        """Send the request to a replica and relay its answer; True: try again (no replica had accepted it)."""
        from ray.serve.exceptions import BackPressureError

        answer = self.handle.options(stream=True).remote(fwd)
        stop = asyncio.create_task(gone.wait())
        stop.add_done_callback(lambda _: gone.is_set() and answer.cancel())
        accepted, started, streaming, finished = None, False, False, False
        try:
            it = answer.__aiter__()
            while True:
                nxt = it.__anext__()
                try:
                    message = await (nxt if accepted is not None else asyncio.wait_for(nxt, self.route_timeout))
                except StopAsyncIteration:
                    if finished:
                        return False
                    raise AnswerCut("the replica's answer ended before its last part") from None
                if message["type"] == ACCEPTED:
                    accepted = message["replica"]
                    continue
                if message["type"] == "http.response.start":
                    started = True
                    streaming = b"text/event-stream" in dict(message.get("headers", [])).get(b"content-type", b"")
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (REPLICA_HEADER, accepted.encode())]}
                finished = message["type"] == "http.response.body" and not message.get("more_body")
                if message["type"] == "http.response.body" and fwd.prompt and fwd.scope.get("path") == \
                        "/v1/responses" and (found := RESPONSE_ID.search(message.get("body", b""))) is not None:
                    self.remember(found.group(1).decode(), fwd.prompt)
                    fwd = Forwarded(fwd.scope, fwd.body, None, fwd.pinned)  # once per answer
                await send(message)
        except asyncio.TimeoutError:
            answer.cancel()
            await send_error(send, ApiError(503, f"no replica accepted the request within {self.route_timeout:g} s;"
                                                 " retry later", code="no_replica"))
            return False
        except Exception as exc:  # noqa: BLE001 - every failure of the Ray call becomes an answer
            if gone.is_set():
                return False
            if isinstance(exc, BackPressureError):
                await send_error(send, ApiError(503, f"the server is busy: {exc}; retry later", code="queue_full"))
                return False
            if retry and accepted is None and _failed_replica(exc):
                log.warning("a replica failed before accepting a request (%s); sending it to another",
                            type(exc).__name__)
                return True
            self.failed += 1
            log.error("the replica serving %s %s failed: %s: %s", fwd.scope.get("method"),
                      fwd.scope.get("path", "")[:200], type(exc).__name__, str(exc)[:300].replace("\n", " "))
            err = ApiError(503, f"the replica serving this request failed ({type(exc).__name__}); retry",
                           code="replica_failed", headers={REPLICA_HEADER.decode(): accepted} if accepted else None)
            if not started:
                await send_error(send, err)
            elif streaming:
                data = f"data: {json.dumps(err.body())}\n\ndata: [DONE]\n\n".encode()
                await send({"type": "http.response.body", "body": data, "more_body": False})
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return False
        finally:
            stop.cancel()


async def _disconnected(receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


def front_door(limits: ServeLimits, api_key: str | None, allowed_hosts) -> tuple[Any, FrontDoor]:
    """The front door's ASGI app (CatchAll(Guard(FrontDoor))) and its FrontDoor (set its handle when deployed)."""
    door = FrontDoor(limits)
    return CatchAll(Guard(door, limits=limits, api_key=api_key, hosts=allowed_hosts)), door


def start_cluster(address: str | None, num_cpus: int | None, object_store_mb: int) -> bool:
    """Connect to the Ray cluster at `address`, or start a local one (no dashboard); True if this started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
        return False
    ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=object_store_mb << 20)
    return True


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0))


def shutdown(app_name: str, started: bool) -> None:
    """Delete the app (and stop Serve and the local cluster when this process started them)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        serve.delete(app_name) if not started else serve.shutdown()
    except Exception as exc:  # noqa: BLE001 - a cluster already gone: nothing left to delete
        log.warning("shutting down %s: %s: %s", app_name, type(exc).__name__, exc)
    finally:
        if started:
            ray.shutdown()
