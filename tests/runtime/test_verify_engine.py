"""`mxport verify --engine genai|onnx|transformers`: engines mxport did not write, under the NumPy reference.
genai: an mxport export folder and onnxruntime-genai's own builder's folders (fp32 passes, int4 is lossy: reported,
judged only by the budget); onnx: a decoder exported here by torch.onnx from transformers (no mxport metadata), with
renamed I/O, and corrupted (fails); transformers: the checkpoint itself, per layer. Bad input exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest

from mxport.cli import main
from mxport.errors import MxportError
from mxport.runtime.judge.engines import parse_io_names
from mxport.runtime.judge.engines.report import check_tokenizer
from mxport.runtime.judge.engines.run import verify_engine

QUICK = ["--prompts", "2", "--decode-steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine") / "q3"
    assert main(["synth", "--preset", "qwen3-tiny", "-o", str(folder), "--quiet"]) == 0
    return folder


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine") / "gt"
    assert main(["synth", "--preset", "tiny", "-o", str(folder), "--quiet"]) == 0
    return folder


def genai_build(checkpoint, out, precision):
    """onnxruntime-genai's own model builder, offline on the local checkpoint folder."""
    done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o",
                           str(out), "-p", precision, "-e", "cpu", "-c", str(out) + "-cache"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def verify_json(tmp_path, *argv) -> tuple[int, dict]:
    out = tmp_path / "report.json"
    rc = main(["verify", *argv, *QUICK, "--json", str(out)])
    return rc, json.loads(out.read_text())


# ---- genai -----------------------------------------------------------------------------------------------------
def test_genai_runs_an_mxport_export_exactly(qwen3, tmp_path, capsys):
    folder = tmp_path / "q3-cpu"
    assert main(["export", str(qwen3), "-o", str(folder), "--target", "cpu", "--quiet"]) == 0
    rc, report = verify_json(tmp_path, "--engine", "genai", str(folder), str(qwen3))
    text = capsys.readouterr().out
    assert rc == 0 and report["passed"] and report["engine"] == "genai" and report["lossy"] is None
    assert report["summary"][0]["rel"] <= 1e-4 and report["summary"][0]["top1"] == 1.0
    assert report["logits_source"] == "every position"
    lengths = report["prompt_lengths"]
    assert {k: len(v) for k, v in report["positions"].items()} == {f"p{i}": n + 2 for i, n in enumerate(lengths)}
    assert report["tokenizer"]["matched"] == report["tokenizer"]["texts"] == 5
    assert "p0 (18 positions): no position diverges" in text and text.rstrip().endswith("PASS")


def test_genai_builder_fp32_passes_and_int4_is_judged_by_the_budget(gpt_oss, tmp_path, capsys):
    fp32 = genai_build(gpt_oss, tmp_path / "fp32", "fp32")
    rc, report = verify_json(tmp_path, "--engine", "genai", str(fp32), str(gpt_oss))
    assert rc == 0 and report["lossy"] is None and report["summary"][0]["rel"] <= 1e-4
    int4 = genai_build(gpt_oss, tmp_path / "int4", "int4")
    capsys.readouterr()
    rc, report = verify_json(tmp_path, "--engine", "genai", str(int4), str(gpt_oss))
    text = capsys.readouterr().out
    assert rc == 0 and "MatMulNBits" in report["lossy"]
    error = report["quantization_error"]
    assert error["kl_mean"] > 1e-5 and error["rel"] > 1e-3 and error["budget"] is None
    assert "lossy, no budget given" in text
    assert main(["verify", "--engine", "genai", str(int4), str(gpt_oss), *QUICK, "--max-kl", "1e-9"]) == 1
    assert "over budget --max-kl 1e-09" in capsys.readouterr().out
    assert main(["verify", "--engine", "genai", str(int4), str(gpt_oss), *QUICK, "--max-kl", "10"]) == 0


