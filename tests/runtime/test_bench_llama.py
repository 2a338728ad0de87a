"""llama.cpp as a bench peer (runtime/bench/llama.py), with a fake llama.cpp build: a llama-bench script printing
llama-bench's JSON, a llama-quantize that copies, and a convert_hf_to_gguf.py whose pre-tokenizer check fails as
the real one does on a synthetic tokenizer. The real build is used by the last test, which skips without one."""

from __future__ import annotations

import inspect
import json
import os
import struct
import sys
from pathlib import Path

import pytest

from mxport.errors import MxportError
from mxport.runtime.bench import llama, speed

# llama-bench's JSON for -p P -n N -d 0,P: pp and tg at depth 0 and at depth P; speeds tell the tests apart
FAKE_BENCH = """#!{python}
import json, sys
args = sys.argv[1:]
log = {log!r}
open(log, "a").write(json.dumps(args) + "\\n")
get = lambda flag: args[args.index(flag) + 1]
p, n = int(get("-p")), int(get("-n"))
depths = [int(d) for d in get("-d").split(",")]
rows = []
for d in depths:
    rows.append(dict(n_prompt=p, n_gen=0, n_depth=d, avg_ts=1000.0 + d, samples_ts=[900.0 + d, 1000.0 + d]))
    rows.append(dict(n_prompt=0, n_gen=n, n_depth=d, avg_ts=100.0 + d, samples_ts=[90.0 + d, 50.0 + d]))
print("llama-bench noise before the JSON")
print(json.dumps(rows, indent=2))
"""
FAKE_QUANTIZE = """#!{python}
import shutil, sys
shutil.copyfile(sys.argv[1], sys.argv[2])
"""
FAKE_BASE = """class TextModel:
    def get_vocab_base_pre(self, tokenizer):
        raise NotImplementedError("BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")
"""
# writes a GGUF holding the pre-tokenizer name and three tensors; counts its runs in calls.log
FAKE_CONVERT = """import struct, sys
from pathlib import Path
from conversion.base import TextModel
{write_gguf}

def main():
    args = sys.argv[1:]
    out = args[args.index("--outfile") + 1]
    open({calls!r}, "a").write(args[args.index("--outtype") + 1] + "\\n")
    write_gguf(out, {{"general.architecture": "gpt-oss", "gpt-oss.expert_count": 4, "gpt-oss.expert_used_count": 2,
                     "tokenizer.ggml.pre": TextModel().get_vocab_base_pre(None)}},
               [("token_embd.weight", [16, 10], 640), ("output.weight", [16, 10], 640),
                ("blk.0.ffn_up_exps.weight", [16, 16, 4], 4096)])
"""


def write_gguf(path, meta: dict, tensors: list[tuple[str, list[int], int]]) -> None:
    """A GGUF v3 file: string / uint32 metadata, tensors (name, dims innermost first, bytes) at 32-byte offsets."""
    s = lambda text: struct.pack("<Q", len(text.encode())) + text.encode()  # noqa: E731
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for key, value in meta.items():
        head += s(key) + (struct.pack("<I", 8) + s(value) if isinstance(value, str) else struct.pack("<II", 4, value))
    offset, body = 0, b""
    for name, dims, size in tensors:
        head += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", 0, offset)
        body += b"\1" * size + b"\0" * (-size % 32)
        offset += size + (-size % 32)
    Path(path).write_bytes(head + b"\0" * (-len(head) % 32) + body)


@pytest.fixture
def fake_build(tmp_path):
    """A CMake-like llama.cpp build in build/bin, its source tree named by build/CMakeCache.txt."""
    src, bin_ = tmp_path / "src", tmp_path / "build" / "bin"
    (src / "conversion").mkdir(parents=True)
    bin_.mkdir(parents=True)
    (src / "conversion" / "__init__.py").write_text("")
    (src / "conversion" / "base.py").write_text(FAKE_BASE)
    (src / "convert_hf_to_gguf.py").write_text(FAKE_CONVERT.format(write_gguf=inspect.getsource(write_gguf),
                                                                    calls=str(tmp_path / "calls.log")))
    (tmp_path / "build" / "CMakeCache.txt").write_text(f"CMAKE_HOME_DIRECTORY:INTERNAL={src}\n")
    for name, text in (("llama-bench", FAKE_BENCH), ("llama-quantize", FAKE_QUANTIZE)):
        (bin_ / name).write_text(text.format(python=sys.executable, log=str(tmp_path / "bench.log")))
        (bin_ / name).chmod(0o755)
    return tmp_path


