"""Runners agree on a tiny export; `mxport verify` passes a good export, fails a corrupted one naming the layer,
writes --json, and exits 2 on bad input."""

from __future__ import annotations

import json
import os
import shutil

import ml_dtypes
import numpy as np
import onnx
import pytest

from mxport.cli import main
from mxport.contract.folder import Manifest
from mxport.contract.io import make_feeds, step_feeds
from mxport.errors import MxportError
from mxport.runtime.judge.compare import FLOAT32_TOLERANCES, Tolerance, compare
from mxport.runtime.execution.runners import (
    OnnxReferenceRunner,
    OrtRunner,
    ReferenceModelRunner,
    expose_hidden_states,
)
from mxport.runtime.judge.verify import (
    HALF_TOLERANCES,
    LOSSY_TOLERANCES,
    default_tolerances,
    left_pad,
    make_prompts,
    merge_tolerances,
    parse_tolerance_options,
    verify,
)


# ---- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cfg(tiny_config):
    # A short window so that prompts cross it cheaply; 2+ layers so a corrupted layer 1 has a layer before it.
    c = tiny_config.replace(sliding_window=6)
    assert c.num_hidden_layers >= 2
    return c


@pytest.fixture(scope="module")
def ckpt(make_checkpoint, cfg):
    return make_checkpoint(cfg, layout="hf", seed=0)


@pytest.fixture(scope="module")
def export_dir(ckpt, tmp_path_factory):
    from mxport.exporter.export import export

    return export(ckpt, tmp_path_factory.mktemp("verify") / "out", progress=False)


@pytest.fixture(scope="module")
def export_hidden(ckpt, tmp_path_factory):
    from mxport.exporter.export import export

    return export(ckpt, tmp_path_factory.mktemp("verify_hidden") / "out", progress=False, hidden_states=True)


