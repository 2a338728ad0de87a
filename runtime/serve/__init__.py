"""`mxport serve EXPORT_DIR [EXPORT_DIR ...]`: an OpenAI-compatible HTTP server with continuous batching
(docs/SERVING.md).

    app.py       FastAPI routes, SSE streaming, the request -> job glue
    protocol.py  OpenAI's request fields (validated, unsupported ones refused by name) and response bodies
    engine.py    the continuous-batching scheduler (one step per token for every active request)
    prefix.py    the prefix cache: stored KV of computed sequences, found again by longest valid prefix
    models.py    Served (one model and its engine), loading one or several export folders, memory per model
    metrics.py   GET /metrics: Prometheus counters, histograms and the engines' gauges, a registry per app
    limits.py    ServeLimits (every limit, each a flag of `mxport serve`), strict body parsing, the early refusal
    guard.py     Host allow-list, API key, JSON-only, declared length; the catch-all (one log line, a 500 body)
    net.py       uvicorn on a bounded h11 protocol (request timeout, connection cap), the socket bound first
    worker.py    the thread that parses, renders and tokenizes requests off the event loop
    responses.py         the Responses API's request: input items -> the chat request (responses_output.py: output
                         items, the event stream; store.py: the bounded store for previous_response_id)
    ray_app.py           `--ray`: the same app on Ray Serve replicas behind a front door (docs/SCALING.md)
    ray_router.py        the Ray request router that keeps a conversation on one replica

Chat requests are rendered and parsed by the model's chat format (runtime/chat/format.py), the same objects
`mxport chat` uses; app.py maps them to and from OpenAI's shapes. Stop strings are matched by the Generator's
linear-time matcher (runtime/generation/stops.py). The subcommand: mxport/commands/serve.py.

Needs the `serve` extra (`pip install "mxport[serve]"`: fastapi, uvicorn, prometheus_client); nothing here is
imported by the rest of mxport.
"""