def test_find_llama_from_the_binary_or_the_environment(fake_build, tmp_path):
    found = llama.find_llama(fake_build / "build" / "bin" / "llama-bench")
    assert found.convert == (fake_build / "src" / "convert_hf_to_gguf.py").resolve()
    assert found.quantize == (fake_build / "build" / "bin" / "llama-quantize").resolve()
    assert llama.find_llama(None, {llama.ENV_DIR: str(fake_build / "build")}) == found
    with pytest.raises(MxportError, match="llama.cpp not found: give --llama-bench PATH or set LLAMA_CPP_DIR"):
        llama.find_llama(None, {})
    with pytest.raises(MxportError, match=f"--llama-bench {tmp_path / 'nowhere'}: no executable llama-bench"):
        llama.find_llama(tmp_path / "nowhere")
    (fake_build / "build" / "CMakeCache.txt").unlink()
    with pytest.raises(MxportError, match="convert_hf_to_gguf.py not found"):
        llama.find_llama(fake_build / "build" / "bin" / "llama-bench")


def test_gguf_types_follow_the_mxport_mode():
    from mxport.contract.folder import Manifest

    assert [llama.gguf_type(Manifest(experts="none", dense=d)) for d in llama.GGUF_TYPES] == \
        ["f32", "bf16", "q8_0", "q4_0", "Q4_K_M"]
    assert [llama.gguf_type(Manifest(experts="mxfp4", dense=d)) for d in ("float32", "bfloat16", "int4")] == \
        ["f32", "bf16", "bf16"]
    assert llama.exactness("f32") == "exact" and llama.exactness("bf16") == "bf16 activations"
    assert llama.exactness("Q4_K_M") == "8-bit activations"
    assert llama.exactness("f32", experts=True) == "8-bit act. in experts"
    assert llama.exactness("bf16", experts=True) == "8-bit act. in experts, bf16 elsewhere"


def test_convert_names_the_pre_tokenizer_and_reuses_the_cache(fake_build, tiny_config, make_checkpoint, tmp_path):
    found = llama.find_llama(fake_build / "build" / "bin" / "llama-bench")
    ckpt = make_checkpoint(tiny_config)
    q4 = llama.convert(found, ckpt, "Q4_K_M", tmp_path / "cache")
    bf16 = llama.convert(found, ckpt, "bf16", tmp_path / "cache")  # the quantizer's input, already made
    assert llama.convert(found, ckpt, "Q4_K_M", tmp_path / "cache") == q4
    assert (tmp_path / "calls.log").read_text().split() == ["bf16"]  # one conversion for both types
    meta, tensors = llama.read_gguf(q4)
    assert meta["tokenizer.ggml.pre"] == "gpt-4o"  # the family's pre-tokenizer for an unknown hash
    assert [(name, size) for size, name, _, _ in tensors] == [
        ("token_embd.weight", 640), ("output.weight", 640), ("blk.0.ffn_up_exps.weight", 4096)]
    # untied embedding: one row of 10; experts: 2 of 4; the output whole
    assert llama.gguf_traffic(bf16) == (640 + 640 + 4096, 64 + 640 + 2048)
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_convert_errors_name_the_tool(fake_build, tiny_config, make_checkpoint, tmp_path):
    found = llama.find_llama(fake_build / "build" / "bin" / "llama-bench")
    (fake_build / "src" / "convert_hf_to_gguf.py").write_text("raise SystemExit('converter broke')")
    with pytest.raises(MxportError, match="llama.cpp's convert_hf_to_gguf.py on .*converter broke"):
        llama.convert(found, make_checkpoint(tiny_config), "f32", tmp_path / "cache")
    ckpt = make_checkpoint(tiny_config)
    (tmp_path / "cache2").mkdir()
    write_gguf(tmp_path / "cache2" / f"{ckpt.name}-{llama._fingerprint(ckpt)}-bf16.gguf", {}, [])  # made before
    with pytest.raises(MxportError, match="llama-quantize not found"):
        llama.convert(llama.LlamaCpp(found.bench, None, found.convert), ckpt, "q8_0", tmp_path / "cache2")