def _copy(src, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _corrupt(export, tensor_pattern, change):
    """Rewrite one initializer's bytes in model.onnx.data in place: change(bytes array) -> bytes array."""
    model = onnx.load(str(export / "model.onnx"), load_external_data=False)
    hits = [t for t in model.graph.initializer if all(p in t.name for p in tensor_pattern)]
    assert hits, f"no initializer matching {tensor_pattern}: {[t.name for t in model.graph.initializer][:20]}"
    t = hits[0]
    info = {e.key: e.value for e in t.external_data}
    offset, length = int(info.get("offset", 0)), int(info["length"])
    path = export / info["location"]
    data = bytearray(path.read_bytes())
    raw = np.frombuffer(bytes(data[offset : offset + length]), dtype=np.uint8)
    new = np.asarray(change(raw, t.data_type), dtype=np.uint8).tobytes()
    assert len(new) == length and new != raw.tobytes()
    data[offset : offset + length] = new
    path.write_bytes(bytes(data))
    return t.name


def _times_two(raw, data_type):
    np_type = {onnx.TensorProto.BFLOAT16: ml_dtypes.bfloat16, onnx.TensorProto.FLOAT: np.float32}[data_type]
    return (raw.view(np_type).astype(np.float32) * 2).astype(np_type).view(np.uint8)


# ---- pure pieces -----------------------------------------------------------------------------------------------
def test_make_feeds_and_step_feeds(cfg):
    ids, mask = left_pad([np.array([5, 6, 7]), np.array([8])])
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    feeds = make_feeds(ids, mask, cfg=cfg)
    assert feeds["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    k0 = feeds["past_key_values.0.key"]
    assert k0.shape == (2, cfg.num_key_value_heads, 0, cfg.head_dim) and k0.dtype == np.float32
    n = cfg.num_hidden_layers
    assert sum(k.startswith("past_key_values.") for k in feeds) == 2 * n
    present = {f"present.{i}.{t}": np.ones((2, cfg.num_key_value_heads, 3, cfg.head_dim), np.float32)
               for i in range(n) for t in ("key", "value")}
    nxt = step_feeds({"logits": np.zeros(1), **present}, np.array([1, 2]), feeds["attention_mask"])
    assert nxt["input_ids"].tolist() == [[1], [2]]
    assert nxt["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert nxt["position_ids"].tolist() == [[3], [1]]
    assert nxt["past_key_values.1.value"] is present["present.1.value"]
    with pytest.raises(MxportError, match="mask covers 2 past slots but the cache holds 3"):
        step_feeds(present, np.array([1, 2]), mask[:, :2])
    with pytest.raises(MxportError, match=r"attention_mask: expected shape \[B, P\+S\] = \(2, 3\)"):
        make_feeds(ids, mask[:, :2], cfg=cfg)


def test_prompts_are_seeded_and_cross_the_window(cfg):
    a, b = make_prompts(cfg, 4, seed=3), make_prompts(cfg, 4, seed=3)
    assert [len(p) for p in a] == [10, 8, 5, 3]  # window 6 + max(4, 6 // 8)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not all((x == y).all() for x, y in zip(a, make_prompts(cfg, 4, seed=4)))
    assert max(len(p) for p in a) > cfg.sliding_window
    with pytest.raises(MxportError, match="--prompts must be at least 1"):
        make_prompts(cfg, 0)


def test_tolerance_defaults_and_options():
    assert default_tolerances(Manifest(dtype="float32", experts="mxfp4"))[0] == FLOAT32_TOLERANCES
    assert default_tolerances(Manifest(dtype="float32", experts="fp32"))[1].endswith("(exact)")
    # a lossy mode with float32 math: the reference on the export's own numbers, float32 tolerances
    own = "(lossy; reference on the export's quantized numbers)"
    assert default_tolerances(Manifest(dtype="float32", experts="int8")) == (
        FLOAT32_TOLERANCES, f"dtype=float32 experts=int8 dense=float32 {own}")
    # 8-bit QMoE on a checkpoint's MXFP4 experts too (exact weights, int8 activations)
    assert default_tolerances(Manifest(experts="int8", checkpoint_experts="mxfp4"))[1].endswith(own)
    # --dense bf16 (ai.mxport.LinearBF16) reads the checkpoint's bf16 in float32 math: exact
    assert default_tolerances(Manifest(dtype="float32", experts="mxfp4", dense="bf16"))[0] == FLOAT32_TOLERANCES
    # float16: the export's float16 numbers, float16 tolerances; bfloat16 (not reproduced): the checkpoint, lossy
    tols, mode = default_tolerances(Manifest(dtype="float16", experts="mxfp4"))
    assert tols == HALF_TOLERANCES and mode.endswith("(lossy; reference on the export's float16 numbers, float32 math)")
    tols, mode = default_tolerances(Manifest(dtype="bfloat16", experts="mxfp4"))
    assert tols == LOSSY_TOLERANCES and mode == "dtype=bfloat16 experts=mxfp4 dense=float32 (lossy)"
    assert default_tolerances(Manifest(experts="int4"))[1].endswith(own)
    # MatMulNBits dense weights are lossy whatever the experts or the accuracy level (was labelled exact)
    tols, mode = default_tolerances(Manifest(dtype="float32", experts="fp32", dense="int4", accuracy_level=0))
    assert tols == FLOAT32_TOLERANCES and mode == f"dtype=float32 experts=fp32 dense=int4 accuracy_level=0 {own}"
    assert default_tolerances(Manifest(dtype="float32", experts="fp32", dense="int8"))[1].endswith(own)
    assert default_tolerances(Manifest(dtype="float32", experts="none", dense="q4")) == (
        FLOAT32_TOLERANCES, f"dtype=float32 experts=none dense=q4 {own}")  # ai.mxport.LinearQ4: 4-bit weights
    # --reference checkpoint: the checkpoint as stored, the lossy tolerances
    assert default_tolerances(Manifest(experts="none", dense="q4"), "checkpoint") == (
        LOSSY_TOLERANCES, "dtype=float32 experts=none dense=q4 (lossy)")
    with pytest.raises(MxportError, match="--reference 'float': expected one of export, checkpoint"):
        default_tolerances(Manifest(experts="int4"), "float")
    merged = merge_tolerances(FLOAT32_TOLERANCES, {"logits": 1e-3})
    assert merged["logits"] == Tolerance(rel=1e-3, top1=1.0)  # a float changes rel only
    opts = parse_tolerance_options(["logits=1e-3", "logits:top1=0.99", "hidden_states.*:abs=0.5"], FLOAT32_TOLERANCES)
    assert opts == {"logits": Tolerance(rel=1e-3, top1=0.99), "hidden_states.*": Tolerance(rel=1e-4, abs=0.5)}
    with pytest.raises(MxportError, match=r"--tolerance 'logits': expected OUTPUT=VALUE"):
        parse_tolerance_options(["logits"], FLOAT32_TOLERANCES)
    with pytest.raises(MxportError, match="unknown field 'top5'"):
        parse_tolerance_options(["logits:top5=1"], FLOAT32_TOLERANCES)
    with pytest.raises(MxportError, match="'x' is not a number"):
        parse_tolerance_options(["logits=x"], FLOAT32_TOLERANCES)


# ---- runners -----------------------------------------------------------------------------------------------------
def test_runners_agree_on_a_tiny_export(export_dir, ckpt, cfg):
    ids, mask = left_pad(make_prompts(cfg, 2, seed=1))  # lengths 10 and 3: padding and the window
    runners = [
        OrtRunner(export_dir),
        OnnxReferenceRunner(export_dir, kernels=True),
        OnnxReferenceRunner(export_dir, kernels=False),
    ]
    reference = ReferenceModelRunner(ckpt, hidden_states=False, window_cache=True)  # as the export
    feeds = make_feeds(ids, mask, cfg=cfg)
    want = reference.infer(feeds)
    real = {"logits": mask.astype(bool)}
    nxt = want["logits"][:, -1].argmax(-1)
    want_step = reference.infer(step_feeds(want, nxt, feeds["attention_mask"]))
    for runner in runners:
        got = runner.infer(feeds)
        assert set(got) == set(want), runner.name
        report = compare(got, want, masks=real, title=runner.name)
        assert report, str(report)
        assert report["logits"].rel < 1e-4 and report["logits"].top1 == 1.0
        step = runner.infer(step_feeds(got, nxt, feeds["attention_mask"]))
        assert compare(step, want_step), runner.name


def test_runner_errors(export_dir, tmp_path):
    runner = OrtRunner(export_dir)
    with pytest.raises(MxportError, match=r"unknown feeds \['bogus'\]"):
        runner.infer({"bogus": np.zeros(1)})
    with pytest.raises(MxportError, match="missing feeds"):
        runner.infer({"input_ids": np.zeros((1, 1), np.int64)})
    with pytest.raises(MxportError, match="no such ONNX model"):
        OrtRunner(tmp_path)
    with pytest.raises(MxportError, match="provider 'NoSuchExecutionProvider' is not available"):
        OrtRunner(export_dir, provider="NoSuchExecutionProvider")


def test_expose_hidden_states_matches_exported_ones(export_dir, export_hidden, cfg, tmp_path):
    exposed = expose_hidden_states(export_dir / "model.onnx", tmp_path, cfg.num_hidden_layers)
    a, b = OrtRunner(exposed), OrtRunner(export_hidden)
    assert [n for n in a.output_names if n.startswith("hidden")] == [f"hidden_states.{i}" for i in range(cfg.num_hidden_layers)]
    feeds = make_feeds(make_prompts(cfg, 1)[0], cfg=cfg)
    got, want = a.infer(feeds), b.infer(feeds)
    for i in range(cfg.num_hidden_layers):
        np.testing.assert_array_equal(got[f"hidden_states.{i}"], want[f"hidden_states.{i}"])
    with pytest.raises(MxportError, match="already has hidden_states outputs"):
        expose_hidden_states(export_hidden / "model.onnx", tmp_path / "again", cfg.num_hidden_layers)


def test_expose_hidden_states_reads_the_older_residual_names(ckpt, cfg, tmp_path):
    """Exports made before the one residual role named the value moe_residual / mlp_residual; on a cpu export the
    residual Add is fused into SkipSimplifiedLayerNormalization, so only the name finds it (no Add to fall back to)."""
    from mxport.contract import io
    from mxport.exporter.export import export

    out = export(ckpt, tmp_path / "cpu", target="cpu", progress=False)
    want = OrtRunner(expose_hidden_states(out / "model.onnx", tmp_path / "new", cfg.num_hidden_layers))

    def renamed(role: str, where: str):
        proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
        names = {io.residual_name(i): io.residual_name(i, role) for i in range(cfg.num_hidden_layers)}
        for node in proto.graph.node:
            node.input[:] = [names.get(n, n) for n in node.input]
            node.output[:] = [names.get(n, n) for n in node.output]
        for info in proto.graph.value_info:
            info.name = names.get(info.name, info.name)
        (tmp_path / where).mkdir()
        os.link(out / "model.onnx.data", tmp_path / where / "model.onnx.data")
        onnx.save_model(proto, str(tmp_path / where / "model.onnx"))
        return tmp_path / where / "model.onnx"

    for role in io.OLDER_RESIDUALS:
        got = OrtRunner(expose_hidden_states(renamed(role, role), tmp_path / f"{role}_exposed", cfg.num_hidden_layers))
        feeds = make_feeds(make_prompts(cfg, 1)[0], cfg=cfg)
        a, b = got.infer(feeds), want.infer(feeds)
        for i in range(cfg.num_hidden_layers):
            np.testing.assert_array_equal(a[io.hidden_name(i)], b[io.hidden_name(i)])
    with pytest.raises(MxportError, match="cannot find the residual stream after layer 0"):
        expose_hidden_states(renamed("other", "other"), tmp_path / "other_exposed", cfg.num_hidden_layers)


# ---- verify --------------------------------------------------------------------------------------------------------
def test_verify_passes_a_good_export(export_dir, cfg):
    report = verify(export_dir, prompts=3, decode_steps=2)
    assert report, str(report)
    assert report.hidden_states_source == "exposed"
    assert report.prompt_lengths == [10, 6, 3]
    assert [c.label for c in report.calls] == [f"{case}/{s}" for case in ("long", "batch") for s in ("prefill", "decode1", "decode2")]
    logits = next(r for r in report.worst() if r["name"] == "logits")
    assert logits["rel"] < 1e-4 and logits["top1"] == 1.0 and logits["kl_max"] < 1e-6
    assert [row["layer"] for row in report.layers()] == list(range(cfg.num_hidden_layers))
    assert report.first_failing_layer is None
    assert str(report).endswith("PASS")


def test_cli_verify_passes_and_writes_json(export_hidden, tmp_path, capsys):
    out = tmp_path / "sub" / "report.json"
    code = main(["verify", str(export_hidden), "--prompts", "2", "--decode-steps", "1", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "per-layer  hidden_states: export" in text and "logits" in text and text.rstrip().endswith("PASS")
    data = json.loads(out.read_text())
    assert data["passed"] is True and data["first_failing_layer"] is None
    assert {c["call"] for c in data["calls"]} == {"long/prefill", "long/decode1", "batch/prefill", "batch/decode1"}
    assert next(r for r in data["summary"] if r["name"] == "logits")["top1"] == 1.0


def test_cli_verify_fails_a_corrupted_attention_weight(export_dir, tmp_path, capsys):
    bad = _copy(export_dir, tmp_path)
    name = _corrupt(bad, ("layers.1", "q_proj", "weight"), _times_two)
    out = tmp_path / "report.json"
    code = main(["verify", str(bad), "--prompts", "2", "--decode-steps", "1", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 1, text
    assert "first failing layer: 1" in text and text.rstrip().endswith("FAIL"), name
    data = json.loads(out.read_text())
    assert data["passed"] is False and data["first_failing_layer"] == 1
    layers = {row["layer"]: row for row in data["layers"]}
    assert layers[0]["passed"] and not layers[1]["passed"]


def test_verify_fails_corrupted_expert_bytes(export_hidden, tmp_path):
    bad = _copy(export_hidden, tmp_path)
    _corrupt(bad, ("layers.0", "gate_up_proj", "blocks"), lambda raw, _: raw ^ np.uint8(0x77))
    report = verify(bad, prompts=2, decode_steps=0)
    assert not report
    assert report.first_failing_layer == 0
    assert report.hidden_states_source == "export"


def test_cli_bad_input_exits_2(export_dir, tmp_path, capsys):
    assert main(["verify", str(tmp_path / "missing")]) == 2
    assert "no such export folder" in capsys.readouterr().err
    orphan = _copy(export_dir, tmp_path, "orphan")
    meta = json.loads((orphan / "mxport.json").read_text())
    del meta["checkpoint"]
    (orphan / "mxport.json").write_text(json.dumps(meta))
    assert main(["verify", str(orphan)]) == 2
    assert "no checkpoint path recorded; pass --checkpoint" in capsys.readouterr().err
    assert main(["verify", str(orphan), "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "nope: no such folder" in capsys.readouterr().err
    assert main(["verify", str(export_dir), "--tolerance", "logits"]) == 2
    assert "--tolerance 'logits'" in capsys.readouterr().err


def test_verify_exposes_the_residual_of_a_lowered_export(ckpt, cfg, tmp_path):
    """CPU lowering fuses the residual Add into SkipSimplifiedLayerNormalization; the exposed value must still
    be the residual stream (a wrong pick, e.g. the MoE output, would fail every layer of an exact export)."""
    from mxport.exporter.export import export

    out = export(ckpt, tmp_path / "cpu", target="cpu", experts="mxfp4", progress=False)
    report = verify(out, prompts=2, decode_steps=1)
    assert report.hidden_states_source == "exposed"
    assert report, str(report)
    assert max(row["hidden_rel"] for row in report.layers()) < 1e-4


def test_verify_reports_per_layer_errors_of_a_float16_export(ckpt, cfg, tmp_path):
    """A float16 export carries a float16 residual: it is exposed (cast to float32) and its error is reported,
    small but clearly not float32-exact."""
    from mxport.exporter.export import export

    out = export(ckpt, tmp_path / "f16", target="cpu", experts="float32", dtype="float16", progress=False)
    report = verify(out, prompts=2, decode_steps=1)
    assert report.hidden_states_source == "exposed"
    assert report, str(report)
    worst = max(row["hidden_rel"] for row in report.layers())
    assert 1e-5 < worst < 1e-2, worst


def test_verify_refuses_a_checkpoint_of_another_model(export_dir, make_checkpoint, cfg):
    other = make_checkpoint(cfg.replace(vocab_size=cfg.vocab_size + 32), layout="hf", seed=0)
    with pytest.raises(MxportError, match=rf"was not exported from .*vocab_size: export {cfg.vocab_size} vs checkpoint"):
        verify(export_dir, checkpoint=other)


def test_top1_and_kl_mean_are_pooled_over_all_positions():
    from mxport.runtime.judge.verify import CallResult, VerifyReport

    def logits(rows):  # rows of 2-way logits; argmax 0 unless the row is flipped
        return np.array([[[1.0, 0.0] if r else [0.0, 1.0] for r in rows]])

    tols = {"logits": Tolerance(top1=0.9)}
    per_call = {"logits": Tolerance()}
    decode = compare({"logits": logits([False])}, {"logits": logits([True])}, per_call)  # 1 position, top1 0
    prefill = compare({"logits": logits([True] * 9)}, {"logits": logits([True] * 9)}, per_call)  # 9 positions, 1
    report = VerifyReport("e", "c", "m", "p", [1], 1, [CallResult("x", 0, prefill), CallResult("x", 1, decode)],
                          tolerances=tols)
    row = report.worst()[0]
    assert row["positions"] == 10 and row["top1"] == pytest.approx(0.9) and report
    report.tolerances = {"logits": Tolerance(top1=0.95)}
    row = report.worst()[0]
    assert not report and row["failed_in"] == ["pooled"]
    assert row["failures"] == ["pooled over 10 positions: top1 0.9 < 0.95"]
    assert "FAIL: pooled" in str(report)
