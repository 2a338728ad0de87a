"""Time to first token of a conversation's second turn with and without `mxport serve`'s prefix cache.

    python examples/prefix_ttft.py EXPORT_DIR [--prefix-tokens 1024] [--turn-tokens 32] [--reply-tokens 32]
                                   [--trials 5] [--json results.json]

Starts `mxport serve EXPORT_DIR` twice in a subprocess (serve_load.py's `server`): with `--prefix-cache-mb 0`,
then with the default cache. Per trial, on each: a shared prefix of `--prefix-tokens` random ids (a long system
prompt, new per trial, so a first turn never hits), then

    turn 1   prefix + a user turn (`--turn-tokens` ids): its greedy reply (`--reply-tokens` ids)
    turn 2   turn 1 + the reply + another user turn                 the conversation goes on
    user 2   prefix + another user's turn                           a second user, the same prefix
    user 3   prefix + a third user's turn                           a third one

all as /v1/completions token-id prompts, streamed (TTFT: from sending the request to its first token chunk).
(With window-sized caches user 2 finds no reusable prefix and stores the branch point, which user 3 reuses:
runtime/serve/prefix.py.) Reported: median TTFT per case and server, the ratio, and whether both servers' turn-2 replies are equal (greedy:
they must be). A script, not a test: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np

from serve_load import pct, server  # examples/serve_load.py: `mxport serve` in a subprocess on a free port

from mxport.contract.folder import read_manifest


def complete(base: str, prompt: list[int], max_tokens: int) -> tuple[float, list[int]]:
    """One streamed greedy completion: (seconds to the first token chunk, the reply's token ids)."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "return_token_ids": True}
    t0, first, ids = time.perf_counter(), None, []
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            raise SystemExit(f"HTTP {r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0].get("token_ids"):
                first = first or time.perf_counter()
                ids += choices[0]["token_ids"]
    return (first or time.perf_counter()) - t0, ids


def run(folder: Path, cache_mb: str, args, vocab: int) -> dict:
    times: dict[str, list[float]] = {"turn1": [], "turn2": [], "user2": [], "user3": []}
    replies = []
    with server(folder, 4, 8, extra=("--prefix-cache-mb", cache_mb)) as base:
        complete(base, [5, 6, 7], 4)  # warm-up
        for trial in range(args.trials):
            rng = np.random.default_rng(1000 + trial)
            ids = lambda n: [int(t) for t in rng.integers(3, vocab, n)]  # noqa: E731
            prefix = ids(args.prefix_tokens)
            turn1 = prefix + ids(args.turn_tokens)
            t, reply = complete(base, turn1, args.reply_tokens)
            times["turn1"].append(t)
            t, reply2 = complete(base, turn1 + reply + ids(args.turn_tokens), args.reply_tokens)
            times["turn2"].append(t)
            replies.append(reply2)
            for user in ("user2", "user3"):
                times[user].append(complete(base, prefix + ids(args.turn_tokens), args.reply_tokens)[0])
        health = httpx.get(f"{base}/health").json()
    return {"cache_mb": cache_mb, "replies": replies, "prefix_cache": health.get("prefix_cache"),
            **{f"{k}_ms": 1e3 * pct(v, 50) for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--prefix-tokens", type=int, default=1024)
    ap.add_argument("--turn-tokens", type=int, default=32)
    ap.add_argument("--reply-tokens", type=int, default=32)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    vocab = read_manifest(args.folder).config.get("vocab_size", 512)
    off, on = run(args.folder, "0", args, vocab), run(args.folder, "1024", args, vocab)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.prefix_tokens}-token prefix, median of {args.trials}")
    for case in ("turn1", "turn2", "user2", "user3"):
        a, b = off[f"{case}_ms"], on[f"{case}_ms"]
        print(f"  {case:7s} TTFT  no cache {a:8.1f} ms   prefix cache {b:8.1f} ms   {a / b:5.1f}x lower")
    print(f"  greedy turn-2 replies equal: {off['replies'] == on['replies']}; cache: {on['prefix_cache']}")
    if args.json:
        args.json.write_text(json.dumps({"off": off, "on": on, "loadavg": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
