"""RMSNorm rules: RMSNormalization-23 -> SimplifiedLayerNormalization, residual Add + norm -> SkipSimplified.

The test graph is a residual chain shaped like the exporter's (add, norm, a user of the sum before the norm
and after it, a graph output on the sum) so the rewrite has to keep every user and the node order valid.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mxport.exporter.lower import norm, rules

H = 48


def _graph() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    g1, g2 = (rng.standard_normal(H).astype(np.float32) for _ in range(2))
    nodes = [
        helper.make_node("RMSNormalization", ["x", "g1"], ["n0"], axis=-1, epsilon=1e-5),  # first norm: no Add
        helper.make_node("Add", ["x", "a"], ["s1"]),  # residual
        helper.make_node("Identity", ["s1"], ["hidden"]),  # a user between the Add and its norm
        helper.make_node("RMSNormalization", ["s1", "g2"], ["n1"], axis=-1, epsilon=1e-5),
        helper.make_node("Add", ["s1", "n1"], ["s2"]),  # the next residual reads the sum
        helper.make_node("Add", ["n0", "s2"], ["y"]),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "norms",
        [helper.make_tensor_value_info(n, f, ["B", "S", H]) for n in ("x", "a")],
        [helper.make_tensor_value_info(n, f, ["B", "S", H]) for n in ("y", "hidden")],
        initializer=[numpy_helper.from_array(g1, "g1"), numpy_helper.from_array(g2, "g2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def _run(proto, feeds):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_norms_lower_and_stay_exact():
    before = _graph()
    model = ir.serde.deserialize_model(before)
    ctx = rules.Context(model=model, target="cpu", experts="float32", dtype="float32")
    report = rules.apply([norm.SimplifiedNorm(), norm.SkipSimplifiedNorm()], ctx)
    after = ir.serde.serialize_model(model)
    assert report.applied == {"simplified_layer_norm": 2, "skip_simplified_layer_norm": 1}
    assert sorted(n.op_type for n in after.graph.node) == [
        "Add", "Add", "Identity", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"]
    # (onnx.checker does not know ORT's SimplifiedLayerNormalization in the default domain; ORT runs it below)
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((2, 5, H)).astype(np.float32) * 3 for n in ("x", "a")}
    for y0, y1 in zip(_run(before, feeds), _run(after, feeds)):
        np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)


def test_skip_refuses_a_bias_add():
    g = _graph()
    g.graph.initializer.append(numpy_helper.from_array(np.ones(H, np.float32), "bias"))
    g.graph.node[1].input[1] = "bias"
    model = ir.serde.deserialize_model(g)
    ctx = rules.Context(model=model, target="cpu", experts="float32", dtype="float32")
    report = rules.apply([norm.SimplifiedNorm(), norm.SkipSimplifiedNorm()], ctx)
    assert report.applied["skip_simplified_layer_norm"] == 0
    assert "constant operand" in report.refused[0][2]
