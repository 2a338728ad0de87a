"""GET /metrics: the server's Prometheus metrics, in a registry of its own per app (two apps in one process, as in
the tests, never share counts).

    metrics = Metrics(models)                        # models() -> the Served objects (read at each scrape)
    app.add_middleware(RequestCounter, metrics=..)   # every response, by route and status (4xx and 5xx too)
    engine.observe = metrics.observer(name)          # each submitted job: prompt and generated tokens, TTFT, TPOT
    body, content_type = metrics.render()

    mxport_requests_total{route, status}             route: the app's route paths, "other" for any other path
    mxport_prompt_tokens_total{model}, mxport_generation_tokens_total{model}   (generated: usage's count, stop
                                                     tokens included)
    mxport_time_to_first_token_seconds{model}        histogram: from the job's submission to the engine (after
                                                     parsing and rendering) to its first generated token
    mxport_time_per_output_token_seconds{model}      histogram: between consecutive tokens of one request
    mxport_queue_depth{model}, mxport_batch_size{model}              requests waiting, rows decoding (gauges)
    mxport_prefix_cache_{hits,misses,tokens_reused}_total{model}, mxport_prefix_cache_bytes{model}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, models: Callable[[], Iterable[Any]]) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("mxport_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=registry)
        self.prompt_tokens = Counter("mxport_prompt_tokens", "prompt tokens of the jobs submitted", ["model"],
                                     registry=registry)
        self.generation_tokens = Counter("mxport_generation_tokens", "tokens generated (stop tokens included)",
                                         ["model"], registry=registry)
        self.ttft = Histogram("mxport_time_to_first_token_seconds", "from a job's submission to its first token",
                              ["model"], buckets=TTFT_BUCKETS, registry=registry)
        self.tpot = Histogram("mxport_time_per_output_token_seconds", "between two tokens of one request",
                              ["model"], buckets=TPOT_BUCKETS, registry=registry)
        registry.register(_EngineCollector(models))

    def observer(self, model: str) -> Callable[[Any], Any]:
        """What the engine calls on each job it accepts (Engine.observe): counts its prompt, returns its handler
        wrapped to time its tokens."""
        series = (self.ttft.labels(model), self.tpot.labels(model), self.generation_tokens.labels(model))
        prompt = self.prompt_tokens.labels(model)

        def observe(job: Any) -> Any:
            prompt.inc(len(job.prompt))
            return TimedHandler(job.handler, *series)

        return observe

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class TimedHandler:
    """A job's handler (engine.Handler) with its tokens timed; anything else is the wrapped handler's."""

    def __init__(self, inner: Any, ttft: Any, tpot: Any, generated: Any) -> None:
        self.inner, self._ttft, self._tpot, self._generated = inner, ttft, tpot, generated
        self._start, self._last = time.perf_counter(), None

    def token(self, token_id: int) -> bool:
        now = time.perf_counter()
        (self._ttft if self._last is None else self._tpot).observe(now - (self._last or self._start))
        self._last = now
        return self.inner.token(token_id)

    def finish(self, reason: str, completion_tokens: int, stop_token: int | None = None) -> None:
        if self._last is None and completion_tokens:  # the first token was a stop token
            self._ttft.observe(time.perf_counter() - self._start)
        self._generated.inc(completion_tokens)
        self.inner.finish(reason, completion_tokens, stop_token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _EngineCollector:
    """The engines' state at scrape time: queue depth, batch size, the prefix caches' counters."""

    def __init__(self, models: Callable[[], Iterable[Any]]) -> None:
        self.models = models

    def collect(self):
        queue = GaugeMetricFamily("mxport_queue_depth", "requests waiting for a batch slot", labels=["model"])
        batch = GaugeMetricFamily("mxport_batch_size", "rows in the running batch", labels=["model"])
        cache = {key: CounterMetricFamily(f"mxport_prefix_cache_{key}", f"prefix cache {key.replace('_', ' ')}",
                                          labels=["model"]) for key in ("hits", "misses", "tokens_reused")}
        size = GaugeMetricFamily("mxport_prefix_cache_bytes", "bytes the prefix cache holds", labels=["model"])
        for served in self.models():
            queue.add_metric([served.name], served.engine.waiting)
            batch.add_metric([served.name], served.engine.active)
            prefix = served.engine.prefix
            if prefix is not None:
                for key, family in cache.items():
                    family.add_metric([served.name], getattr(prefix, key))
                size.add_metric([served.name], prefix.bytes)
        yield from (queue, batch, *cache.values(), size)


class RequestCounter:
    """ASGI middleware: counts every response by route and status (the outermost layer: it sees the Guard's and
    the catch-all's answers too). `routes()`: the paths counted by name; others count as "other"."""

    def __init__(self, app: Any, metrics: Metrics, routes: Callable[[], Iterable[str]]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes
        self._known: frozenset[str] | None = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = None

        async def counted(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            if status is not None:
                if self._known is None:
                    self._known = frozenset(self.routes())
                route = scope["path"] if scope["path"] in self._known else "other"
                self.metrics.requests.labels(route, str(status)).inc()