# ---- onnx: an HF-style decoder exported here by torch.onnx, no mxport metadata ----------------------------------
def torch_export(checkpoint, out):
    """transformers' Qwen3 as an HF-style decoder ONNX (input_ids, attention_mask, position_ids,
    past_key_values.N.key/value -> logits, present.N.key/value), torch.onnx's TorchScript exporter."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    c = model.config
    n, kv, d = c.num_hidden_layers, c.num_key_value_heads, c.head_dim

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=c)
            for i in range(n):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
            return (out.logits, *(t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)))

    S, P = 3, 2
    args = (torch.ones(1, S, dtype=torch.long), torch.ones(1, P + S, dtype=torch.long), torch.arange(P, P + S)[None],
            *[torch.zeros(1, kv, P, d) for _ in range(2 * n)])
    pasts = [f"past_key_values.{i}.{k}" for i in range(n) for k in ("key", "value")]
    presents = [f"present.{i}.{k}" for i in range(n) for k in ("key", "value")]
    axes = {"input_ids": {1: "s"}, "attention_mask": {1: "t"}, "position_ids": {1: "s"}, "logits": {1: "s"},
            **{p: {2: "p"} for p in pasts}, **{p: {2: "t"} for p in presents}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Decoder(), args, str(out), input_names=["input_ids", "attention_mask", "position_ids",
                          *pasts], output_names=["logits", *presents], dynamic_axes=axes, dynamo=False,
                          opset_version=18)
    return out


@pytest.fixture(scope="module")
def hf_onnx(qwen3, tmp_path_factory):
    pytest.importorskip("torch")
    return torch_export(qwen3, tmp_path_factory.mktemp("hf_onnx") / "decoder.onnx")


def rename(model_file, out, names):
    proto = onnx.load(str(model_file))
    for value in (*proto.graph.input, *proto.graph.output):
        value.name = names.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [names.get(x, x) for x in node.input]
        node.output[:] = [names.get(x, x) for x in node.output]
    onnx.save(proto, str(out))
    return out


def test_onnx_engine_runs_a_foreign_decoder(hf_onnx, qwen3, tmp_path, capsys):
    assert not (hf_onnx.parent / "mxport.json").exists()
    rc, report = verify_json(tmp_path, "--engine", "onnx", str(hf_onnx), str(qwen3))
    assert rc == 0 and report["passed"] and report["lossy"] is None
    assert report["summary"][0]["rel"] <= 1e-4 and report["hidden_states_source"] == "none"
    assert report["tokenizer"] == {"skipped": "the engine brings no tokenizer"}


def test_onnx_engine_maps_renamed_io(hf_onnx, qwen3, tmp_path, capsys):
    names = {"input_ids": "ids", "logits": "scores", **{f"past_key_values.{i}.key": f"cache.{i}.k" for i in range(3)},
             **{f"present.{i}.key": f"new_cache.{i}.k" for i in range(3)}}
    renamed = rename(hf_onnx, tmp_path / "renamed.onnx", names)
    args = ["verify", "--engine", "onnx", str(renamed), str(qwen3), *QUICK]
    assert main(args) == 2
    assert "--engine-io input_ids=NAME" in capsys.readouterr().err
    mapping = ["--engine-io", "input_ids=ids", "--engine-io", "logits=scores", "--engine-io",
               "past_key_values.%d.key=cache.%d.k", "--engine-io", "present.%d.key=new_cache.%d.k"]
    assert main(args + mapping) == 0
    assert capsys.readouterr().out.rstrip().endswith("PASS")


def test_onnx_engine_fails_a_corrupted_decoder(hf_onnx, qwen3, tmp_path, capsys):
    proto = onnx.load(str(hf_onnx))
    weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))  # the embedding (tied head)
    values = onnx.numpy_helper.to_array(weight).copy()
    values[:, :4] *= 1.01  # 1 % on four hidden features
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    rc, report = verify_json(tmp_path, "--engine", "onnx", str(tmp_path / "bad.onnx"), str(qwen3))
    text = capsys.readouterr().out
    assert rc == 1 and not report["passed"] and report["summary"][0]["failed_in"]
    assert report["first_diverging"]["p0"]["position"] == 0  # every position is off: the first one diverges
    assert "first diverging position 0 (prefill)" in text and text.rstrip().endswith("FAIL")


# ---- transformers ------------------------------------------------------------------------------------------------
def test_transformers_engine_per_layer(qwen3, monkeypatch):
    from mxport.runtime.judge.engines import run

    opened = run.open_engine

    def wrong_tokenizer(*args, **kwargs):
        engine = opened(*args, **kwargs)
        engine.encode = lambda text: [0] * 3  # the numbers run on ids: a tokenizer mismatch is reported apart
        return engine

    monkeypatch.setattr(run, "open_engine", wrong_tokenizer)
    report = verify_engine("transformers", qwen3, qwen3, prompts=1, decode_steps=2)
    assert report and report.lossy is None
    assert [row["layer"] for row in report.layers()] == [0, 1]  # the last hidden state is normed: not compared
    assert all(row["hidden_rel"] <= 1e-4 for row in report.layers())
    assert report.tokenizer["matched"] == 0 and "encodes 0 of 5 check texts" in str(report)
    assert str(report).rstrip().endswith("PASS")


def test_tokenizer_check(qwen3):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(qwen3 / "tokenizer.json"))
    same = check_tokenizer(qwen3, lambda text: tok.encode(text, add_special_tokens=False).ids)
    assert same == {"texts": 5, "matched": 5, "mismatches": []}
    shifted = check_tokenizer(qwen3, lambda text: [i + 1 for i in tok.encode(text, add_special_tokens=False).ids])
    assert shifted["matched"] == 0 and shifted["mismatches"][0]["at"] == 0


# ---- bad input ---------------------------------------------------------------------------------------------------
def test_bad_input_exits_2(qwen3, tmp_path, capsys):
    assert main(["verify", "--engine", "genai", str(qwen3), str(qwen3), *QUICK]) == 2
    assert "no genai_config.json" in capsys.readouterr().err
    assert main(["verify", "--engine", "onnx", str(tmp_path / "absent.onnx"), str(qwen3), *QUICK]) == 2
    assert main(["verify", "--engine", "onnx", str(qwen3), *QUICK]) == 2  # no checkpoint
    assert "give the CHECKPOINT" in capsys.readouterr().err
    assert main(["verify", "--engine", "genai", str(qwen3), str(qwen3), "--engine-io", "logits=x", *QUICK]) == 2
    for spec in ("logits", "weights=x", "past_key_values.%d.key=cache.k", "input_ids=-", "logits=a b"):
        with pytest.raises(MxportError, match="--engine-io"):
            parse_io_names([spec])
    assert parse_io_names(["position_ids=-", "present.%d.key=k.%d"]) == {"position_ids": "-",
                                                                         "present.%d.key": "k.%d"}
