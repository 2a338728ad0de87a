"""`mxport verify --engine gguf`: GGUFs made by llama.cpp's own converter from mxport's synthetic checkpoints, run by
llama.cpp through llama-cpp-python. Qwen3 in F32 is float32 math (PASS); gpt-oss's MXFP4 experts make llama.cpp
quantize activations (lossy: reported); gpt-oss with float experts in F32 fails only by llama.cpp's rounded YaRN,
which the reference with `truncate: true` reproduces. Runs where llama-cpp-python loads (the `gguf` extra) and
LLAMA_CPP_DIR names a llama.cpp checkout (its convert_hf_to_gguf.py); skipped elsewhere (docs/ENGINES.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mxport.cli import main

try:
    import llama_cpp  # noqa: F401  (its shared library loads at import)
except Exception as exc:  # not installed, or the library missing: ImportError, OSError, RuntimeError
    pytest.skip(f"llama-cpp-python not usable: {exc}", allow_module_level=True)
LLAMA_CPP_DIR = os.environ.get("LLAMA_CPP_DIR", "")
if not (Path(LLAMA_CPP_DIR) / "convert_hf_to_gguf.py").is_file():
    pytest.skip("LLAMA_CPP_DIR names no llama.cpp checkout (convert_hf_to_gguf.py)", allow_module_level=True)

from mxport.runtime.judge.engines.gguf import convert  # noqa: E402

QUICK = ["--prompts", "2", "--decode-steps", "2", "--quiet"]


def synth(tmp_path, preset, *extra):
    folder = tmp_path / (preset + "".join(extra))
    assert main(["synth", "--preset", preset, "-o", str(folder), "--quiet", *extra]) == 0
    return folder


def run(tmp_path, gguf, checkpoint, *extra) -> tuple[int, dict]:
    out = tmp_path / "report.json"
    rc = main(["verify", "--engine", "gguf", str(gguf), str(checkpoint), *QUICK, "--json", str(out), *extra])
    return rc, json.loads(out.read_text())


def test_qwen3_f32_gguf_is_float32_math(tmp_path):
    ckpt = synth(tmp_path, "qwen3-tiny")
    gguf = convert(ckpt, tmp_path / "q3.gguf", LLAMA_CPP_DIR, family="qwen3")
    rc, report = run(tmp_path, gguf, ckpt)
    assert rc == 0 and report["lossy"] is None and report["summary"][0]["rel"] <= 1e-4
    assert any("eval callback" in note for note in report["notes"])  # logits only, said in the report


def test_gpt_oss_gguf_errors_are_named(tmp_path):
    ckpt = synth(tmp_path, "tiny")
    gguf = convert(ckpt, tmp_path / "gt.gguf", LLAMA_CPP_DIR, family="gpt_oss")
    rc, report = run(tmp_path, gguf, ckpt)
    assert rc == 0 and "MXFP4" in report["lossy"] and "activations to 8 bits" in report["lossy"]
    assert report["quantization_error"]["rel"] > 1e-3  # llama.cpp's 8-bit activations
    assert any("truncate" in note for note in report["notes"])
    assert run(tmp_path, gguf, ckpt, "--max-kl", "1e-12")[0] == 1

    floats = synth(tmp_path, "tiny", "--float-experts")  # every tensor F32: only the YaRN variant differs
    gguf = convert(floats, tmp_path / "gtf.gguf", LLAMA_CPP_DIR, family="gpt_oss")
    rc, report = run(tmp_path, gguf, floats)
    assert rc == 1 and report["lossy"] is None and report["summary"][0]["rel"] > 1e-4
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for f in floats.iterdir():
        (truncated / f.name).symlink_to(f)
    config = json.loads((floats / "config.json").read_text())
    config["rope_scaling"]["truncate"] = True  # llama.cpp's YaRN: the reference reproduces it
    (truncated / "config.json").unlink()
    (truncated / "config.json").write_text(json.dumps(config))
    rc, report = run(tmp_path, gguf, truncated)
    assert rc == 0 and report["summary"][0]["rel"] <= 1e-4
