"""`mxport export CKPT_DIR -o OUT_DIR [--target T] [--experts E] [--dense D] [--dtype D] [--accuracy-level N]
[--last-logits] [--full-cache] [--force] [--hidden-states] [--allow-non-finite] [--quiet]`: exporter/export.py's
export(), with progress bars (the lowering rules, the bytes written; on a terminal only,
mxport/commands/progress.py) and the lowering report's notes on stderr. The mode options' help is the mode table's
(mxport.contract.modes.help_text).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from mxport.commands.progress import Bars, add_quiet_option
from mxport.contract import modes


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT_DIR", help="checkpoint folder (config.json + *.safetensors)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="export folder to write")
    parser.add_argument("--target", default=modes.DEFAULTS["target"], help=modes.help_text("target"))
    defaults = ", ".join(f"{t} {e}" for t, e in modes.DEFAULT_EXPERTS.items())
    parser.add_argument("--experts", default=None, help=f"{modes.help_text('experts')} (default: {defaults}; "
                        "a checkpoint's float experts: portable float32, as stored)")
    parser.add_argument("--dtype", default=modes.DEFAULTS["dtype"], help=modes.help_text("dtype"))
    parser.add_argument("--dense", default=modes.DEFAULTS["dense"],
                        help=f"the linear layers outside the experts: {modes.help_text('dense')}")
    parser.add_argument("--last-logits", action="store_true",
                        help="logits of the last position only, [B,1,V] (faster prefill for generation)")
    parser.add_argument("--accuracy-level", type=int, default=modes.DEFAULT_ACCURACY_LEVEL, metavar="N",
                        help="CPU quantized GEMMs (int4 experts, --dense int8/int4), ORT's meaning: 4 = int8 "
                        "activations (fast, default), 0 = float32 activations (more exact, less memory, slower)")
    parser.add_argument("--full-cache", action="store_true",
                        help="sliding-window layers keep every cache slot (default: only the last window-1, "
                        "as transformers does; the full-attention layers always keep all)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    parser.add_argument("--hidden-states", action="store_true", help="add outputs hidden_states.{i} per layer")
    parser.add_argument("--allow-non-finite", action="store_true",
                        help="export weights holding NaN or infinity (default: refused, naming the tensor); "
                        "recorded in mxport.json")
    add_quiet_option(parser, "--no-progress")


def run(args: argparse.Namespace) -> int:
    from mxport.contract.folder import read_manifest
    from mxport.exporter.export import export

    start = time.monotonic()
    with Bars(args.quiet) as bars:
        out = export(args.checkpoint, args.output, target=args.target, experts=args.experts, dtype=args.dtype,
                     progress=bars, hidden_states=args.hidden_states, force=args.force, dense=args.dense,
                     last_logits=args.last_logits, window_cache=not args.full_cache,
                     accuracy_level=args.accuracy_level, allow_non_finite=args.allow_non_finite)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"exported {args.checkpoint} -> {out} ({size / 1e6:.1f} MB, {time.monotonic() - start:.1f}s)")
    lowering = read_manifest(out).lowering or {}
    refused = lowering.get("refused", [])
    reasons = Counter((r["rule"], r["reason"]) for r in refused)  # lowering rules that left nodes portable
    for (rule, reason), count in sorted(reasons.items()):
        what = "attention node(s) keep rotary outside GroupQueryAttention" if rule == "rotary_in_attention" \
            else f"node(s) kept portable by {rule}"
        print(f"note: {count} {what}: {reason}", file=sys.stderr)
    for rule, op_type in (("linear_bf16", "LinearBF16"), ("linear_q4", "LinearQ4")):
        if lowering.get("applied", {}).get(rule):
            print(f"note: {op_type} runs natively in mxport's sessions; for onnxruntime-genai on this machine run "
                  f"`mxport kernels --into {out}` (without it the function body runs, at float32 speed)",
                  file=sys.stderr)
    return 0
