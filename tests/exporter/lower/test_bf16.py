"""Dense MatMul(Cast(W bf16)) and a tied head MatMul(Transpose(Cast(E bf16))) -> ai.mxport.LinearBF16 (--dense bfloat16):
exact, reads the stored bf16 ([N, K]: W written transposed, E as it is), float32 refused."""

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


def _graph(w: np.ndarray, as_bf16: bool, tied: bool = False):
    """x @ W with W [K, N] stored (bf16 behind a Cast, or float32); tied: x @ Eᵀ with E = W.T stored [N, K] and
    also read by an embedding Gather, as exporter/layers.tied_output writes it."""
    nodes, inits = [], []
    stored = np.ascontiguousarray(w.T) if tied else w
    if as_bf16:
        inits.append(numpy_helper.from_array(stored.astype(ml_dtypes.bfloat16), "w"))
        nodes.append(helper.make_node("Cast", ["w"], ["w32"], to=TensorProto.FLOAT))
    else:
        inits.append(numpy_helper.from_array(stored, "w32"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", N])]
    if tied:
        nodes.append(helper.make_node("Transpose", ["w32"], ["wt"], perm=[1, 0]))
        nodes.append(helper.make_node("MatMul", ["x", "wt"], ["y"], name="lm_head/matmul"))
        inits.append(numpy_helper.from_array(np.array([1, 3], np.int64), "ids"))
        table = "w" if as_bf16 else "w32"
        nodes.append(helper.make_node("Gather", [table, "ids"], ["rows"]))
        nodes.append(helper.make_node("Cast", ["rows"], ["rows32"], to=TensorProto.FLOAT))
        outputs.append(helper.make_tensor_value_info("rows32", TensorProto.FLOAT, [2, K]))
    else:
        nodes.append(helper.make_node("MatMul", ["x", "w32"], ["y"], name="lm_head/matmul"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K])],
                              outputs, initializer=inits)
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


@pytest.mark.parametrize("tied", [False, True])
def test_bf16_weight_becomes_linear_bf16_with_identical_numbers(tied):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    before = _graph(w, as_bf16=True, tied=tied)
    after, report = _lower(before)
    assert report.applied["linear_bf16"] == 1
    assert [(n.domain, n.op_type) for n in after.graph.node if n.op_type not in ("Gather", "Cast")] == [
        ("ai.mxport", "LinearBF16")]
    # the stored bytes in W's [out, in] layout: one bf16 initializer, the table itself when tied (no copy)
    (init,) = after.graph.initializer if not tied else [t for t in after.graph.initializer if t.name == "w"]
    assert init.data_type == TensorProto.BFLOAT16 and list(init.dims) == [N, K]
    assert {t.data_type for t in after.graph.initializer} <= {TensorProto.BFLOAT16, TensorProto.INT64}
    if tied:
        assert after.graph.node[[n.op_type for n in after.graph.node].index("LinearBF16")].input[1] == "w"
    x = rng.standard_normal((2, 5, K)).astype(np.float32)
    want = _run(before, x, register=False)
    np.testing.assert_allclose(_run(after, x, register=False), want, rtol=0, atol=1e-6 * np.abs(want).max())
    if native.library_path() is not None:
        np.testing.assert_allclose(_run(after, x, register=True), want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("tied", [False, True])
def test_float32_weight_is_left_alone(tied):
    after, report = _lower(_graph(np.ones((K, N), np.float32), as_bf16=False, tied=tied))
    assert report.applied["linear_bf16"] == 0 and "not stored as bf16" in report.refused[0][2]
    assert "MatMul" in [n.op_type for n in after.graph.node]


def test_dense_bf16_needs_target_cpu():
    model = ir.serde.deserialize_model(_graph(np.ones((K, N), np.float32), as_bf16=True))
    with pytest.raises(MxportError, match=r"--dense bfloat16 \(ai.mxport.LinearBF16 .*\) needs --target cpu"):
        lowering.lower(model, target="cuda", experts="mxfp4", dense="bfloat16")
