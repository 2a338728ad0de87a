"""LayerNorm rule: residual Add + LayerNormalization -> com.microsoft SkipLayerNormalization, exact on ORT CPU;
the cuda lowering of a GPT-2 checkpoint checked against ORT's registered contrib schemas."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mxport.exporter import decoder_graph
from mxport.exporter import lower as lowering
from mxport.exporter.checkpoint import open_checkpoint
from mxport.exporter.families.gpt2 import PRESETS
from mxport.exporter.lower import layernorm, rules

from .test_cuda import check_against_ort

H = 40


def _graph() -> onnx.ModelProto:
    """A residual chain like GPT-2's: a norm with no Add, a residual Add read by a norm and by later nodes, and an
    Add of a constant (a bias) before a norm, which must stay."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(H).astype(np.float32), n) for n in ("g", "b", "c")]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["n0"], axis=-1, epsilon=1e-5),
        helper.make_node("Add", ["x", "a"], ["s1"]),
        helper.make_node("Identity", ["s1"], ["hidden"]),  # a user between the Add and its norm
        helper.make_node("LayerNormalization", ["s1", "g", "b"], ["n1"], axis=-1, epsilon=1e-3),
        helper.make_node("Add", ["s1", "n1"], ["s2"]),
        helper.make_node("Add", ["s2", "c"], ["s3"]),  # bias, not a residual
        helper.make_node("LayerNormalization", ["s3", "g", "b"], ["n3"], axis=-1, epsilon=1e-5),
        helper.make_node("Add", ["n0", "n3"], ["y"]),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "layernorms",
                              [helper.make_tensor_value_info(n, f, ["B", "S", H]) for n in ("x", "a")],
                              [helper.make_tensor_value_info(n, f, ["B", "S", H]) for n in ("y", "hidden")],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def _run(proto, feeds):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_skip_layer_norm_is_exact_and_refuses_a_bias_add():
    before = _graph()
    model = ir.serde.deserialize_model(before)
    ctx = rules.Context(model=model, target="cpu", experts="float32", dtype="float32")
    report = rules.apply([layernorm.SkipLayerNorm()], ctx)
    after = ir.serde.serialize_model(model)
    assert report.applied == {"skip_layer_norm": 1}
    assert [r["reason"] for r in report.as_dict()["refused"]] == [
        "the Add has a constant operand (a bias, not a residual)"]
    assert sorted(n.op_type for n in after.graph.node) == [
        "Add", "Add", "Add", "Identity", "LayerNormalization", "LayerNormalization", "SkipLayerNormalization"]
    skip = next(n for n in after.graph.node if n.op_type == "SkipLayerNormalization")
    assert helper.get_attribute_value(skip.attribute[0]) == np.float32(1e-3) and skip.output[3] == "s1"
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((2, 5, H)).astype(np.float32) * 3 for n in ("x", "a")}
    for y0, y1 in zip(_run(before, feeds), _run(after, feeds)):
        np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)


def test_gpt2_cuda_graph_follows_ort_contracts(make_checkpoint):
    cfg = PRESETS["gpt2-tiny"]
    with open_checkpoint(make_checkpoint(cfg)) as c:
        b, inputs, outputs = decoder_graph.build(c)
        model = lowering.lower(b.model(inputs, outputs), target="cuda", experts="float32", dtype="float16",
                               dense="int4")
        proto, report = ir.serde.serialize_model(model), lowering.report(model)
    assert report["refused"] == []
    ops = [n.op_type for n in proto.graph.node]
    L = cfg.num_hidden_layers
    assert ops.count("GroupQueryAttention") == L and ops.count("SkipLayerNormalization") == 2 * L + 1
    assert ops.count("MatMulNBits") == 4 * L + 1  # c_attn, attn.c_proj, c_fc, mlp.c_proj per layer, tied head
    assert {n.domain for n in proto.graph.node} <= {"", "com.microsoft"}
    assert check_against_ort(proto) == []
