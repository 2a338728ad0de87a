"""An mxport export beside a llama.cpp GGUF of the same checkpoint, for models too large for `mxport bench --peers`.

    python examples/bench_pair.py EXPORT GGUF --llama-bench PATH [--threads 2] [--prompt-len 128] [--new-tokens 32]
                                  [--rounds 2] [--json FILE]

`mxport bench --peers` also runs transformers and onnxruntime-genai in float32, which a 20b-shaped checkpoint does
not fit (40+ GB). Here only the two engines run, each in its own process through the bench child that `mxport
bench` uses (runtime/bench/speed.py: the same prefill, decode and peak RSS measurement), rounds alternating with
every second one reversed; the best speeds and the largest peak RSS per engine are printed with the load average
at each start. docs/BENCHMARKS.md's gpt-oss-20b table comes from this script.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mxport.runtime.bench import llama, speed


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export")
    ap.add_argument("gguf")
    ap.add_argument("--llama-bench", required=True, help="llama-bench or its build folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    found = llama.find_llama(args.llama_bench)
    engines = [("mxport", args.export, None), ("llama.cpp", args.gguf, {llama.ENV_BENCH: str(found.bench)})]
    runs: dict[str, list[dict]] = {"mxport": [], "llama.cpp": []}
    for r in range(args.rounds):
        for kind, path, env in engines if r % 2 == 0 else engines[::-1]:
            load = os.getloadavg()
            measured = speed._child(kind, path, args.threads, args.prompt_len, args.new_tokens, timeout=3600, env=env)
            runs[kind].append({**measured, "load": [round(v, 2) for v in load]})
            print(kind, json.dumps(runs[kind][-1]), flush=True)
    for kind, measured in runs.items():
        ok = [m for m in measured if "error" not in m]
        if not ok:
            print(f"{kind}: {measured[0]['error']}")
            continue
        print(f"{kind}: prefill {max(args.prompt_len / m['prefill_s'] for m in ok):.2f} tok/s, decode "
              f"{max(args.new_tokens / m['decode_s'] for m in ok):.3f} tok/s, peak RSS "
              f"{max(m['peak_rss'] for m in ok) / 2**20:.0f} MB, load at the starts {[m['load'] for m in measured]}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return runs


if __name__ == "__main__":
    import sys

    from mxport.errors import MxportError

    try:
        main()
    except MxportError as e:  # e.g. no llama-bench at --llama-bench: one line, exit 2
        print(f"bench_pair: {e}", file=sys.stderr)
        sys.exit(2)
