"""`mxport run FOLDER`: generate from an exported folder, or (with --backend numpy) from a checkpoint folder.

    mxport run OUT --prompt "Hello"                           streams the continuation's text
    mxport run OUT --input-ids ids.npy [--logits-out l.npy]   prints greedy continuation ids; saves prompt logits
    mxport run CKPT --backend numpy --input-ids ids.npy       the NumPy reference model on the checkpoint
    mxport run OUT --backend numpy --input-ids ids.npy        onnx.reference + mxport kernels over the graph

--input-ids takes an int .npy of shape [S] or [B, S] (rows of one length; use --prompt for text). On the NumPy
reference model a progress bar counts its layers (on a terminal only; --quiet silences it; with --prompt only
until the text starts, so the bar never mixes with it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mxport.errors import MxportError
from mxport.files import write_file
from mxport.commands.options import add_generation_options, generation_config
from mxport.commands.progress import Bars, add_quiet_option
from mxport.runtime.generation.generate import Generator


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="exported folder (model.onnx) or, with --backend numpy, a checkpoint folder")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text prompt (needs tokenizer.json in the folder)")
    src.add_argument("--input-ids", type=Path, help="prompt token ids as an int .npy, shape [S] or [B, S]")
    parser.add_argument("--logits-out", type=Path, default=None,
                        help="with --input-ids: save the prompt's logits [B, S, V] float32 to this .npy")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--no-eos", action="store_true", help="do not stop on the model's eos ids")
    add_generation_options(parser, max_new_tokens=32)
    add_quiet_option(parser)


def load_input_ids(path: Path) -> np.ndarray:
    if not path.is_file():
        raise MxportError(f"--input-ids {path}: file not found")
    try:
        ids = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise MxportError(f"--input-ids {path}: not a readable .npy file ({exc})") from None
    if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2) or ids.size == 0:
        raise MxportError(
            f"--input-ids {path}: expected a non-empty integer array of shape [S] or [B, S], "
            f"found dtype {ids.dtype} shape {ids.shape}"
        )
    return ids.astype(np.int64).reshape(-1, ids.shape[-1])


def run(args: argparse.Namespace) -> int:
    extra = {"stop_strings": tuple(args.stop)}
    if args.no_eos:
        extra["stop_token_ids"] = ()
    config = generation_config(args, **extra)
    if args.logits_out is not None and args.input_ids is None:
        raise MxportError("--logits-out needs --input-ids (the logits of the given prompt ids)")
    ids = load_input_ids(args.input_ids) if args.input_ids is not None else None
    generator = Generator.from_folder(args.folder, backend=args.backend, provider=args.provider,
                                      max_context=args.max_context)
    with Bars(args.quiet) as bars:
        _hear_layers(generator, bars, config.max_new_tokens)
        return _run(args, generator, ids, config, bars)


def _hear_layers(generator: Generator, bars: Bars, max_new_tokens: int) -> None:
    """--backend numpy: on the NumPy reference model (a checkpoint) one bar over its layers, pass after pass (the
    prompt, then one pass per new token), through ReferenceModel's progress callback; on onnx.reference (an export)
    one bar over the passes."""
    runner = getattr(generator.model, "runner", None)  # InferStepModel -> runner (-> the NumPy model)
    model = getattr(runner, "model", None)
    if not bars.enabled or runner is None:
        return
    if not hasattr(model, "progress"):  # onnx.reference over an export: one tick per pass (prompt, each new token)
        infer, passes = runner.infer, 0

        def counted(*args, **kwargs):
            nonlocal passes
            out = infer(*args, **kwargs)
            passes += 1
            bars(runner.name, passes, max(max_new_tokens + 1, passes), "pass")
            return out

        runner.infer = counted
        return
    count = 0  # layers run so far, over every pass

    def heard(_stage: str, _done: int, layers: int, _unit: str = "it") -> None:
        nonlocal count
        count += 1
        bars("numpy reference", count, layers * max(max_new_tokens, -(-count // layers)), "layer")

    model.progress = heard


def _run(args: argparse.Namespace, generator: Generator, ids: np.ndarray | None, config, bars: Bars) -> int:
    if ids is not None:
        vocab = generator.vocab_size
        if vocab is not None and (ids.min() < 0 or ids.max() >= vocab):
            raise MxportError(f"--input-ids {args.input_ids}: ids must be in [0, {vocab}), found "
                              f"min {ids.min()} max {ids.max()}")
        if args.logits_out is not None:
            logits = generator.prompt_logits(ids)
            _save_atomic(args.logits_out, logits.astype(np.float32))
            bars.write(f"saved logits {list(logits.shape)} to {args.logits_out}")
        results = list(generator.generate(list(ids), config))
        bars.close()
        for result in results:
            print(" ".join(str(t) for t in result.token_ids))
        return 0
    for delta in generator.stream(args.prompt, config):
        if bars.enabled:  # the text starts: no bar over it
            bars.close()
            bars.enabled = False
        sys.stdout.write(delta.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise MxportError(f"--logits-out {path}: folder {path.parent} does not exist")
    write_file(path, lambda f: np.save(f, array))
