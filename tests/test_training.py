"""training/ (the script that trains the built-in chat model): its tasks and answer checks, and an end-to-end
smoke run (tiny shape, a few steps: tokenizer, training with the fake-quantised fine-tune, MXFP4 packing,
checkpoint, held-out scoring in transformers and through mxport)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

TRAINING = Path(__file__).resolve().parents[1] / "training"
sys.path.insert(0, str(TRAINING))
try:
    import chat_format
    import tasks
finally:
    sys.path.remove(str(TRAINING))


def test_worked_arithmetic_is_right_for_every_pair():
    for op in ("sum", "diff"):
        for a in range(tasks.MAX_NUMBER + 1):
            for b in range(a + 1 if op == "diff" else tasks.MAX_NUMBER + 1):
                ex = tasks.arithmetic(op, a, b, "low", 0)
                assert ex.answer == str(a + b if op == "sum" else a - b)
                assert ex.analysis.endswith(f"So {ex.answer}.") and tasks.check_answer(op, ex.final, ex.answer)


def test_held_out_split_is_disjoint_and_checks_fail_wrong_answers():
    rng = random.Random(0)
    for _ in range(300):
        ex = tasks.sample(rng, "sum", held_out=False)
        a, b = map(int, ex.final.split(" = ")[0].split(" + "))
        assert not tasks.pair_held_out(a, b, "sum")
    held = {ex.question for ex, _ in tasks.held_out_set(20, tasks=("capital",))}
    train = {tasks.sample(rng, "capital", held_out=False).question for _ in range(500)}
    assert not held & train
    assert not tasks.check_answer("sum", "2 + 2 = 5.", "4")
    assert not tasks.check_answer("capital", "The capital of France is Berlin.", "Paris")
    assert not tasks.check_answer("capital", "Paris or Berlin", "Paris")
    assert tasks.check_answer("letters", 'The word "dog" has 3 letters.', "3")


def test_tokenizer_splits_digits_and_keeps_specials_whole():
    tok = chat_format.build_tokenizer(300, corpus_examples=100)
    assert tok.vocab_size == 300
    ids = tok.encode("Current date: 2026-12-01<|end|>")
    assert [tok.decode([i]) for i in ids][-11:] == list("2026-12-01") + ["<|end|>"]
    assert tok.decode(tok.encode("any text, even ünïcode 🙂")) == "any text, even ünïcode 🙂"


@pytest.mark.oracle
def test_training_script_smoke(tmp_path, capsys):
    pytest.importorskip("transformers")
    sys.path.insert(0, str(TRAINING))
    try:
        import train_chat_model
    finally:
        sys.path.remove(str(TRAINING))
    out = tmp_path / "smoke"
    assert train_chat_model.main(["--smoke", "--out", str(out), "--mxport-eval"]) == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy, transformers on the written checkpoint: sum" in printed
    assert "held-out accuracy, mxport portable export on ONNX Runtime: sum" in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "mxfp4" and cfg["hidden_size"] % 32 == 0
    log = json.loads((out / "training.json").read_text())
    assert set(log["final"]["heldout_torch"]) == set(tasks.TASKS)
    assert (out / "tokenizer_config.json").is_file() and (out / "tokenizer.json").is_file()
    from mxport.exporter.checkpoint import open_checkpoint

    with open_checkpoint(out) as ckpt:  # mxport reads it: MXFP4 experts, bf16 dense
        assert ckpt.config.experts_mxfp4 and "model.layers.0.mlp.experts.gate_up_proj_blocks" in ckpt.names()
