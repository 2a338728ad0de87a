"""Fused QKV: sibling MatMul(+bias) on one input -> one MatMul + Add + Split, exact."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mxport.exporter.lower import linear, rules

H, NQ, NK = 32, 64, 16


def _graph(bf16: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for role, n in (("q", NQ), ("k", NK), ("v", NK)):
        w = rng.standard_normal((H, n)).astype(np.float32)
        if bf16:
            inits.append(numpy_helper.from_array(w.astype(ml_dtypes.bfloat16), f"{role}.w"))
            nodes.append(helper.make_node("Cast", [f"{role}.w"], [f"{role}.w32"], to=TensorProto.FLOAT))
        else:
            inits.append(numpy_helper.from_array(w, f"{role}.w32"))
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), f"{role}.b"))
        nodes.append(helper.make_node("MatMul", ["n", f"{role}.w32"], [f"{role}.mm"], name=f"attn/{role}_proj"))
        nodes.append(helper.make_node("Add", [f"{role}.mm", f"{role}.b"], [role]))
    nodes.append(helper.make_node("Neg", ["q"], ["q_neg"]))  # a consumer of one branch
    graph = helper.make_graph(
        nodes, "qkv", [helper.make_tensor_value_info("n", TensorProto.FLOAT, ["B", "S", H])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["B", "S", None]) for o in ("q_neg", "k", "v")], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


@pytest.mark.parametrize("bf16", [False, True])
def test_fused_qkv_is_exact(bf16):
    before = _graph(bf16)
    model = ir.serde.deserialize_model(before)
    ctx = rules.Context(model=model, target="cpu", experts="float32", dtype="float32")
    report = rules.apply([linear.FuseSiblingLinear()], ctx)
    rules.remove_dead(ctx)
    after = ir.serde.serialize_model(model)
    assert report.applied["fused_qkv"] == 1
    ops = [n.op_type for n in after.graph.node]
    assert ops.count("MatMul") == 1 and "Split" in ops and ops.count("Cast") == int(bf16)
    assert len(after.graph.initializer) == 3  # fused weight, fused bias, split sizes
    onnx.checker.check_model(after)
    x = np.random.default_rng(1).standard_normal((2, 3, H)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"n": x})  # noqa: E731
    for y0, y1 in zip(run(before), run(after)):
        np.testing.assert_allclose(y1, y0, rtol=1e-6, atol=1e-5)
