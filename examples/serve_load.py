"""Load benchmark of `mxport serve`: N concurrent streaming clients x M requests, at several N, against one server.

    python examples/serve_load.py EXPORT_DIR [--clients 1,4,16] [--requests 4] [--max-tokens 64]
                                  [--prompt-tokens 32] [--serial] [--json-schema] [--json results.json]
                                  [--ray 1x2,2x1] [--routing prefix,random] [--turns]

Starts `mxport serve EXPORT_DIR` in a subprocess on a free port (so the clients do not share the server's Python
interpreter), sends one warm-up request, then for each N runs N asyncio clients (httpx) that each send M
streaming /v1/completions requests one after another: random prompt ids (seeded), greedy, `max_tokens`,
`stream_options.include_usage`. Every request must succeed (HTTP 200, a usage chunk, [DONE]). Reported per N:

    agg tok/s   completion tokens of all requests / wall time of the phase (prefill included)
    TTFT        time from sending a request to its first token chunk (p50, p95)
    per-token   (last chunk - first chunk) / (tokens - 1) per request (p50, p95)

`--serial` adds the same loads against a second server started with --max-batch 1: requests are served one at
a time (what a server behind a lock does), the baseline for continuous batching. `--json-schema` runs the loads
as /v1/chat/completions instead, twice on the same server: plain, then with `response_format` json_schema
(SCHEMA below: constrained decoding, runtime/generation/constrain.py), the same prompts (`prompt-tokens` random
words), so the two rows differ by the grammar only; a chat reply's first token is its first reasoning or
content chunk (the role chunk is not counted). `--abuse` measures instead a
short request's latency (10 tokens, greedy) alone and while two other clients keep sending 4 x 300 kB stop
strings and 10 MB bodies (docs/SERVING.md "Limits and security"), with the abusers' status codes. A script, not
a test: the numbers depend on the machine and on what else runs on it.

`--ray RxT,...` runs the loads against `mxport serve --ray --replicas R --threads-per-replica T` instead (a local
Ray cluster per server; docs/SCALING.md), once per `--routing` (prefix: a conversation stays on one replica;
random: Ray's power of two choices). `--turns` makes each request of a client a turn of one conversation
(completions): turn k's prompt is turn k-1's prompt, its reply's ids and `--prompt-tokens` new ids (the
multi-turn workload that prefix routing is for); the engine line is left out for Ray servers (each replica has
its own /health). Every row records /proc/loadavg at its start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from mxport.contract.folder import read_manifest


@contextmanager
def server(folder: Path, max_batch: int, max_queue: int, ray: tuple[int, int, str] | None = None,
           extra: tuple[str, ...] = ()):
    """`mxport serve` on a free port; `ray` = (replicas, threads per replica, routing) adds --ray; `extra`: more
    flags."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mxport", "serve", str(folder), "--port", str(port), "--model-name", "bench",
           "--max-batch", str(max_batch), "--max-queue", str(max_queue), *extra]
    if ray:
        cmd += ["--ray", "--replicas", str(ray[0]), "--threads-per-replica", str(ray[1]), "--routing", ray[2]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not become healthy in 300 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(90)


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "population", "tags", "kind"],
          "properties": {"city": {"type": "string", "maxLength": 24},
                         "population": {"type": "integer", "minimum": 0, "maximum": 10**8},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
                         "kind": {"enum": ["capital", "town", "village"]}}}
WORDS = "the city river north old market bridge tower people night summer stone garden harbour".split()


