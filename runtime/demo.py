"""`mxport demo`: the whole path on a tiny built-in gpt-oss, with no download.

    tiny checkpoint + harmony tokenizer  (synth PRESETS["tiny"]; built once, cached)
        -> export (ONNX, ai.mxport ops)  -> verify against the NumPy reference model
        -> one harmony chat turn on ONNX Runtime -> a short table

Cache: --cache-dir, else $XDG_CACHE_HOME/mxport/demo, else ~/.cache/mxport/demo. --fresh rebuilds it.
The weights are random, so the chat reply is noise: the demo shows that the pipeline runs and that the numbers
agree, not that the tiny model can talk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from mxport.errors import MxportError
from mxport.files import replace_dir, temp_dir_beside

CACHE_VERSION = "tiny-v1"  # bump when the demo checkpoint recipe changes
PROMPT = "What is 2 + 2?"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mxport" / "demo"


def demo_config():
    """PRESETS['tiny'] with eos / pad ids of the demo tokenizer (harmony stops <|return|>, <|call|>)."""
    from mxport.exporter.synth import PRESETS
    from mxport.runtime.tokenizer import build_harmony_tokenizer

    base = PRESETS["tiny"]
    tok = build_harmony_tokenizer(base.vocab_size)
    cfg = base.replace(eos_token_ids=(tok.require("<|return|>"), tok.require("<|call|>")),
                       pad_token_id=tok.require("<|endoftext|>"))
    return cfg, tok


def ensure_checkpoint(cache: Path, fresh: bool = False, log=print) -> Path:
    """The cached tiny checkpoint folder (config.json, model.safetensors, tokenizer.json), built when missing."""
    from mxport.exporter.config import ModelConfig
    from mxport.exporter.synth import write_checkpoint

    cfg, tok = demo_config()
    ckpt = cache / CACHE_VERSION / "checkpoint"
    if ckpt.exists() and not fresh:
        try:
            ok = (ModelConfig.from_file(ckpt / "config.json") == cfg and (ckpt / "tokenizer.json").is_file()
                  and any(ckpt.glob("*.safetensors")))
        except MxportError:
            ok = False
        if ok:
            log(f"using cached tiny checkpoint {ckpt}")
            return ckpt
    log(f"building tiny checkpoint + tokenizer in {ckpt}")
    tmp = temp_dir_beside(ckpt)
    try:
        write_checkpoint(tmp / "ckpt", cfg, seed=0)
        tok.save(tmp / "ckpt" / "tokenizer.json")
        replace_dir(tmp / "ckpt", ckpt)  # a cached checkpoint goes only once the new one is complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ckpt


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name.startswith("model.onnx"))


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default ~/.cache/mxport/demo)")
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached checkpoint")
    parser.add_argument("--prompt", default=PROMPT, help="the user message of the chat turn")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens of the chat reply at most")
    parser.add_argument("--provider", default="cpu", help="onnxruntime provider: cpu, cuda, auto")
    parser.add_argument("--reasoning", default="low", choices=("low", "medium", "high"))
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with the NumPy reference")


def run(args: argparse.Namespace) -> int:
    from mxport.exporter.export import export
    from mxport.runtime.chat import ChatSession
    from mxport.runtime.generate import Generator
    from mxport.runtime.harmony import SystemContent
    from mxport.runtime.session import resolve_provider

    if args.max_new_tokens < 1:
        raise MxportError(f"--max-new-tokens must be >= 1, found {args.max_new_tokens}")
    provider = resolve_provider(args.provider)
    cache = (args.cache_dir or default_cache_dir()).expanduser()
    log = lambda msg: print(f"[demo] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MxportError(f"--cache-dir {cache}: cannot create it ({exc.strerror})") from None

    ckpt = ensure_checkpoint(cache, args.fresh, log)
    out = cache / CACHE_VERSION / "export"
    log(f"exporting to {out}")
    t0 = time.perf_counter()
    export(ckpt, out, progress=False, force=True)
    export_s = time.perf_counter() - t0

    verdict, error = "skipped", "-"
    if not args.no_verify:
        from mxport.runtime.verify import verify

        log("verifying against the NumPy reference model")
        report = verify(out, ckpt, prompts=2, decode_steps=2, provider=provider, per_layer=False)
        verdict = "PASS" if report else "FAIL"
        row = next((r for r in report.worst() if r["name"] == "logits"), None)
        if row is not None:
            top1 = "-" if row["top1"] is None else f"{100 * row['top1']:.0f}%"
            error = f"logits max abs {row['max_abs']:.2e}, rel {row['rel']:.2e}, top-1 {top1}"
        if not report:
            print(report, file=sys.stderr)

    log(f"chat turn on onnxruntime {provider}")
    gen = Generator.from_folder(out, provider=provider)
    chat = ChatSession(gen, SystemContent(reasoning=args.reasoning))
    reply = chat.send(args.prompt, max_new_tokens=args.max_new_tokens)
    raw = gen.tokenizer.decode(chat.last_token_ids)
    prefill_s, total_s = chat.last_timing
    n_new, n_prompt = len(chat.last_token_ids), len(chat.last_prompt_ids)
    decode_rate = (n_new - 1) / (total_s - prefill_s) if n_new > 1 and total_s > prefill_s else float("nan")

    cfg = gen_cfg_line(ckpt)
    print(f"user:       {args.prompt}")
    print(f"assistant:  {raw!r}")
    print(f"  parsed:   {len(reply.messages)} message(s), final={reply.final!r}, stop={reply.stop}")
    print("  (random weights: the reply is noise; the numbers below are the point)")
    print()
    rows = [
        ("model", cfg),
        ("cache", str(cache / CACHE_VERSION)),
        ("export time", f"{export_s:.2f} s"),
        ("file size", f"{folder_bytes(out) / 1e6:.2f} MB (model.onnx + data)"),
        ("vs reference", f"{verdict}  {error}"),
        ("prefill", f"{n_prompt} tokens in {prefill_s * 1e3:.1f} ms ({n_prompt / max(prefill_s, 1e-9):.0f} tok/s)"),
        ("decode", f"{n_new} tokens, {decode_rate:.0f} tok/s ({provider})"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    print(f"\nnext: mxport chat {out}")
    return 0 if verdict != "FAIL" else 1


def gen_cfg_line(ckpt: Path) -> str:
    from mxport.exporter.config import ModelConfig

    c = ModelConfig.from_file(ckpt / "config.json")
    return (f"tiny gpt-oss: {c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_experts} experts "
            f"top-{c.experts_per_token} (MXFP4), {c.num_attention_heads}/{c.num_key_value_heads} heads, "
            f"window {c.sliding_window}, vocab {c.vocab_size}")
