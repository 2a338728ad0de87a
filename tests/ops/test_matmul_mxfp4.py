"""MatMulMXFP4: kernel == function body on ORT == function body on onnx.reference == A @ decode(W).T."""

from __future__ import annotations

import numpy as np
import pytest

from mxport.ops import matmul_mxfp4, mxfp4


@pytest.mark.parametrize("a_shape, n, k", [((1, 32), 1, 32), ((3, 64), 5, 64), ((2, 3, 96), 4, 96)])
def test_three_ways_match_numpy(run_op, a_shape, n, k):
    rng = np.random.default_rng(n * 1000 + k)
    a = rng.standard_normal(a_shape).astype(np.float32)
    blocks, scales = mxfp4.encode(rng.standard_normal((n, k)))
    want = a.astype(np.float64) @ mxfp4.decode(blocks, scales).astype(np.float64).T  # [..., N]
    got = run_op("MatMulMXFP4", {"A": a, "blocks": blocks, "scales": scales})
    for way, (out,) in got.items():
        assert out.shape == a_shape[:-1] + (n,), way
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5, err_msg=way)


def test_vector_input(run_op):
    """A rank-1 A[K] gives Y[N] (MatMul semantics)."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal(64).astype(np.float32)
    blocks, scales = mxfp4.encode(rng.standard_normal((3, 64)))
    want = mxfp4.decode(blocks, scales) @ a
    for way, (out,) in run_op("MatMulMXFP4", {"A": a, "blocks": blocks, "scales": scales}).items():
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6, err_msg=way)


def test_kernel_rejects_wrong_k():
    blocks, scales = mxfp4.encode(np.ones((2, 64)))
    with pytest.raises(ValueError, match=r"MatMulMXFP4: a.shape=\(3, 32\) does not end in K=64"):
        matmul_mxfp4._matmul_mxfp4(np.ones((3, 32), np.float32), blocks, scales)


def test_kernel_rejects_stacked_weight():
    blocks, scales = mxfp4.encode(np.ones((2, 2, 32)))
    with pytest.raises(ValueError, match=r"MatMulMXFP4: weight must be blocks \[N, K/32, 16\]"):
        matmul_mxfp4._matmul_mxfp4(np.ones((3, 32), np.float32), blocks, scales)
