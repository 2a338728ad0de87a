"""GPT-2 through the command line: synth writes a GPT-2-shaped tokenizer, run/verify/inspect/bench work on the
gpt2-tiny preset, chat refuses it (no chat format), and prompts past n_positions are a named error."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

from mxport.cli import main
from mxport.errors import MxportError
from mxport.exporter.families.gpt2 import PRESETS
from mxport.runtime.generation.generate import Generator
from mxport.runtime.generation.tokenizer import Tokenizer


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint, cpu export) of the gpt2-tiny preset, written by the CLI."""
    root = tmp_path_factory.mktemp("gpt2-cli")
    assert main(["synth", "--preset", "gpt2-tiny", "-o", str(root / "ckpt")]) == 0
    assert main(["export", str(root / "ckpt"), "-o", str(root / "cpu"), "--target", "cpu"]) == 0
    return root / "ckpt", root / "cpu"


def test_synth_writes_a_gpt2_shaped_tokenizer(tiny):
    ckpt, out = tiny
    tok = Tokenizer.from_file(ckpt / "tokenizer.json")
    cfg = PRESETS["gpt2-tiny"]
    assert tok.token_to_id("<|endoftext|>") == cfg.eos_token_ids[0] == cfg.bos_token_id == cfg.vocab_size - 1
    assert tok.vocab_size == cfg.vocab_size
    text = "Hello, world! The quick brown fox. Über 🙂"
    assert tok.decode(tok.encode(text)) == text  # byte-level: every string round-trips
    assert tok.id_to_token(tok.encode(" world")[0]).startswith("Ġ")  # GPT-2's byte map: space -> Ġ
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert config["eos_token"] == config["bos_token"] == "<|endoftext|>" and "chat_template" not in config
    assert (out / "tokenizer.json").is_file()  # the export carries it


def test_run_prompt_continues_text(tiny, capsys):
    ckpt, out = tiny
    code, text, _ = _run(capsys, "run", out, "--prompt", "The quick brown", "--max-new-tokens", "6", "--no-eos")
    assert code == 0
    gen = Generator.from_folder(out)
    want = gen.generate("The quick brown", max_new_tokens=6, stop_token_ids=())[0].text
    assert text == want + "\n" and want
    code, text_numpy, _ = _run(capsys, "run", ckpt, "--backend", "numpy", "--prompt", "The quick brown",
                               "--max-new-tokens", "6", "--no-eos")
    assert code == 0 and text_numpy == text  # the reference model greedily picks the same tokens


def test_chat_refuses_gpt2_naming_the_family(tiny, capsys, monkeypatch):
    ckpt, out = tiny
    for folder, extra in ((out, ()), (ckpt, ("--backend", "numpy"))):
        monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
        code, _, err = _run(capsys, "chat", folder, *extra)
        assert code == 2
        assert "the gpt2 model family has no chat format" in err and "mxport run" in err


def test_chat_refuses_a_gpt2_export_before_its_model_loads(tiny, capsys, monkeypatch):
    _, out = tiny

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(Generator, "from_folder", load)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    code, _, err = _run(capsys, "chat", out)
    assert code == 2 and "the gpt2 model family has no chat format" in err


def test_verify_and_inspect(tiny, capsys):
    _, out = tiny
    code, text, _ = _run(capsys, "verify", out)
    assert code == 0 and "PASS" in text
    code, text, _ = _run(capsys, "inspect", out)
    assert code == 0
    assert text.splitlines()[0].startswith("export: family=gpt2 target=cpu") and "layers=2 hidden=64 vocab=512" in text
    assert "ai.onnx::LayerNormalization" in text or "com.microsoft::SkipLayerNormalization" in text


def test_prompt_past_n_positions_is_a_named_error(tiny, capsys):
    ckpt, out = tiny
    limit = PRESETS["gpt2-tiny"].max_position_embeddings
    gen = Generator.from_folder(out)
    with pytest.raises(MxportError, match=f"context length exceeded.*{limit}"):
        gen.generate([list(range(limit))], max_new_tokens=1)
    ids = ckpt.parent / "long.npy"
    np.save(ids, np.arange(limit + 1))
    code, _, err = _run(capsys, "run", ckpt, "--backend", "numpy", "--input-ids", ids, "--max-new-tokens", "1")
    assert code == 2 and f"context length exceeded: prompt of {limit + 1} tokens" in err


def test_bench_traffic_counts_the_tied_head_whole(tiny):
    from mxport.runtime.bench.speed import onnx_traffic

    _, out = tiny
    cfg = PRESETS["gpt2-tiny"]
    total, per_token = onnx_traffic(out / "model.onnx")
    head = cfg.vocab_size * cfg.hidden_size * 4  # the float32 copy of wte that the output MatMul reads each step
    wpe = cfg.max_position_embeddings * cfg.hidden_size * 2  # bf16; a step reads one row of it
    # bf16 matrices count twice (ORT folds their Casts into float32 copies): at most 2x the file, less wpe
    assert head <= per_token <= 2 * (total - wpe) + 2 * wpe // cfg.max_position_embeddings


def test_example_script_runs_gpt2_and_stops_before_chat(tiny, capsys):
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).parents[2] / "examples" / "generate.py"))
    example["main"](str(tiny[1]))
    out = capsys.readouterr().out
    assert out.count("length:") == 2 and "no chat: " in out and "gpt2 model family has no chat format" in out


def test_serve_completes_text_and_refuses_chat_and_long_prompts(tiny):
    import time
    from functools import partial

    from fastapi.testclient import TestClient

    from mxport.runtime.serve.app import create_app, load_folder

    out = tiny[1]
    want = Generator.from_folder(out).generate("The quick brown", max_new_tokens=6, stop_token_ids=())[0].text
    with TestClient(create_app(partial(load_folder, out))) as client:
        while client.get("/health").status_code != 200:
            time.sleep(0.1)
        r = client.post("/v1/completions", json={"model": out.name, "prompt": "The quick brown", "max_tokens": 6,
                                                 "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want
        r = client.post("/v1/chat/completions", json={"model": out.name, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "chat_not_supported"
        r = client.post("/v1/completions", json={"model": out.name, "prompt": "a " * 200, "max_tokens": 4})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_verify_and_bench_refuse_runs_past_n_positions(tiny, capsys):
    ckpt, out = tiny
    limit = PRESETS["gpt2-tiny"].max_position_embeddings  # verify's longest prompt is 16 tokens here
    code, _, err = _run(capsys, "verify", out, "--decode-steps", limit - 15)
    assert code == 2 and f"16-token prompt + --decode-steps {limit - 15} passes this model's {limit} positions" in err
    for folder in (ckpt, out):
        code, _, err = _run(capsys, "bench", folder)  # defaults: 128 + 32 tokens
        assert code == 2 and f"--prompt-len 128 + --new-tokens 32 passes this model's {limit} positions" in err
