"""`mxport serve EXPORT_DIR [--host 127.0.0.1] [--port 8000] [--provider cpu] [--max-batch 16] [--max-queue 64]
[--api-key KEY] [--allowed-hosts a,b] [limits: --max-body-mb 4 ...]` (docs/SERVING.md "Limits and security")."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from functools import partial
from pathlib import Path

from mxport.contract.folder import MODEL_FILE, is_export
from mxport.errors import MxportError

API_KEY_ENV = "MXPORT_API_KEY"


def register(parser: argparse.ArgumentParser) -> None:
    from mxport.runtime.serve.limits import ServeLimits

    parser.add_argument("folder", metavar="EXPORT_DIR", help="exported folder (model.onnx, mxport.json, tokenizer.json)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--provider", default="cpu", help="onnxruntime provider: cpu, cuda, auto or a full name")
    parser.add_argument("--max-batch", type=int, default=16, help="requests decoded together at most (default 16)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting for a batch slot at most; more get 503 (default 64)")
    parser.add_argument("--model-name", default=None, help="the model id clients send (default: the folder name)")
    parser.add_argument("--max-context", type=int, default=None,
                        help="context limit in tokens (default the model's max_position_embeddings)")
    parser.add_argument("--default-max-tokens", type=int, default=4096,
                        help="reply length when a request gives no max_tokens (capped by the context)")
    parser.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' on every route but /health (default: the "
                             f"{API_KEY_ENV} environment variable; none: no key)")
    parser.add_argument("--allowed-hosts", default=None,
                        help="comma-separated Host names answered (default while bound to loopback: localhost, "
                             "127.0.0.1, ::1; otherwise any); '*' = any")
    limits = parser.add_argument_group("limits (docs/SERVING.md, 'Limits and security')")
    for f in dataclasses.fields(ServeLimits):
        limits.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default),
                            default=f.default, help=f"{f.metadata['help']} (default {f.default})")


def run(args: argparse.Namespace) -> int:
    try:
        from mxport.runtime.serve.app import create_app, load_folder
        from mxport.runtime.serve.guard import default_hosts, is_loopback
        from mxport.runtime.serve.limits import ServeLimits
        from mxport.runtime.serve.net import listen, make_server
    except ImportError as exc:
        raise MxportError(f"serve needs the serve extra: pip install \"mxport[serve]\" ({exc})") from None
    folder = Path(args.folder)
    if not is_export(folder):
        raise MxportError(f"{folder}: not an exported folder (no {MODEL_FILE})")
    for name in ("max_batch", "default_max_tokens"):
        if getattr(args, name) < 1:
            raise MxportError(f"--{name.replace('_', '-')} must be >= 1, found {getattr(args, name)}")
    if args.max_queue < 0:
        raise MxportError(f"--max-queue must be >= 0, found {args.max_queue}")
    limits = ServeLimits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeLimits)})
    try:
        limits.check()
    except ValueError as exc:
        raise MxportError(str(exc)) from None
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    hosts = default_hosts(args.host) if args.allowed_hosts is None else \
        [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
    sock = listen(args.host, args.port)  # a bad or busy port fails here, before the model loads
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not is_loopback(args.host) and api_key is None:
        logging.getLogger("mxport.serve").warning(
            "listening on %s without an API key: anyone who can reach this address can use the model "
            "(--api-key or %s)", args.host, API_KEY_ENV)
    load = partial(load_folder, folder, provider=args.provider, max_batch=args.max_batch, max_queue=args.max_queue,
                   model_name=args.model_name, max_context=args.max_context)
    app = create_app(load, default_max_tokens=args.default_max_tokens, limits=limits, api_key=api_key,
                     allowed_hosts=hosts)
    make_server(app, limits, host=args.host, port=args.port).run(sockets=[sock])
    return 0
