"""CPU cost of JSON-schema constrained decoding with llguidance, xgrammar and outlines-core on this project's
tokenizers: the time to compile a schema for a tokenizer and the time per token to compute the next-token mask
while walking a valid JSON document token by token (what the server pays per constrained row and step).

    python examples/grammar_bench.py [--tokenizer FOLDER_OR_FILE ...] [--repeat 3]

Without --tokenizer it uses the built-in gpt-oss chat model's tokenizer (mxport/data/chat-tiny) and the synthetic
Qwen3 tiny tokenizer. A library that is not installed is skipped (only llguidance is a dependency of mxport:
`pip install xgrammar outlines-core` to compare). A script, not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags", "address", "kind"],
          "properties": {"name": {"type": "string", "maxLength": 40},
                         "age": {"type": "integer", "minimum": 0, "maximum": 150},
                         "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
                         "address": {"type": "object", "additionalProperties": False, "required": ["city", "zip"],
                                     "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}},
                         "kind": {"enum": ["person", "robot", "other"]}}}
DOC = {"name": "Ada Lovelace", "age": 36, "tags": ["math", "poetry", "engines"],
       "address": {"city": "London", "zip": "W1"}, "kind": "person"}


def tokenizers(args) -> dict[str, Path]:
    if args.tokenizer:
        return {Path(t).name: Path(t) / "tokenizer.json" if Path(t).is_dir() else Path(t) for t in args.tokenizer}
    from mxport.exporter.families.qwen3.tokenizer import write_synth_files
    from mxport.exporter.synth import PRESETS

    root = Path(__file__).resolve().parents[1]
    qwen = Path(tempfile.mkdtemp(prefix="grammar_bench_"))
    write_synth_files(PRESETS["qwen3-tiny"], qwen)
    return {"gpt-oss chat-tiny": root / "mxport/data/chat-tiny/tokenizer.json", "qwen3-tiny": qwen / "tokenizer.json"}


def bench_llguidance(path: Path, ids: list[int], vocab: int) -> tuple[float, float]:
    import llguidance
    import llguidance.numpy as lln

    tok = llguidance.LLTokenizer(path.read_text(encoding="utf-8"), n_vocab=vocab)
    t0 = time.perf_counter()
    matcher = llguidance.LLMatcher(tok, llguidance.LLMatcher.grammar_from_json_schema(SCHEMA))
    compile_s = time.perf_counter() - t0
    mask = lln.allocate_token_bitmask(1, vocab)
    t0 = time.perf_counter()
    for t in ids:
        lln.fill_next_token_bitmask(matcher, mask)
        assert (mask[0, t // 32] >> (t % 32)) & 1, f"llguidance refused token {t}: {matcher.get_error()}"
        matcher.consume_token(t)
    return compile_s, (time.perf_counter() - t0) / len(ids)


def bench_xgrammar(path: Path, ids: list[int], vocab: int) -> tuple[float, float]:
    import xgrammar as xgr
    from transformers import PreTrainedTokenizerFast

    info = xgr.TokenizerInfo.from_huggingface(PreTrainedTokenizerFast(tokenizer_file=str(path)), vocab_size=vocab)
    t0 = time.perf_counter()
    compiled = xgr.GrammarCompiler(info, cache_enabled=False).compile_json_schema(json.dumps(SCHEMA))
    matcher = xgr.GrammarMatcher(compiled)
    compile_s = time.perf_counter() - t0
    mask = xgr.allocate_token_bitmask(1, vocab)
    t0 = time.perf_counter()
    for t in ids:
        matcher.fill_next_token_bitmask(mask)
        assert (int(mask[0, t // 32]) >> (t % 32)) & 1, f"xgrammar refused token {t}"
        assert matcher.accept_token(t)
    return compile_s, (time.perf_counter() - t0) / len(ids)


def bench_outlines(path: Path, ids: list[int], vocab: int) -> tuple[float, float]:
    import outlines_core as oc
    from outlines_core.json_schema import build_regex_from_schema

    from mxport.runtime.generation.tokenizer import Tokenizer

    tok = Tokenizer.from_file(path)
    special = tok.special_ids()
    pieces: dict[bytes, list[int]] = {}
    for i in range(tok.vocab_size):
        if i not in special and (raw := tok.token_bytes(i)):
            pieces.setdefault(raw, []).append(i)
    eos = tok.token_to_id("<|endoftext|>") or tok.token_to_id("<|return|>")
    t0 = time.perf_counter()
    index = oc.Index(build_regex_from_schema(json.dumps(SCHEMA)), oc.Vocabulary(eos, pieces))
    guide = oc.Guide(index)
    compile_s = time.perf_counter() - t0
    mask = np.zeros((vocab + 31) // 32, np.int32)
    t0 = time.perf_counter()
    for t in ids:
        guide.write_mask_into(mask.ctypes.data, mask.size, 4)
        assert (int(mask[t // 32]) >> (t % 32)) & 1, f"outlines-core refused token {t}"
        guide.advance(t)
    return compile_s, (time.perf_counter() - t0) / len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", action="append", help="a tokenizer.json (or a folder holding one); repeatable")
    ap.add_argument("--repeat", type=int, default=3, help="runs per library (the best is reported)")
    args = ap.parse_args()
    from tokenizers import Tokenizer

    for name, path in tokenizers(args).items():
        tok = Tokenizer.from_file(str(path))
        vocab = tok.get_vocab_size(with_added_tokens=True)
        ids = tok.encode(json.dumps(DOC, separators=(",", ":")), add_special_tokens=False).ids
        print(f"{name}: vocab {vocab}, document of {len(ids)} tokens")
        for lib, fn in (("llguidance", bench_llguidance), ("xgrammar", bench_xgrammar),
                        ("outlines-core", bench_outlines)):
            try:
                runs = [fn(path, ids, vocab) for _ in range(args.repeat)]
            except ImportError as exc:
                print(f"  {lib:14s} skipped ({exc})")
                continue
            print(f"  {lib:14s} compile {min(r[0] for r in runs) * 1e3:8.2f} ms   "
                  f"mask {min(r[1] for r in runs) * 1e6:8.1f} us/token")


if __name__ == "__main__":
    main()