@pytest.mark.parametrize("damage", [b"NOPE", b"GGUF\3\0\0\0" + b"\xff" * 16, b"GGUF\3\0\0\0"])
def test_read_gguf_refuses_what_is_not_gguf(tmp_path, damage):
    (tmp_path / "x.gguf").write_bytes(damage)
    with pytest.raises(MxportError, match="x.gguf: (not a GGUF|GGUF version|truncated)"):
        llama.read_gguf(tmp_path / "x.gguf")


def test_llama_bench_json_gives_prefill_at_depth_0_and_decode_at_the_prompts_depth(fake_build, tmp_path):
    """The child runs llama-bench as bench runs every engine: its own process, best samples kept."""
    gguf = tmp_path / "m.gguf"
    write_gguf(gguf, {"general.architecture": "qwen3"}, [("token_embd.weight", [8, 4], 128)])
    env = {llama.ENV_BENCH: str(fake_build / "build" / "bin" / "llama-bench")}
    measured = speed._child("llama.cpp", str(gguf), 2, 16, 8, timeout=120, env=env)
    assert measured["prefill_s"] == pytest.approx(16 / 1000.0)  # pp at depth 0, best sample
    assert measured["decode_s"] == pytest.approx(8 / (90.0 + 16))  # tg at depth 16, best sample
    assert measured["weight_bytes"] == measured["bytes_per_token"] == 128  # tied: the table read whole
    assert measured["peak_rss"] > 0
    args = json.loads((fake_build / "bench.log").read_text().splitlines()[-1])
    assert args == ["-m", str(gguf), "-p", "16", "-n", "8", "-d", "0,16", "-t", "2", "-r", "3", "-o", "json"]
    with pytest.raises(MxportError, match="no test pp=16 tg=0 at depth 0"):
        llama.read_llama_bench("[]", 16, 8)


def test_a_llama_bench_killed_by_sigill_names_the_cause(tmp_path, monkeypatch):
    """A -march=native build whose AMX kernels trap on a VM (q8_0/q4_0/Q4_K_M here): the error says how to rebuild."""
    binary = tmp_path / "llama-bench"
    binary.write_text("#!/bin/sh\nkill -ILL $$\n")
    binary.chmod(0o755)
    monkeypatch.setenv(llama.ENV_BENCH, str(binary))
    with pytest.raises(MxportError, match="llama-bench exit -4.*SIGILL.*-mno-amx-tile"):
        llama.measure_llama(str(tmp_path / "m.gguf"), 2, 16, 8)


def test_bench_runs_llama_cpp_beside_mxport_interleaved(fake_build, tiny_config, make_checkpoint, tmp_path,
                                                         monkeypatch):
    """bench(peers=True) with the fake build: the llama.cpp engine of the mode's GGUF type, round 2 in reverse, the
    ratio table under the main one (transformers and genai left out: only the llama.cpp path is under test)."""
    ckpt = make_checkpoint(tiny_config)
    real_jobs = speed._jobs
    monkeypatch.setattr(speed, "_jobs", lambda folders, peers_of, *rest: real_jobs(folders, None, *rest))
    lines = []
    results, bandwidth = speed.bench(ckpt, peers=True, modes=["cpu/mxfp4/bfloat16+last"], prompt_len=8,
                                     new_tokens=4, rounds=2, work=tmp_path / "work", bandwidth_mb=1,
                                     llama_bench=fake_build / "build" / "bin" / "llama-bench", log=lines.append)
    names = [r.name for r in results]
    assert names == ["mxport cpu/mxfp4/bfloat16+last", "llama.cpp bf16"]
    assert all(not r.error for r in results), [r.error for r in results]
    mx, peer = results
    assert mx.peer == "llama.cpp bf16" and mx.exact == "exact"
    assert peer.prefill_tok_s == pytest.approx(1000.0) and peer.decode_tok_s == pytest.approx(98.0)
    assert peer.bytes_per_token == 64 + 640 + 2048  # the fake converter's GGUF: one row, the head, 2 of 4 experts
    running = [line.removeprefix("running ").split(" (round")[0] for line in lines if line.startswith("running")]
    assert running == names + names[::-1]
    text = speed.format_results(results, bandwidth)
    assert "against llama.cpp (mxport / llama.cpp, this run)" in text
    row = next(line for line in text.splitlines() if line.startswith("cpu/mxfp4/bfloat16+last  bf16"))
    assert f"{mx.prefill_tok_s / 1000.0:.2f}×" in row and f"{mx.decode_tok_s / 98.0:.2f}×" in row
    assert row.endswith("exact; 8-bit act. in experts, bf16 elsewhere")
    assert max(len(line) for line in text.splitlines()) <= speed.TABLE_WIDTH
    assert json.loads(json.dumps(speed.to_json(results, bandwidth)))["results"][0]["peer"] == "llama.cpp bf16"


