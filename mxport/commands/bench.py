"""`mxport bench CKPT_OR_OUT [--peers] [--llama-bench PATH] [--threads N] [--prompt-len N] [--new-tokens N] [--modes M,...] [--rounds N]
[--last-logits] [--profile] [--cache-mb MB] [--work DIR] [--json FILE] [--quiet]`: runtime/bench/speed.py's bench(), its table on stdout, step
lines on stderr and progress bars (exports, engine runs; on a terminal only, --quiet silences them); exit code 1
when an engine failed. `python -m mxport.commands.bench --child KIND PATH THREADS PROMPT NEW` is
one engine's measurement in its own process (runtime/bench/engines.py), its JSON on stdout for bench() to read."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mxport.commands.progress import Bars, add_quiet_option
from mxport.contract import modes


def register(parser: argparse.ArgumentParser) -> None:
    from mxport.runtime.bench.speed import DEFAULT_MODES, NO_EXPERTS_MODES

    parser.add_argument("path", metavar="CKPT_OR_OUT", help="a checkpoint folder or an export folder")
    parser.add_argument("--peers", action="store_true",
                        help="also measure transformers, onnxruntime-genai and llama.cpp (when a build is named)")
    parser.add_argument("--llama-bench", metavar="PATH",
                        help="llama.cpp's llama-bench binary (or its build folder) for --peers; default: "
                        "$LLAMA_CPP_DIR. Its converter and llama-quantize make the GGUFs (runtime/bench/llama.py)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every engine (default 2)")
    parser.add_argument("--prompt-len", type=int, default=128, help="prompt tokens for prefill (default 128)")
    parser.add_argument("--new-tokens", type=int, default=32, help="decode steps timed (default 32)")
    parser.add_argument("--modes", default=None,
                        help=f"{modes.LABEL_SYNTAX}[+last] modes to export from a checkpoint, comma-separated "
                        f"(default {','.join(DEFAULT_MODES)}; for models without experts "
                        f"{','.join(NO_EXPERTS_MODES)}); the values are `mxport export`'s")
    parser.add_argument("--rounds", type=int, default=1, help="passes over all engines, every second one in reverse; best speeds kept (default 1)")
    parser.add_argument("--last-logits", action="store_true",
                        help="export the modes with logits of the last position only (prefill for generation)")
    parser.add_argument("--profile", action="store_true",
                        help="also run each mxport engine under ORT's profiler: share of node time in MoE / matmuls "
                        "/ attention / other nodes, prefill and decode (runtime/bench/profile.py)")
    parser.add_argument("--cache-mb", type=float, default=None, metavar="MB",
                        help="the last-level cache in MB a decode step must exceed to get a bw share (default: the "
                        "largest CPU cache the kernel reports; a VM may report more than it gets)")
    parser.add_argument("--work", metavar="DIR", help="keep exports here (default: a temporary folder)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    add_quiet_option(parser)


def run(args: argparse.Namespace) -> int:
    from mxport.files import write_file
    from mxport.runtime.bench.speed import bench, format_results, to_json

    with Bars(args.quiet) as bars:
        results, bandwidth = bench(
            args.path, peers=args.peers, threads=args.threads, prompt_len=args.prompt_len,
            new_tokens=args.new_tokens, modes=[m for m in (args.modes or "").split(",") if m], work=args.work,
            rounds=args.rounds, last_logits=args.last_logits, llama_bench=args.llama_bench, profile=args.profile,
            cache_bytes=None if args.cache_mb is None else int(args.cache_mb * 1e6),
            log=bars.write,
            progress=bars,
        )
    print(format_results(results, bandwidth))
    if args.json:
        data = to_json(results, bandwidth, threads=args.threads, prompt_len=args.prompt_len,
                       new_tokens=args.new_tokens, rounds=args.rounds)
        write_file(Path(args.json), lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))
    return 0 if all(not r.error for r in results) else 1


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    from mxport.runtime.bench.engines import ENGINES

    _, _, kind, where, n_threads, n_prompt, n_new = sys.argv
    print(json.dumps(ENGINES[kind](where, int(n_threads), int(n_prompt), int(n_new))))
