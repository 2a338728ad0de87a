"""Dense MatMul(Cast(W bf16)) -> ai.mxport.MatMulBF16 (--dense bf16): exact, reads the stored bf16, float32 refused."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mxport import ops
from mxport.errors import MxportError
from mxport.exporter import lower as lowering
from mxport.exporter.lower import bf16, rules
from mxport.ops import native

K, N = 96, 40


def _graph(w: np.ndarray, as_bf16: bool):
    nodes, inits = [], []
    if as_bf16:
        inits.append(numpy_helper.from_array(w.astype(ml_dtypes.bfloat16), "w"))
        nodes.append(helper.make_node("Cast", ["w"], ["w32"], to=TensorProto.FLOAT))
    else:
        inits.append(numpy_helper.from_array(w, "w32"))
    nodes.append(helper.make_node("MatMul", ["x", "w32"], ["y"], name="lm_head/matmul"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", N])], initializer=inits)
    return helper.make_model(graph, opset_imports=ops.opset_imports(), functions=ops.functions())


def _lower(proto):
    model = ir.serde.deserialize_model(proto)
    ctx = rules.Context(model=model, target="cpu", experts="mxfp4", dtype="float32")
    report = rules.apply([bf16.DenseBF16()], ctx)
    rules.remove_dead(ctx)
    return ir.serde.serialize_model(model), report


def _run(proto, x, register: bool):
    so = ort.SessionOptions()
    if register:
        so.register_custom_ops_library(str(native.library_path()))
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_bf16_weight_becomes_matmul_bf16_with_identical_numbers():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    before = _graph(w, as_bf16=True)
    after, report = _lower(before)
    assert report.applied["matmul_bf16"] == 1
    assert [(n.domain, n.op_type) for n in after.graph.node] == [("ai.mxport", "MatMulBF16")]
    assert {t.data_type for t in after.graph.initializer} == {TensorProto.BFLOAT16}  # the stored bytes, no copy
    x = rng.standard_normal((2, 5, K)).astype(np.float32)
    want = _run(before, x, register=False)
    np.testing.assert_allclose(_run(after, x, register=False), want, rtol=0, atol=1e-6 * np.abs(want).max())
    if native.library_path() is not None:
        np.testing.assert_allclose(_run(after, x, register=True), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_float32_weight_is_left_alone():
    after, report = _lower(_graph(np.ones((K, N), np.float32), as_bf16=False))
    assert report.applied["matmul_bf16"] == 0 and "not stored as bf16" in report.refused[0][2]
    assert [n.op_type for n in after.graph.node] == ["MatMul"]


def test_dense_bf16_needs_target_cpu():
    model = ir.serde.deserialize_model(_graph(np.ones((K, N), np.float32), as_bf16=True))
    with pytest.raises(MxportError, match="--dense bf16"):
        lowering.lower(model, target="cuda", experts="mxfp4", dense="bf16")