def test_no_llama_cpp_named_is_skipped_and_logged(monkeypatch):
    monkeypatch.delenv(llama.ENV_DIR, raising=False)
    lines = []
    assert speed._find_llama(None, lines.append) is None
    assert lines == ["llama.cpp skipped: give --llama-bench PATH or set LLAMA_CPP_DIR to a llama.cpp build"]


def _real_build():
    """The llama.cpp build $LLAMA_CPP_DIR names, or None: CI's LLAMA_CPP_DIR is a source tree (the gguf engine's
    converter) without a built llama-bench."""
    try:
        return llama.find_llama(None) if os.environ.get(llama.ENV_DIR) else None
    except MxportError:
        return None


def test_real_llama_cpp_measures_the_tiny_preset(tiny_config, make_checkpoint, tmp_path):
    """With a real build: its converter and llama-bench run on the tiny gpt-oss checkpoint (MXFP4 experts)."""
    found = _real_build()
    if found is None:
        pytest.skip("no llama.cpp build with llama-bench (set LLAMA_CPP_DIR to one)")
    ckpt = make_checkpoint(tiny_config)
    gguf = llama.convert(found, ckpt, "bf16", tmp_path / "cache")
    meta, tensors = llama.read_gguf(gguf)
    assert meta["general.architecture"] == "gpt-oss" and meta["tokenizer.ggml.pre"] == "gpt-4o"
    measured = speed._child("llama.cpp", str(gguf), 1, 8, 4, timeout=600, env={llama.ENV_BENCH: str(found.bench)})
    assert "error" not in measured, measured
    assert measured["prefill_s"] > 0 and measured["decode_s"] > 0 and measured["bytes_per_token"] > 0


def test_bench_pair_example_runs_the_export_beside_the_gguf(fake_build, tiny_config, make_checkpoint, tmp_path,
                                                           capsys):
    """examples/bench_pair.py (docs/BENCHMARKS.md's gpt-oss-20b table) with the fake llama-bench: both engines in
    their bench children, round 2 reversed, the best speeds printed."""
    import runpy

    from mxport.exporter.export import export

    out = export(make_checkpoint(tiny_config), tmp_path / "cpu", target="cpu", progress=False)
    gguf = tmp_path / "m.gguf"
    write_gguf(gguf, {"general.architecture": "gpt-oss", "gpt-oss.expert_count": 4,
                      "gpt-oss.expert_used_count": 2}, [("output.weight", [16, 10], 640)])
    example = runpy.run_path(str(Path(__file__).parents[2] / "examples" / "bench_pair.py"))
    runs = example["main"]([str(out), str(gguf), "--llama-bench", str(fake_build / "build"), "--prompt-len", "8",
                            "--new-tokens", "4", "--json", str(tmp_path / "pair.json")])
    assert [len(runs["mxport"]), len(runs["llama.cpp"])] == [2, 2]
    assert all("error" not in m for ms in runs.values() for m in ms), runs
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed[:4]] == ["mxport", "llama.cpp", "llama.cpp", "mxport"]
    assert any(line.startswith("llama.cpp: prefill 1000.00 tok/s, decode 98.000 tok/s") for line in printed)
    assert json.loads((tmp_path / "pair.json").read_text())["mxport"][0]["prefill_s"] > 0
