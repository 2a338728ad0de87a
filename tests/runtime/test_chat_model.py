"""The built-in trained model (mxport/data/chat-tiny): transformers reads it, mxport agrees with transformers,
the demo checks its answers, and the training script that made it runs end to end (smoke setting).

Oracle: transformers' GptOssForCausalLM with Mxfp4Config(dequantize=True) on CPU (tests/oracles.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mxport.cli import main
from mxport.exporter.export import export
from mxport.commands import demo
from mxport.runtime.generation.generate import Generator
from mxport.runtime.chat.harmony import Harmony, Message, SystemContent, render_conversation
from mxport.runtime.oracle.model import ReferenceModel
from mxport.runtime.generation.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]
TRAINING = REPO / "training"
SHIPPED = demo.shipped_checkpoint()


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    return export(SHIPPED, tmp_path_factory.mktemp("chat") / "onnx", progress=False)


def _prompts(tok: Tokenizer) -> np.ndarray:
    """Two real harmony prompts of one length (a sum and a capital), right-trimmed to a common length."""
    h = Harmony(tok)
    rows = [h.render_ids([Message("user", q)], SystemContent(reasoning="low", current_date="2026-12-01"))
            for q in ("What is 14 + 39?", "What is the capital of France?")]
    n = min(len(r) for r in rows)
    return np.array([r[:n] for r in rows], np.int64)


def test_shipped_checkpoint_is_a_gpt_oss_with_mxfp4_experts():
    cfg = json.loads((SHIPPED / "config.json").read_text())
    assert cfg["model_type"] == "gpt_oss" and cfg["quantization_config"]["quant_method"] == "mxfp4"
    assert cfg["layer_types"] == ["sliding_attention", "full_attention"] * (cfg["num_hidden_layers"] // 2)
    from safetensors import safe_open

    with safe_open(SHIPPED / "model.safetensors", "np") as f:
        names = set(f.keys())
        assert f.get_tensor("model.layers.0.mlp.experts.gate_up_proj_blocks").dtype == np.uint8
    assert "model.layers.0.mlp.experts.down_proj_scales" in names and "model.layers.0.mlp.experts.down_proj" not in names
    tok = Tokenizer.from_file(SHIPPED)
    for special in ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>"):
        assert tok.encode(special) == [tok.require(special)]  # one token each
    assert (SHIPPED / "model.safetensors").stat().st_size < 4e6


@pytest.mark.oracle
def test_transformers_reference_and_export_agree(portable):
    torch = pytest.importorskip("torch")
    from oracles import load_transformers_gpt_oss

    ids = _prompts(Tokenizer.from_file(SHIPPED))
    with torch.no_grad():
        want = load_transformers_gpt_oss(SHIPPED)(torch.from_numpy(ids)).logits.numpy()
    with ReferenceModel(SHIPPED) as ref:
        ours = ref.infer({"input_ids": ids})["logits"]
    onnx = Generator.from_folder(portable).prompt_logits(ids)
    for got in (ours, onnx):
        rel = np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()
        assert rel <= 1e-4, rel
        np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
    assert np.exp(want[:, -1] - want[:, -1].max(-1, keepdims=True)).max() > 0  # sanity: finite


def test_chat_template_renders_what_mxport_renders():
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(SHIPPED)
    messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."},
                {"role": "user", "content": "Who are you?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, reasoning_effort="high",
                                   current_date="2026-12-01")
    want = render_conversation([Message("user", "What is 2 + 2?"), Message("assistant", "2 + 2 = 4.", "final"),
                                Message("user", "Who are you?")],
                               SystemContent(reasoning="high", current_date="2026-12-01"))
    assert text == want


def test_demo_answers_are_checked(tmp_path, capsys, monkeypatch):
    code = main(["demo", "--cache-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    n = len(demo.QUESTIONS)
    assert f"answers       {n}/{n} right" in out and "vs reference  PASS" in out
    for q in demo.QUESTIONS:
        assert f"question:   {q.text}" in out
    assert out.count("check:      right") == n and "reasoning:  " in out
    # a wrong expected answer must fail the demo's own check
    wrong = demo.Question("What is 2 + 2?", "5", "low")
    monkeypatch.setattr(demo, "QUESTIONS", (wrong,))
    code = main(["demo", "--cache-dir", str(tmp_path), "--no-verify"])
    out, err = capsys.readouterr()
    assert code == 1 and "check:      WRONG (expected 5)" in out and "1 answer(s) wrong" in err
    assert "answers       0/1 right" in out


def test_answer_ok():
    assert demo.answer_ok("14 + 39 = 53.", "53") and not demo.answer_ok("14 + 39 = 52.", "53")
    assert not demo.answer_ok("no number", "4") and not demo.answer_ok("2 + 2 = 44.", "4")
    assert demo.answer_ok("The capital of France is Paris.", "Paris")
    assert not demo.answer_ok("The capital of France is Parisville.", "Paris")


def test_demo_questions_are_held_out_of_training():
    sys.path.insert(0, str(TRAINING))
    try:
        import tasks
    finally:
        sys.path.remove(str(TRAINING))
    import re

    for q in demo.QUESTIONS:
        m = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", q.text)
        if m and q.text != "What is 2 + 2?":
            a, op, b = int(m[1]), m[2], int(m[3])
            assert tasks.pair_held_out(a, b, "sum" if op == "+" else "diff"), q.text