def request_body(mode: str, prompt: list[int], max_tokens: int) -> tuple[str, dict]:
    """(path, body) of one request: completions with token ids, or chat (mode 'chat' / 'chat+schema')."""
    body = {"model": "bench", "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if mode in ("completions", "turns"):  # turns: the reply's token ids too (the next turn's history)
        return "/v1/completions", {**body, "prompt": prompt, **({"return_token_ids": True} if mode == "turns" else {})}
    body["messages"] = [{"role": "user", "content": " ".join(WORDS[t % len(WORDS)] for t in prompt)}]
    if mode == "chat+schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}
    return "/v1/chat/completions", body


async def one_request(client: httpx.AsyncClient, base: str, prompt: list[int], max_tokens: int,
                      mode: str = "completions") -> dict:
    path, body = request_body(mode, prompt, max_tokens)
    t0 = time.perf_counter()
    first = last = None
    tokens, done, ids = 0, False, []
    async with client.stream("POST", f"{base}{path}", json=body) as r:
        if r.status_code != 200:
            return {"ok": False, "error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            now = time.perf_counter()
            if chunk["choices"] and chunk["choices"][0].get("delta") != {"role": "assistant", "content": ""}:
                first = first or now
                last = now
                ids += chunk["choices"][0].get("token_ids") or []
            elif chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    ok = done and tokens > 0 and first is not None
    return {"ok": ok, "ttft": (first or t0) - t0, "tokens": tokens, "ids": ids,
            "per_token": (last - first) / (tokens - 1) if ok and tokens > 1 else None,
            "error": None if ok else "no [DONE] / usage / token chunk"}


async def phase(base: str, clients: int, requests: int, max_tokens: int, prompt_tokens: int, vocab: int,
                seed: int, mode: str = "completions") -> dict:
    rng = np.random.default_rng(seed)
    prompts = [[[int(t) for t in rng.integers(3, vocab, prompt_tokens)] for _ in range(requests)]
               for _ in range(clients)]
    limits = httpx.Limits(max_connections=clients + 4)
    loadavg = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else None
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def run_client(c: int) -> list[dict]:
            out, history = [], []
            for p in prompts[c]:  # turns: one conversation, each prompt the whole history so far
                history = [*history, *p] if mode == "turns" else p
                out.append(await one_request(client, base, history, max_tokens, mode))
                history = [*history, *out[-1].get("ids", [])]
            return out

        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(run_client(c) for c in range(clients))) for r in rs]
        wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    ttft = [r["ttft"] for r in ok]
    per_token = [r["per_token"] for r in ok if r["per_token"] is not None]
    return {
        "clients": clients, "requests": len(results), "ok": len(ok), "loadavg": loadavg,
        "errors": sorted({r["error"] for r in results if not r["ok"]}),
        "tokens": sum(r["tokens"] for r in ok), "wall_s": wall,
        "agg_tok_s": sum(r["tokens"] for r in ok) / wall,
        "ttft_p50_ms": 1e3 * pct(ttft, 50), "ttft_p95_ms": 1e3 * pct(ttft, 95),
        "tok_p50_ms": 1e3 * pct(per_token, 50), "tok_p95_ms": 1e3 * pct(per_token, 95),
    }


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_loads(folder: Path, args, max_batch: int, label: str, vocab: int,
              modes: tuple[str, ...] = ("completions",), ray=None) -> list[dict]:
    rows = []
    with server(folder, max_batch, max_queue=max(args.clients) * 2, ray=ray) as base:
        for mode in modes:
            for w in range(2 * ray[0] if ray else 1):  # warm-up (each replica, most likely, with Ray)
                asyncio.run(phase(base, 1, 1, 8, args.prompt_tokens, vocab, seed=99 + w, mode=mode))
            for n in args.clients:
                before = None if ray else httpx.get(f"{base}/health").json()
                row = asyncio.run(phase(base, n, args.requests, args.max_tokens, args.prompt_tokens, vocab, seed=n,
                                        mode=mode))
                row["engine"] = None if ray else engine_delta(before, httpx.get(f"{base}/health").json())
                row["server"] = label if mode == "completions" else f"{label} {mode}"
                rows.append(row)
                print(fmt(row), flush=True)
    return rows


def engine_delta(before: dict, after: dict) -> dict:
    """What the engine did during a phase (from /health): model-call seconds, prefill calls, mean batch rows."""
    sec = {k: after["seconds"][k] - before["seconds"][k] for k in after["seconds"]}
    steps = after["decode_steps"] - before["decode_steps"]
    return {"prefill_s": sec["prefill"], "decode_s": sec["decode"], "batch_s": sec["batch"], "decode_steps": steps,
            "prefills": after["prefills"] - before["prefills"],
            "mean_rows": (after["rows_decoded"] - before["rows_decoded"]) / max(steps, 1)}


def fmt(r: dict) -> str:
    e = r["engine"]
    head = (f"{r['server']:<26} {r['clients']:>3} clients  {r['ok']:>3}/{r['requests']:<3} ok  "
            f"{r['tokens']:>5} tok in {r['wall_s']:6.1f} s = {r['agg_tok_s']:7.1f} tok/s   "
            f"TTFT p50 {r['ttft_p50_ms']:7.1f} p95 {r['ttft_p95_ms']:7.1f} ms   "
            f"per-token p50 {r['tok_p50_ms']:6.1f} p95 {r['tok_p95_ms']:6.1f} ms   loadavg {r['loadavg']}")
    if e is None:
        return head + (f"   errors: {r['errors']}" if r["errors"] else "")
    return (head + "\n"
            f"{'':<26} engine: {e['prefills']} prefill calls {e['prefill_s']:.1f} s, {e['decode_steps']} decode steps "
            f"{e['decode_s']:.1f} s (mean {e['mean_rows']:.1f} rows, {e['decode_steps'] and 1e3 * e['decode_s'] / e['decode_steps']:.0f} ms/step), "
            f"batch surgery {e['batch_s']:.2f} s"
            + (f"   errors: {r['errors']}" if r["errors"] else ""))


