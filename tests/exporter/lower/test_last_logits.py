"""--last-logits on every head kind: logits [B,1,V] for each --dense form (qwen3-tiny, tied head) and each gpt-oss
--experts form (tiny, untied head), equal to the last row of the same mode's full logits; mxport.json and the
lowering report say so. A head the rule does not know is refused by name and nothing claims last logits."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from mxport.exporter import lower as lowering
from mxport.exporter.export import export
from mxport.exporter.synth import PRESETS, write_checkpoint
from mxport.runtime.execution.step_model import OrtStepModel

# (preset, --experts, --dense, the head's op): qwen3-tiny's tied head (K=80) is no MatMulNBits block multiple, so
# its int8/int4 heads stay FusedMatMul; gpt-oss tiny's untied one (K=64) becomes MatMulNBits
FORMS = [("qwen3-tiny", None, "float32", "FusedMatMul"), ("qwen3-tiny", None, "bfloat16", "LinearBF16"),
         ("qwen3-tiny", None, "int8", "FusedMatMul"), ("qwen3-tiny", None, "int4", "FusedMatMul"),
         ("qwen3-tiny", None, "q4", "LinearQ4"), ("tiny", "float32", "float32", "MatMul"),
         ("tiny", "mxfp4", "float32", "MatMul"), ("tiny", "mxfp4", "bfloat16", "LinearBF16"),
         ("tiny", "int4", "int4", "MatMulNBits"), ("tiny", "int8", "q4", "LinearQ4")]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("last_logits")
    return {name: write_checkpoint(root / name, PRESETS[name]) for name in ("qwen3-tiny", "tiny")}


def _logits(folder, ids) -> np.ndarray:
    model = OrtStepModel(folder, "cpu")
    n = ids.shape[1]
    logits, _ = model.step(ids, np.ones_like(ids), np.arange(n, dtype=np.int64)[None].repeat(len(ids), 0),
                           model.new_cache(len(ids), capacity=n + 1))
    return logits


@pytest.mark.parametrize("preset,experts,dense,head_op", FORMS, ids=[f"{p}-{e}-{d}" for p, e, d, _ in FORMS])
def test_last_logits_apply_to_every_head(checkpoints, tmp_path, preset, experts, dense, head_op):
    import onnx

    ckpt = checkpoints[preset]
    vocab = PRESETS[preset].vocab_size
    options = dict(target="cpu", experts=experts, dense=dense, progress=False)
    full = export(ckpt, tmp_path / "full", **options)
    last = export(ckpt, tmp_path / "last", last_logits=True, **options)
    meta = json.loads((last / "mxport.json").read_text())
    assert meta["last_logits"] is True and meta["lowering"]["last_logits"] is True
    assert meta["lowering"]["applied"]["last_logits"] == 1
    assert not [r for r in meta["lowering"]["refused"] if r["rule"] == "last_logits"]
    graph = onnx.load(str(last / "model.onnx"), load_external_data=False).graph
    head = next(n for n in graph.node if "logits" in n.output)
    assert head.op_type == head_op  # the head kind of this form, its input sliced
    assert next(n for n in graph.node if n.output[0] == head.input[0]).op_type == "Slice"

    ids = np.random.default_rng(3).integers(3, vocab, (2, 6))
    a, b = _logits(full, ids), _logits(last, ids)
    assert a.shape == (2, 6, vocab) and b.shape == (2, 1, vocab)
    np.testing.assert_allclose(b, a[:, -1:], rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))


def _graph_with_head(op_type: str, domain: str = "") -> ir.Model:
    x = ir.Value(name="x", shape=ir.Shape(["B", "S", 4]), type=ir.TensorType(ir.DataType.FLOAT))
    w = ir.Value(name="w", const_value=ir.tensor(np.ones((4, 4), np.float32), name="w"))
    mm = ir.node("MatMul", [x, w], name="lm_head")
    cap = ir.node(op_type, [mm.outputs[0]], domain=domain, name="softcap")
    cap.outputs[0].name = "logits"
    graph = ir.Graph([x], [cap.outputs[0]], nodes=[mm, cap], initializers=[w], opset_imports={"": 20})
    return ir.Model(graph, ir_version=10)


def test_an_unknown_head_is_refused_by_name_and_not_claimed():
    model = lowering.lower(_graph_with_head("Tanh"), target="cpu", experts="float32", last_logits=True)
    report = lowering.report(model)
    assert report["last_logits"] is False and "last_logits" not in report["applied"]
    (refusal,) = [r for r in report["refused"] if r["rule"] == "last_logits"]
    assert refusal["node"] == "softcap" and "Tanh" in refusal["reason"]
    assert not [n for n in model.graph if n.op_type == "Slice"]  # the graph keeps every position


def test_a_position_wise_head_is_sliced():
    x = ir.Value(name="x", shape=ir.Shape(["B", "S", 4]), type=ir.TensorType(ir.DataType.FLOAT))
    w = ir.Value(name="w", const_value=ir.tensor(np.ones((4, 4), np.float32), name="w"))
    mm = ir.node("MatMul", [x, w], name="head")
    mm.outputs[0].name = "logits"
    model = ir.Model(ir.Graph([x], [mm.outputs[0]], nodes=[mm], initializers=[w], opset_imports={"": 20}),
                     ir_version=10)
    model = lowering.lower(model, target="cpu", experts="float32", last_logits=True)
    assert lowering.report(model)["last_logits"] is True
    assert [n.op_type for n in model.graph] == ["Slice", "MatMul"]
