"""lower() on the whole tiny gpt-oss graph: every rule fires, and the numbers hold against the NumPy reference.

cpu/float32 is exact (logits rel <= 1e-4, same top-1) for a left-padded prefill and a cached decode step;
int8 and int4 are lossy by design and must stay within the bounds measured when they were written.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from mxport.errors import MxportError
from mxport.exporter.families.gpt_oss import graph as gpt_oss
from mxport.exporter import lower as lowering
from mxport.exporter.checkpoint import open_checkpoint
from mxport.runtime.judge.compare import compare
from mxport.contract.io import make_feeds, step_feeds
from mxport.runtime.execution.runners import ReferenceModelRunner


@pytest.fixture(scope="module")
def tiny(tiny_config, make_checkpoint):
    return tiny_config, make_checkpoint(tiny_config)


@pytest.fixture(scope="module")
def reference(tiny):
    cfg, ckpt = tiny
    runner = ReferenceModelRunner(ckpt)
    yield runner
    runner.close()


def _lowered(ckpt, tmp_path, experts: str, dense: str = "float32") -> tuple[ort.InferenceSession, dict]:
    with open_checkpoint(ckpt) as c:
        b, inputs, outputs = gpt_oss.build(c)
        model = lowering.lower(b.model(inputs, outputs), target="cpu", experts=experts, dtype="float32", dense=dense)
        ir.save(model, tmp_path / "model.onnx", external_data="model.onnx.data")
    from mxport.ops import native

    so = ort.SessionOptions()
    native.register_kernels(so)  # LinearQ4 (--dense q4) through mxport's kernel, as mxport's sessions run it
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), so, providers=["CPUExecutionProvider"])
    return sess, lowering.report(model)


def _prefill_and_step(cfg, sess, reference):
    names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(0)
    ids = rng.integers(3, cfg.vocab_size, (2, 12))
    mask = np.ones((2, 12), np.int64)
    mask[1, :4] = 0  # left padding
    feeds = make_feeds(ids, mask, cfg=cfg)
    got = dict(zip(names, sess.run(None, feeds)))
    prefill = compare({"logits": got["logits"]}, {"logits": reference.infer(feeds)["logits"]},
                      masks={"logits": mask.astype(bool)})
    step = step_feeds(got, got["logits"][:, -1].argmax(-1), mask)
    got2 = dict(zip(names, sess.run(None, step)))
    decode = compare({"logits": got2["logits"]}, {"logits": reference.infer(step)["logits"]})
    return prefill, decode


def test_cpu_fp32_is_exact(tiny, reference, tmp_path):
    cfg, ckpt = tiny
    sess, report = _lowered(ckpt, tmp_path, "float32")
    L = cfg.num_hidden_layers
    assert report["applied"] == {"fused_qkv": L, "simplified_layer_norm": 2 * L + 1,
                                 "skip_simplified_layer_norm": 2 * L, "attention": L, "moe": L,
                                 "rotary_in_attention": L}
    assert report["refused"] == []
    prefill, decode = _prefill_and_step(cfg, sess, reference)
    assert prefill, prefill
    assert decode, decode


@pytest.mark.parametrize("experts,dense,max_rel", [("int8", "float32", 0.1), ("int4", "float32", 0.6),
                                                  ("int4", "int4", 0.8), ("float32", "int4", 0.8), ("float32", "q4", 0.8)])
def test_cpu_quantized_modes_report_their_error(tiny, reference, tmp_path, experts, dense, max_rel):
    cfg, ckpt = tiny
    sess, report = _lowered(ckpt, tmp_path, experts, dense)
    assert report["applied"]["moe"] == cfg.num_hidden_layers
    if dense != "float32":  # q/k/v fused, o_proj per layer, lm_head; routers refused
        assert report["applied"]["linear_q4" if dense == "q4" else "matmul_nbits"] == 2 * cfg.num_hidden_layers + 1
        assert {r["reason"] for r in report["refused"]} == {"router: kept float32 (quantized routing flips expert choices)"}
    prefill, decode = _prefill_and_step(cfg, sess, reference)
    stats = prefill["logits"]
    print(f"\ncpu experts={experts} dense={dense}: prefill logits rel {stats.rel:.3g}, top-1 {stats.top1:.3f}")
    assert 0 < stats.rel < max_rel, stats  # lossy, and by no more than measured (tiny random model)


def test_bad_options_name_the_option():
    with pytest.raises(MxportError, match="unknown experts 'fp8'"):
        lowering.lower(ir.Model(ir.Graph([], [], nodes=[]), ir_version=10), target="cpu", experts="fp8")
    with pytest.raises(MxportError, match=r"--experts int4 \(ORT\'s QMoE, 4-bit experts\) needs --target cpu or cuda; --target portable takes --experts mxfp4, float"):
        lowering.lower(ir.Model(ir.Graph([], [], nodes=[]), ir_version=10), target="portable", experts="int4")
    with pytest.raises(MxportError, match=r"--dense q4 \(ai.mxport.LinearQ4, .*native kernel\)\) needs --target cpu; --target cuda takes --dense float32, int8, int4"):
        lowering.lower(ir.Model(ir.Graph([], [], nodes=[]), ir_version=10), target="cuda", experts="int4", dense="q4")
    with pytest.raises(MxportError, match="--dense q4 .* always quantizes activations to int8"):
        lowering.lower(ir.Model(ir.Graph([], [], nodes=[]), ir_version=10), target="cpu", dense="q4",
                       accuracy_level=0)


def test_export_passes_dense_through(tiny, tmp_path):
    import json

    from mxport.exporter.export import export

    _, ckpt = tiny
    out = export(ckpt, tmp_path / "out", target="cpu", experts="int4", dense="int4", progress=False)
    meta = json.loads((out / "mxport.json").read_text())
    assert meta["dense"] == "int4" and meta["experts"] == "int4"
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node}
    assert {"MatMulNBits", "QMoE", "GroupQueryAttention"} <= ops and "MoEMXFP4" not in ops


def test_last_logits_equal_the_last_row_of_full_logits(tiny, tmp_path):
    from mxport.exporter.export import export

    cfg, ckpt = tiny
    full = export(ckpt, tmp_path / "full", target="cpu", experts="float32", progress=False)
    last = export(ckpt, tmp_path / "last", target="cpu", experts="float32", last_logits=True, progress=False)
    ids = np.random.default_rng(1).integers(3, cfg.vocab_size, (2, 7))
    mask = np.ones((2, 7), np.int64)
    mask[0, :2] = 0
    feeds = make_feeds(ids, mask, cfg=cfg)
    run = lambda d: dict(zip(  # noqa: E731
        [o.name for o in ort.InferenceSession(str(d / "model.onnx")).get_outputs()],
        ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)))
    a, b = run(full), run(last)
    assert b["logits"].shape == (2, 1, cfg.vocab_size)
    np.testing.assert_allclose(b["logits"], a["logits"][:, -1:], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(b["present.1.key"], a["present.1.key"])
    import json

    assert json.loads((last / "mxport.json").read_text())["last_logits"] is True


@pytest.mark.parametrize("dense", ["float32", "bfloat16"])
def test_cpu_mxfp4_is_exact_with_and_without_the_native_kernels(tiny, reference, tmp_path, dense):
    """--target cpu --experts mxfp4 [--dense bfloat16]: MoEMXFP4 (and LinearBF16) stay ai.mxport nodes. mxport's runner
    registers the native kernels (the profile shows them, no function body ran); plain ORT runs the same file
    through the function bodies; both equal the NumPy reference (prefill with padding + a cached step)."""
    import json

    import onnx

    from mxport.cli import main
    from mxport.ops import native
    from mxport.runtime.execution.runners import OrtRunner

    cfg, ckpt = tiny
    out = tmp_path / "out"
    argv = ["export", str(ckpt), "-o", str(out), "--target", "cpu", "--experts", "mxfp4", "--dense", dense,
            "--no-progress"]
    assert main(argv) == 0
    meta = json.loads((out / "mxport.json").read_text())
    L = cfg.num_hidden_layers
    assert meta["lowering"]["applied"]["moe"] == L and meta["lowering"]["applied"]["attention"] == L
    assert meta["lowering"]["refused"] == []
    ops = {(n.domain, n.op_type) for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node}
    assert ("ai.mxport", "MoEMXFP4") in ops and ("ai.mxport", "GroupQueryAttention") in ops
    if dense == "bfloat16":  # fused q/k/v, o_proj and router per layer, lm_head
        assert meta["lowering"]["applied"]["linear_bf16"] == 3 * L + 1
        assert ("ai.mxport", "LinearBF16") in ops and ("", "MatMul") not in ops
    body = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    prefill, decode = _prefill_and_step(cfg, body, reference)
    assert prefill, prefill
    assert decode, decode
    if native.library_path() is None:
        pytest.skip("native kernels not built")
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    fast = OrtRunner(out, session_options=so)
    prefill, decode = _prefill_and_step(cfg, fast.session, reference)
    assert prefill, prefill
    assert decode, decode
    events = json.loads(open(fast.session.end_profiling()).read())
    ran = [e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})]
    assert ran.count("MoEMXFP4") >= 2 * L and "Loop" not in ran  # every layer, both calls, natively
    if dense == "bfloat16":
        assert ran.count("LinearBF16") >= 2 * (3 * L + 1) and "MatMul" not in ran


def test_accuracy_level_option(tiny, tmp_path, capsys):
    """--accuracy-level reaches every quantized GEMM and mxport.json; impossible combinations exit 2."""
    import json

    import onnx

    from mxport.cli import main as cli_main

    _, ckpt = tiny
    out = tmp_path / "q"
    args = ["export", str(ckpt), "-o", str(out), "--target", "cpu", "--experts", "int4", "--dense", "int4",
            "--no-progress"]
    assert cli_main([*args, "--accuracy-level", "0"]) == 0
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    levels = {n.op_type: {a.name: a.i for a in n.attribute}["accuracy_level"] for n in graph.node
              if n.op_type in ("QMoE", "MatMulNBits")}
    assert levels == {"QMoE": 0, "MatMulNBits": 0}
    assert json.loads((out / "mxport.json").read_text())["accuracy_level"] == 0
    capsys.readouterr()
    assert cli_main(["export", str(ckpt), "-o", str(tmp_path / "i8"), "--target", "cpu", "--experts", "int8",
                     "--accuracy-level", "0"]) == 2
    assert "no float32-activation kernel" in capsys.readouterr().err
    assert cli_main([*args[:3], str(tmp_path / "bad"), *args[4:], "--accuracy-level", "7"]) == 2
    assert "--accuracy-level must be 0..4" in capsys.readouterr().err
    assert not (tmp_path / "i8").exists() and not (tmp_path / "bad").exists()
