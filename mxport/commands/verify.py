"""`mxport verify OUT_DIR [--checkpoint CKPT_DIR] [--prompts N] [--decode-steps N] [--tolerance OUTPUT=VALUE]...
[--reference export|checkpoint] [--max-kl X] [--min-top1 X] [--json REPORT] [--quiet]`: runtime/judge/verify.py's
verify(); prints the report, exit code 1 when a tolerance (or the quantization budget given) fails. A progress bar
counts the reference model's layers over every call (on a terminal only; --quiet silences it).
`mxport verify --engine genai|onnx|gguf|transformers TARGET CHECKPOINT [--engine-io OURS=THEIRS]...`: another
engine under the same reference (runtime/judge/engines/run.py), same report, budget and exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path

from mxport.commands.progress import Bars, add_quiet_option
from mxport.contract import modes
from mxport.runtime.judge.engines import NAMES as ENGINE_NAMES


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export_dir", metavar="OUT_DIR", help="export folder (model.onnx + mxport.json); with "
                        "--engine, the engine's model: a genai folder, an .onnx file or folder, a .gguf file")
    parser.add_argument("checkpoint_arg", nargs="?", metavar="CHECKPOINT", help="checkpoint to compare with "
                        "(the same as --checkpoint)")
    parser.add_argument("--engine", choices=ENGINE_NAMES, default=None,
                        help="verify another engine's model (OUT_DIR) against the reference on CHECKPOINT: genai "
                        "(onnxruntime-genai folder), onnx (HF-style decoder ONNX), gguf (llama.cpp via "
                        "llama-cpp-python: the gguf extra), transformers (a checkpoint folder AutoModelForCausalLM loads: usually CHECKPOINT itself)")
    parser.add_argument("--engine-io", action="append", metavar="OURS=THEIRS", help="--engine onnx: the graph's "
                        "name for a model I/O name (input_ids, attention_mask, position_ids, logits, "
                        "past_key_values.%%d.key/.value, present.%%d.key/.value; THEIRS '-' for an absent mask or "
                        "positions); repeatable")
    parser.add_argument("--checkpoint", metavar="CKPT_DIR", help="checkpoint to compare with (default: from mxport.json)")
    parser.add_argument("--prompts", type=int, default=4, metavar="N", help="number of random prompts (default 4)")
    parser.add_argument("--decode-steps", type=int, default=4, metavar="N", help="cached decode steps after prefill (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt set (default 0)")
    parser.add_argument("--json", metavar="REPORT", help="write the full report as JSON to this file")
    parser.add_argument("--provider", default="CPUExecutionProvider", help="ONNX Runtime execution provider")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--tolerance",
        action="append",
        metavar="OUTPUT=VALUE",
        help="override a tolerance: OUTPUT=REL or OUTPUT:FIELD=VALUE, FIELD in rel/abs/top1/kl_mean/kl_max; "
        "OUTPUT may be a glob such as 'hidden_states.*' (repeatable)",
    )
    parser.add_argument("--reference-dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--reference", choices=modes.VERIFY_REFERENCES, default="export",
                        help="export (default): a lossy export is checked against the reference on its own quantized "
                        "numbers (experts "
                        + ", ".join(v for v in modes.values("experts") if not modes.MODES["experts"][v].exact)
                        + " and float experts encoded to mxfp4; dense "
                        + ", ".join(v for v in modes.values("dense") if not modes.MODES["dense"][v].exact)
                        + ") with float32 tolerances, its quantization error against the checkpoint reported beside "
                        "it (--dtype float16: on its float16 numbers, float16 tolerances); checkpoint: against the "
                        "checkpoint as stored, with lossy tolerances (always for --dtype bfloat16)")
    parser.add_argument("--max-kl", type=float, default=None, metavar="X",
                        help="budget of a lossy export's quantization error: fail when its mean KL against the "
                        "checkpoint (nats per position) exceeds X (default: reported, no budget)")
    parser.add_argument("--min-top1", type=float, default=None, metavar="X",
                        help="budget of a lossy export's quantization error: fail when its top-1 agreement with the "
                        "checkpoint is below X (0..1)")
    parser.add_argument("--max-prompt-len", type=int, default=None, metavar="N", help="cap the longest prompt")
    add_quiet_option(parser)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from mxport.errors import MxportError
    from mxport.files import write_file
    from mxport.contract.folder import model_path, read_manifest
    from mxport.runtime.judge.verify import default_tolerances, parse_budget, parse_tolerance_options, verify

    if args.checkpoint_arg is not None:
        if args.checkpoint is not None and args.checkpoint != args.checkpoint_arg:
            raise MxportError(f"CHECKPOINT {args.checkpoint_arg!r} and --checkpoint {args.checkpoint!r} differ")
        args.checkpoint = args.checkpoint_arg
    if args.engine is not None:
        return _run_engine(args)
    export_dir = Path(args.export_dir)
    if not export_dir.is_dir():
        raise MxportError(f"{export_dir}: no such export folder")
    model_path(export_dir)
    defaults, _ = default_tolerances(read_manifest(export_dir), args.reference)
    overrides = parse_tolerance_options(args.tolerance, defaults)
    budget = parse_budget(args.max_kl, args.min_top1)
    with Bars(args.quiet) as bars:  # the reference's layers over every call, on a terminal only
        report = verify(
            export_dir,
            checkpoint=args.checkpoint,
            prompts=args.prompts,
            decode_steps=args.decode_steps,
            seed=args.seed,
            tolerances=overrides,
            provider=args.provider,
            threads=args.threads,
            reference_dtype=np.dtype(args.reference_dtype),
            max_prompt_len=args.max_prompt_len,
            reference=args.reference,
            budget=budget,
            progress=bars,
        )
    print(report)
    if args.json:
        write_file(Path(args.json), lambda f: f.write((report.to_json() + "\n").encode()))
    return 0 if report else 1


def _run_engine(args: argparse.Namespace) -> int:
    import numpy as np

    from mxport.errors import MxportError
    from mxport.files import write_file
    from mxport.runtime.judge.engines import parse_io_names
    from mxport.runtime.judge.engines.run import verify_engine
    from mxport.runtime.judge.verify import parse_budget

    if args.checkpoint is None:
        raise MxportError("--engine: give the CHECKPOINT the reference runs (mxport verify --engine NAME TARGET CKPT)")
    if args.reference != "export":
        raise MxportError("--reference: with --engine the reference is always the checkpoint as stored")
    if args.engine_io and args.engine != "onnx":
        raise MxportError("--engine-io names the inputs and outputs of --engine onnx only")
    with Bars(args.quiet) as bars:
        report = verify_engine(args.engine, args.export_dir, args.checkpoint, prompts=args.prompts,
                               decode_steps=args.decode_steps, seed=args.seed, tolerance_specs=args.tolerance,
                               threads=args.threads, io_names=parse_io_names(args.engine_io),
                               budget=parse_budget(args.max_kl, args.min_top1), max_prompt_len=args.max_prompt_len,
                               reference_dtype=np.dtype(args.reference_dtype), provider=args.provider, progress=bars)
    print(report)
    if args.json:
        write_file(Path(args.json), lambda f: f.write((report.to_json() + "\n").encode()))
    return 0 if report else 1
