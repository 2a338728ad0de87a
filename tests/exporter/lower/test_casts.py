"""Weights beyond ORT's constant-folding limit are stored cast; mxport's sessions lift the limit for the rest."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mxport.exporter.lower import casts, rules
from mxport.runtime.execution.step_model import FOLDING_LIMIT_KEY, with_folding_limit

K, N = 64, 48


def _graph(to: int = TensorProto.FLOAT) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((K, N)).astype(ml_dtypes.bfloat16)
    x_type = TensorProto.FLOAT if to == TensorProto.FLOAT else TensorProto.FLOAT16
    nodes = [helper.make_node("Cast", ["w"], ["w_cast"], to=to, name="lm_head/matmul/weight_f32"),
             helper.make_node("MatMul", ["x", "w_cast"], ["y"], name="lm_head/matmul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", x_type, ["B", K])],
                              [helper.make_tensor_value_info("y", x_type, ["B", N])],
                              initializer=[numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def _materialize(proto: onnx.ModelProto, limit: int) -> tuple[onnx.ModelProto, int, rules.Context]:
    model = ir.serde.deserialize_model(proto)
    ctx = rules.Context(model=model, target="cpu", experts="float32", dtype="float32")
    done = casts.materialize_large_casts(ctx, limit=limit)
    rules.remove_dead(ctx)
    return ir.serde.serialize_model(model), done, ctx


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("to,np_type", [(TensorProto.FLOAT, np.float32), (TensorProto.FLOAT16, np.float16)])
def test_a_cast_beyond_the_limit_becomes_a_cast_initializer(to, np_type):
    before = _graph(to)
    after, done, ctx = _materialize(before, limit=K * N * np.dtype(np_type).itemsize - 1)
    assert done == 1 and ctx.report.applied["materialize_cast"] == 1
    assert [n.op_type for n in after.graph.node] == ["MatMul"]
    (init,) = after.graph.initializer  # the bf16 source is gone
    stored = numpy_helper.to_array(init)
    assert stored.dtype == np_type
    np.testing.assert_array_equal(stored, numpy_helper.to_array(before.graph.initializer[0]).astype(np_type))
    x = np.random.default_rng(1).standard_normal((3, K)).astype(np_type)
    np.testing.assert_array_equal(_run(after, x), _run(before, x))


def test_casts_within_the_limit_stay_for_ort_to_fold():
    _, done, _ = _materialize(_graph(), limit=K * N * 4)
    assert done == 0


def _optimized_ops(so: ort.SessionOptions, tmp_path) -> list[str]:
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(_graph().SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_mxport_sessions_fold_casts_of_any_size(tmp_path):
    """The option is real: ORT keeps the Cast under a small limit, and folds it under mxport's."""
    small = ort.SessionOptions()
    small.add_session_config_entry(FOLDING_LIMIT_KEY, "16")
    assert "Cast" in _optimized_ops(with_folding_limit(small), tmp_path)  # the caller's limit is kept
    assert small.get_session_config_entry(FOLDING_LIMIT_KEY) == "16"
    assert "Cast" not in _optimized_ops(with_folding_limit(), tmp_path)
