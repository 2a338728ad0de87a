"""`mxport serve EXPORT_DIR [EXPORT_DIR ...] [--host 127.0.0.1] [--port 8000] [--provider cpu] [--max-batch 16]
[--max-queue 64] [--prefix-cache-mb 1024] [--api-key KEY] [--allowed-hosts a,b] [limits: --max-body-mb 4 ...]`
(docs/SERVING.md). Several folders: one engine each, a request's `model` (the folder's name) picks one. With `--ray [--replicas N] [--threads-per-replica T] [--ray-address ADDR] ...` the same app on Ray Serve replicas
(docs/SCALING.md)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import threading
from functools import partial
from pathlib import Path

from mxport.contract.folder import MODEL_FILE, is_export
from mxport.errors import MxportError

API_KEY_ENV = "MXPORT_API_KEY"


def register(parser: argparse.ArgumentParser) -> None:
    from mxport.runtime.serve.limits import ServeLimits

    from mxport.runtime.serve.models import PREFIX_CACHE_MB

    parser.add_argument("folders", metavar="EXPORT_DIR", nargs="+",
                        help="exported folder (model.onnx, mxport.json, tokenizer.json); several: one model each, "
                             "its id the folder's name")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--provider", default="cpu", help="onnxruntime provider: cpu, cuda, auto or a full name")
    parser.add_argument("--max-batch", type=int, default=16, help="requests decoded together at most (default 16)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting for a batch slot at most; more get 503 (default 64)")
    parser.add_argument("--model-name", default=None,
                        help="the model id clients send (default: the folder name; one folder only)")
    parser.add_argument("--prefix-cache-mb", type=float, default=PREFIX_CACHE_MB,
                        help=f"memory per model for the KV of computed prefixes, reused by requests that start "
                             f"with them (default {PREFIX_CACHE_MB:g}; 0 = off)")
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
    register_ray(parser)


def run(args: argparse.Namespace) -> int:
    try:
        from mxport.runtime.serve.app import create_app
        from mxport.runtime.serve.models import load_folders, model_ids
        from mxport.runtime.serve.guard import default_hosts, is_loopback
        from mxport.runtime.serve.limits import ServeLimits
        from mxport.runtime.serve.net import listen, make_server
    except ImportError as exc:
        raise MxportError(f"serve needs the serve extra: pip install \"mxport[serve]\" ({exc})") from None
    folders = [Path(f) for f in args.folders]
    for folder in folders:
        if not is_export(folder):
            raise MxportError(f"{folder}: not an exported folder (no {MODEL_FILE})")
    model_ids(folders)  # two folders of one name: refused before anything loads
    if args.model_name is not None and len(folders) > 1:
        raise MxportError(f"--model-name names one model; {len(folders)} folders are served by their folder names")
    if args.ray and len(folders) > 1:
        raise MxportError(f"--ray serves one folder; {len(folders)} were given")
    if not args.prefix_cache_mb >= 0:
        raise MxportError(f"--prefix-cache-mb must be >= 0, found {args.prefix_cache_mb}")
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
    if args.ray:
        return run_ray(args, folders[0], limits, api_key, hosts, sock)
    unused_ray_options(args)
    load = partial(load_folders, folders, provider=args.provider, max_batch=args.max_batch, max_queue=args.max_queue,
                   model_name=args.model_name, max_context=args.max_context, prefix_cache_mb=args.prefix_cache_mb)
    app = create_app(load, default_max_tokens=args.default_max_tokens, limits=limits, api_key=api_key,
                     allowed_hosts=hosts)
    make_server(app, limits, host=args.host, port=args.port).run(sockets=[sock])
    return 0


# ---- --ray: the same app on Ray Serve replicas (runtime/serve/ray_app.py, docs/SCALING.md) ----------------------
def register_ray(parser: argparse.ArgumentParser) -> None:
    ray = parser.add_argument_group("Ray Serve (docs/SCALING.md; needs the ray extra)")
    ray.add_argument("--ray", action="store_true", help="serve from Ray Serve replicas behind this process")
    ray.add_argument("--replicas", type=int, default=1, help="replicas, each a process with the model (default 1)")
    ray.add_argument("--threads-per-replica", type=int, default=None,
                     help="ORT intra-op threads = Ray CPUs per replica (default: the cluster's CPUs / replicas)")
    ray.add_argument("--min-replicas", type=int, default=None, help="autoscale between --min- and --max-replicas")
    ray.add_argument("--max-replicas", type=int, default=None, help="(sets autoscaling; --replicas is then unused)")
    ray.add_argument("--target-ongoing-requests", type=float, default=8.0,
                     help="autoscaling: requests per replica it aims at (default 8)")
    ray.add_argument("--routing", choices=("prefix", "random"), default="prefix",
                     help="prefix: a conversation stays on one replica (default); random: Ray's power of two choices")
    ray.add_argument("--ray-address", default=None,
                     help="join this Ray cluster (e.g. auto, HOST:6379) instead of starting a local one")
    ray.add_argument("--object-store-mb", type=int, default=200, help="object store of a local cluster (default 200)")


def unused_ray_options(args: argparse.Namespace) -> None:
    """Ray options without --ray are a mistake, not a no-op."""
    given = [name for name in ("replicas", "threads_per_replica", "min_replicas", "max_replicas", "ray_address")
             if getattr(args, name) not in (None, 1)]
    given += [name for name, default in (("routing", "prefix"), ("target_ongoing_requests", 8.0),
                                         ("object_store_mb", 200)) if getattr(args, name) != default]
    if given:
        raise MxportError(f"{', '.join('--' + n.replace('_', '-') for n in given)}: only with --ray")


def run_ray(args: argparse.Namespace, folder: Path, limits, api_key: str | None, hosts, sock) -> int:
    try:
        from mxport.runtime.serve import ray_app
    except ImportError as exc:
        raise MxportError(f"--ray needs the ray extra: pip install \"mxport[ray]\" ({exc})") from None
    from mxport.runtime.serve.net import make_server

    autoscale = args.max_replicas is not None
    if args.min_replicas is not None and not autoscale:
        raise MxportError("--min-replicas needs --max-replicas (autoscaling between the two)")
    most = args.max_replicas if autoscale else args.replicas
    if most < 1 or (autoscale and not 1 <= (args.min_replicas or 1) <= args.max_replicas):
        raise MxportError(f"replicas: expected 1 <= --min-replicas <= --max-replicas (or --replicas >= 1), found "
                          f"{args.min_replicas}..{args.max_replicas}" if autoscale else f"--replicas {args.replicas}")
    if args.target_ongoing_requests <= 0:
        raise MxportError(f"--target-ongoing-requests must be > 0, found {args.target_ongoing_requests}")
    if args.threads_per_replica is not None and args.threads_per_replica < 1:
        raise MxportError(f"--threads-per-replica must be >= 1, found {args.threads_per_replica}")
    on_term = signal.getsignal(signal.SIGTERM)
    try:
        started = ray_app.start_cluster(args.ray_address, os.cpu_count(), args.object_store_mb)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, ValueError, RuntimeError, ...
        where = f"join the Ray cluster at --ray-address {args.ray_address}" if args.ray_address else \
            "start a local Ray cluster"
        raise MxportError(f"cannot {where}: {type(exc).__name__}: {str(exc)[:300]}") from None
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)  # ray.init's handler exits 15; keep the command's (143, as serve)
    spec = ray_app.RaySpec(str(folder.resolve()), args.provider, args.max_batch, args.max_queue, args.model_name,
                           args.max_context, args.default_max_tokens, limits, api_key, replicas=args.replicas,
                           min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                           target_ongoing_requests=args.target_ongoing_requests, routing=args.routing,
                           prefix_cache_mb=args.prefix_cache_mb, app_name=f"mxport-{args.model_name or folder.resolve().name}")
    try:
        cpus = ray_app.cluster_cpus()
        spec.threads = args.threads_per_replica or max(1, int(cpus) // most)
        if spec.threads < 1 or most * spec.threads > cpus:
            raise MxportError(f"--replicas/--max-replicas {most} x --threads-per-replica {spec.threads} = "
                              f"{most * spec.threads} CPUs: more than the cluster's {cpus:g} (cores would be "
                              "oversubscribed)")
        app, door = ray_app.front_door(limits, api_key, hosts)

        def deploy() -> None:
            try:
                door.handle = ray_app.deploy(spec)
                logging.getLogger("mxport.serve").info("%s: replicas ready", spec.app_name)
            except Exception as exc:  # noqa: BLE001 - /health reports it; the process keeps answering 503
                door.error = f"{type(exc).__name__}: {str(exc)[:500]}"
                logging.getLogger("mxport.serve").error("deploying failed: %s", door.error)

        threading.Thread(target=deploy, name="mxport-deploy", daemon=True).start()
        make_server(app, limits, host=args.host, port=args.port).run(sockets=[sock])
    finally:
        ray_app.shutdown(spec.app_name, started)
    return 0
