"""`mxport serve EXPORT_DIR [--host 127.0.0.1] [--port 8000] [--provider cpu] [--max-batch 16] [--max-queue 64]`."""

from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path

from mxport.contract.folder import MODEL_FILE, is_export
from mxport.errors import MxportError


def register(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from mxport.runtime.serve.app import create_app, load_folder
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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    load = partial(load_folder, folder, provider=args.provider, max_batch=args.max_batch, max_queue=args.max_queue,
                   model_name=args.model_name, max_context=args.max_context)
    app = create_app(load, default_max_tokens=args.default_max_tokens)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