def abuse(folder: Path, vocab: int) -> int:
    """A short request alone, then while abusers send huge stop strings and bodies; exit 1 unless its latency
    stays within 3x alone (or +3 s) and every abusive request got a 4xx."""
    import threading

    short = {"model": "bench", "prompt": [int(t) for t in np.random.default_rng(0).integers(3, vocab, 16)],
             "max_tokens": 10, "temperature": 0}
    stops = json.dumps({"model": "bench", "prompt": "Hi", "max_tokens": 50,
                        "stop": ["x" * 300_000 + c for c in "abcd"]}).encode()
    huge = json.dumps({"model": "bench", "prompt": "a" * 10_000_000}).encode()
    with server(folder, 16, 64) as base:
        def latency() -> float:
            t0 = time.perf_counter()
            r = httpx.post(f"{base}/v1/completions", json=short, timeout=120)
            if r.status_code != 200:
                raise SystemExit(f"the short request failed: HTTP {r.status_code} {r.text[:200]}")
            return time.perf_counter() - t0

        latency()  # warm-up
        alone = [latency() for _ in range(5)]
        statuses: list[int] = []
        done = threading.Event()

        def attack(body: bytes) -> None:
            with httpx.Client(timeout=120) as c:
                while not done.is_set():
                    statuses.append(c.post(f"{base}/v1/completions", content=body,
                                           headers={"content-type": "application/json"}).status_code)

        threads = [threading.Thread(target=attack, args=(b,)) for b in (stops, huge)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        during = [latency() for _ in range(5)]
        done.set()
        for t in threads:
            t.join()
    a, d = float(np.median(alone)), max(during)
    ok = d <= max(3 * a, a + 3) and statuses and all(400 <= s < 500 for s in statuses)
    print(f"short request alone: median {1e3 * a:.0f} ms; under abuse: max {1e3 * d:.0f} ms "
          f"(median {1e3 * float(np.median(during)):.0f} ms); abusive requests: {len(statuses)}, statuses "
          f"{sorted(set(statuses))}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="exported folder with tokenizer.json")
    p.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    p.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16, help="--max-batch of the batching server")
    p.add_argument("--serial", action="store_true", help="also run the loads against a --max-batch 1 server")
    p.add_argument("--json", type=Path, default=None, help="write the rows as JSON")
    p.add_argument("--abuse", action="store_true", help="measure a short request's latency under abuse instead")
    p.add_argument("--json-schema", action="store_true",
                   help="chat requests, plain and with response_format json_schema, instead of completions")
    p.add_argument("--ray", default=None, help="comma-separated REPLICASxTHREADS: serve with --ray instead")
    p.add_argument("--routing", default="prefix", help="with --ray: comma-separated prefix / random")
    p.add_argument("--turns", action="store_true", help="each client's requests are the turns of one conversation")
    args = p.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    vocab = int(read_manifest(args.folder).config["vocab_size"])
    if args.abuse:
        return abuse(args.folder, vocab)
    modes = ("chat", "chat+schema") if args.json_schema else ("turns",) if args.turns else ("completions",)
    if args.ray:
        rows = []
        for shape in args.ray.split(","):
            replicas, threads = (int(x) for x in shape.lower().split("x"))
            for routing in args.routing.split(","):
                rows += run_loads(args.folder, args, args.max_batch, f"ray {replicas}x{threads} {routing}", vocab,
                                  modes, ray=(replicas, threads, routing))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return 1 if sum(r["requests"] - r["ok"] for r in rows) else 0
    rows = run_loads(args.folder, args, args.max_batch, f"batch {args.max_batch}", vocab, modes)
    if args.serial:
        rows += run_loads(args.folder, args, 1, "one at a time", vocab, modes)
    failed = sum(r["requests"] - r["ok"] for r in rows)
    base = next((r["agg_tok_s"] for r in rows if r["clients"] == 1), None)
    top = [r for r in rows if r["server"] == rows[0]["server"] and r["clients"] == max(args.clients)]
    if base and top:
        print(f"aggregate tok/s at {max(args.clients)} clients / 1 client: {top[0]['agg_tok_s'] / base:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if failed:
        print(f"{failed} request(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
