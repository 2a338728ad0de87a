"""`mxport synth`: write a synthetic checkpoint of any family's preset, or list what it would hold.

    mxport synth --preset mini --layout original -o ckpt [--seed S] [--float-experts] [--force]
    mxport synth --preset qwen3-30b-a3b --list            # the tensor table and totals, nothing written

The work is exporter/synth.py's (write_checkpoint, tensor_table, default_shard_bytes); this module parses the
options, draws the progress bar (on a terminal only; --quiet silences it) and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mxport.commands.progress import Bars, add_quiet_option
from mxport.errors import MxportError
from mxport.exporter.families.base import DecoderConfig
from mxport.exporter.synth import PRESETS, default_shard_bytes, tensor_table, write_checkpoint


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model shape (default tiny)")
    parser.add_argument("--layout", choices=("hf", "original"), default="hf", help="tensor names and config keys")
    parser.add_argument("-o", "--output", type=Path, help="output folder (written atomically)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--float-experts", "--dense-experts", dest="float_experts", action="store_true",
                        help="bf16 (float) experts instead of MXFP4 (hf only; --dense-experts is the old name)")
    parser.add_argument("--max-shard-bytes", type=int, default=None,
                        help="split into shards with an index (default: 5e9 bytes when the hf-layout checkpoint is "
                             "larger than that, as the published repos do; else one file)")
    parser.add_argument("--list", action="store_true", help="print the tensor table and totals, write nothing")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty output folder")
    add_quiet_option(parser)


def _config(args: argparse.Namespace) -> DecoderConfig:
    cfg = PRESETS[args.preset]
    if args.float_experts and not hasattr(cfg, "experts_mxfp4"):
        raise MxportError(f"--float-experts: preset {args.preset!r} ({cfg.family.name}) has no MXFP4 experts")
    return cfg.replace(experts_mxfp4=False) if args.float_experts else cfg


def _shard_bytes(args: argparse.Namespace, cfg: DecoderConfig) -> int | None:
    if args.max_shard_bytes is not None:
        if args.max_shard_bytes <= 0:
            raise MxportError(f"--max-shard-bytes must be positive, found {args.max_shard_bytes}")
        return args.max_shard_bytes
    return default_shard_bytes(cfg, args.layout)


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    shard_bytes = _shard_bytes(args, cfg)
    if args.list:
        print(tensor_table(cfg, args.layout, shard_bytes))  # raises first on a layout the family does not have
        return 0
    if args.output is None:
        raise MxportError("synth: -o/--output is required (or use --list)")
    with Bars(args.quiet) as bars:
        path = write_checkpoint(args.output, cfg, layout=args.layout, seed=args.seed, max_shard_bytes=shard_bytes,
                                overwrite=args.force, progress=bars)
    print(f"wrote {args.preset} ({args.layout} layout, seed {args.seed}) to {path}")
    return 0
