"""The reference quantizes a CompInt8 GEMM's activations to the same int8 values as ONNX Runtime.

MLAS (QuantizeARow_CompInt8, its AVX2 and AVX-512 builds) multiplies each value by 127 / max|block|, one float32
division; the reference used 1 / (max|block| / 127), two. They differ in the last bit, and a value at x.5 steps
then rounds to the other integer: in a 1024-wide QMoE prefill about one token row in 150, enough to fail verify of
a mini-shaped `--experts int4` export. Here MatMulNBits multiplies by an identity matrix, so each output is one
dequantized activation, and every value sits where the two formulas round apart.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mxport.ops import quant
from mxport.runtime.oracle.quantized import BLOCK, int8_blocks

K = 4 * BLOCK


def _apart(rng: np.random.Generator, rows: int) -> np.ndarray:
    """[rows, K] float32: each block's first value is its max|x| (random), the others values where x · (127 / max)
    and x · (1 / (max / 127)) round to different integers (a few float32 steps around each x.5)."""
    out = np.empty((rows, K), np.float32)
    for r in range(rows):
        for b in range(K // BLOCK):
            while True:
                amax = np.float32(rng.uniform(0.5, 4.0))
                one, two = np.float32(127) / amax, np.float32(1) / (amax / np.float32(127))
                centre = ((np.arange(-126, 126) + np.float32(0.5)) / one).astype(np.float32)
                x = np.concatenate([np.nextafter(centre, np.float32(s * np.inf)) if s else centre
                                    for s in (-1, 0, 1)])
                x = x[(np.rint(x * one) != np.rint(x * two)) & (np.abs(x) < amax)]
                if len(x) >= BLOCK - 1:
                    break
            out[r, b * BLOCK : (b + 1) * BLOCK] = [amax, *rng.choice(x, BLOCK - 1, replace=False)]
    return out


def _identity_matmulnbits(bits: int) -> tuple[ort.InferenceSession, np.ndarray]:
    w = np.eye(K, dtype=np.float32)  # [N, K]: output n is activation n times the stored 1.0
    packed, scales = quant.quantize(w, bits)
    node = helper.make_node("MatMulNBits", ["a", "b", "s"], ["y"], domain="com.microsoft", K=K, N=K, bits=bits,
                            block_size=BLOCK, accuracy_level=4)
    graph = helper.make_graph(
        [node], "identity", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", K])],
        [numpy_helper.from_array(packed.reshape(K, K // BLOCK, -1), "b"), numpy_helper.from_array(scales, "s")])
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session, quant.dequantize(packed, scales, bits)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows", [1, 6])  # one row (decode's kernel) and several (prefill's)
def test_int8_activations_round_as_onnx_runtime(bits, rows):
    a = _apart(np.random.default_rng(bits * 10 + rows), rows)
    session, w = _identity_matmulnbits(bits)
    got = session.run(None, {"a": a})[0].astype(np.float64)
    want = int8_blocks(a).astype(np.float64) @ w.T.astype(np.float64)
    step = np.repeat(np.abs(a.reshape(rows, -1, BLOCK)).max(-1) / 127, BLOCK, axis=-1)
    off = np.abs(got - want) / step  # in int8 steps: a different rounding is one whole step
    assert off.max() < 0.01, f"{int((off > 0.5).sum())} of {off.size} activations rounded apart from ORT"
