"""Shared fixtures for the ai.mxport op tests: run one op node three ways.

    kernel     onnx.reference with the NumPy kernels (new_ops=reference_kernels())
    reference  onnx.reference with the function bodies alone (no new_ops)
    ort        ONNX Runtime CPU with the function bodies
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from mxport import ops


def build_model(op_type: str, inputs: dict[str, np.ndarray], n_outputs: int, **attrs) -> onnx.ModelProto:
    """A one-node model: graph inputs named like `inputs`, float outputs out0..out{n-1}."""
    outputs = [f"out{i}" for i in range(n_outputs)]
    node = ops.make_node(op_type, list(inputs), outputs, **attrs)
    graph = onnx.helper.make_graph(
        [node],
        f"test_{op_type}",
        [
            onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for name, a in inputs.items()
        ],
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs],
    )
    return ops.make_model(graph)


def run_three_ways(op_type: str, inputs: dict[str, np.ndarray], n_outputs: int = 1, **attrs) -> dict[str, list]:
    model = build_model(op_type, inputs, n_outputs, **attrs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return {
        "kernel": ReferenceEvaluator(model, new_ops=ops.reference_kernels()).run(None, inputs),
        "reference": ReferenceEvaluator(model).run(None, inputs),
        "ort": session.run(None, inputs),
    }


@pytest.fixture
def run_op():
    """run_op(op_type, inputs: dict[name, ndarray], n_outputs=1, **attrs) -> {"kernel"|"reference"|"ort": outputs}."""
    return run_three_ways


@pytest.fixture
def op_model():
    """op_model(op_type, inputs, n_outputs, **attrs) -> the one-node ModelProto run_op uses."""
    return build_model


@pytest.fixture
def monkeypatch_session():
    """A MonkeyPatch usable inside @given (function-scoped fixtures are not reset between examples)."""
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
