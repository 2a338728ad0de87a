"""ai.mxport.LinearQ4: the format (ops/linear_q4.py), its NumPy kernel, its function body and the native kernel.

The format is checked against independent arithmetic (a dequantized float matrix and NumPy's matmul); the NumPy
kernel's int8 activations against an input that int8 holds exactly; the native kernel (AVX-512, AVX2, plain C) against
the NumPy kernel ≤ 1e-5 relative; the function body against the float product on the decoded weights.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxport.ops.quant import int4_dequantize, int4_quantize
from mxport.ops import linear_q4

from .test_native import ISAS, LIB, PROPERTY, _profiled_ops, _rel, _session, build_model, needs_lib


def _weights(rng, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A float W with sub-blocks of very different sizes (so sub-scales span 1..255), and its LinearQ4 parts."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    w *= np.exp(rng.uniform(-4, 1, (n, (k + 31) // 32))).repeat(32, axis=1)[:, :k].astype(np.float32)
    packed, scales = linear_q4.quantize(w)
    return w, packed, scales


# ---- the format -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, k", [(64, 1024), (9, 300), (3, 7), (5, 32)])
def test_layout_shapes_and_padding(n, k):
    rng = np.random.default_rng(k)
    w, packed, scales = _weights(rng, n, k)
    s = -(-k // 256)
    assert packed.shape == (n, s, 136) and packed.dtype == np.uint8 and scales.shape == (n, s)
    q, sub = linear_q4.codes(packed)
    assert q.min() >= -8 and q.max() <= 7 and sub.dtype == np.uint8
    flat = q.reshape(n, -1)
    assert not flat[:, k:].any()  # the padding decodes to zero
    assert linear_q4.dequantize(packed, scales, k).shape == (n, k)


def test_nibble_order_is_the_documented_one():
    """Byte i of chunk c: value 64c + i in the low nibble, 64c + 32 + i in the high one; sub-scale j of 32 values."""
    values = np.zeros((1, 256), np.float32)
    values[0, 64 * 2 + 5] = 3.0  # chunk 2, low nibble of byte 5
    values[0, 64 * 2 + 32 + 5] = -1.5  # chunk 2, high nibble of byte 5
    packed, d = linear_q4.quantize(values)
    byte = packed[0, 0, 8 + 32 * 2 + 5]
    lo, hi = (int(byte) & 15) - 8, (int(byte) >> 4) - 8
    sub = packed[0, 0, :8].astype(np.float32)
    assert lo * d[0, 0] * sub[4] == pytest.approx(3.0, rel=0.02)  # sub-block 4 = chunk 2 low
    assert hi * d[0, 0] * sub[5] == pytest.approx(-1.5, rel=0.02)  # sub-block 5 = chunk 2 high
    assert sub[0] == sub[1] == sub[7] == 0  # all-zero sub-blocks
    assert packed[0, 0, 8:8 + 64].tolist() == [0x88] * 64  # zeros are q = 8 in both nibbles


def test_error_matches_int4_per_block():
    """The 8-bit sub-scales cost next to nothing: the weight error is that of a float32 scale per 32 (--dense int4)."""
    rng = np.random.default_rng(0)
    w, packed, scales = _weights(rng, 256, 1024)
    err = np.linalg.norm(linear_q4.dequantize(packed, scales, 1024) - w) / np.linalg.norm(w)
    int4 = np.linalg.norm(int4_dequantize(*int4_quantize(w)) - w) / np.linalg.norm(w)
    print(f"\nweight error: LinearQ4 {err:.4f}, int4 block 32 {int4:.4f}")
    assert 0.05 < err <= int4 * 1.03


def test_zero_rows_and_constant_rows():
    w = np.zeros((3, 300), np.float32)
    w[1] = 0.25
    packed, scales = linear_q4.quantize(w)
    got = linear_q4.dequantize(packed, scales, 300)
    assert not got[0].any() and not got[2].any() and np.allclose(got[1], 0.25, rtol=1e-6)


# ---- the NumPy kernel ---------------------------------------------------------------------------------------------
def test_numpy_kernel_is_exact_when_int8_holds_the_activations():
    """Activations that are integers with max |a| = 127 in every super-block quantize to themselves (scale 1), so
    the kernel equals the float product on the decoded weights up to float32 rounding."""
    rng = np.random.default_rng(1)
    k = 600
    _, packed, scales = _weights(rng, 40, k)
    a = rng.integers(-127, 128, (5, k)).astype(np.float32)
    a[:, ::256] = 127.0
    want = a.astype(np.float64) @ linear_q4.dequantize(packed, scales, k).astype(np.float64).T
    assert _rel(linear_q4._linear_q4(a, packed, scales), want) <= 2e-6


def test_numpy_kernel_error_is_the_activation_rounding():
    rng = np.random.default_rng(2)
    _, packed, scales = _weights(rng, 64, 1024)
    a = rng.standard_normal((4, 1024)).astype(np.float32)
    want = a @ linear_q4.dequantize(packed, scales, 1024).T
    got = linear_q4._linear_q4(a, packed, scales)
    assert 1e-4 < np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-2


def test_numpy_kernel_names_bad_shapes():
    packed, scales = linear_q4.quantize(np.ones((4, 300), np.float32))
    with pytest.raises(ValueError, match="LinearQ4"):
        linear_q4._linear_q4(np.ones((2, 600), np.float32), packed, scales)


# ---- function body and native kernel ------------------------------------------------------------------------------
def test_function_body_is_the_float_product_on_the_decoded_weights():
    rng = np.random.default_rng(3)
    k = 300
    _, packed, scales = _weights(rng, 24, k)
    a = rng.standard_normal((2, 3, k)).astype(np.float32)
    inputs = {"a": a}
    got = _session(build_model("LinearQ4", inputs, 1, weights={"w": packed, "d": scales}), register=False).run(None, inputs)[0]
    want = a @ linear_q4.dequantize(packed, scales, k).T
    assert got.shape == (2, 3, 24) and _rel(got, want) <= 1e-5


@needs_lib
@PROPERTY
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=1), m=st.integers(1, 9), k=st.integers(1, 700),
       n=st.integers(1, 80), isa=st.sampled_from(ISAS), seed=st.integers(0, 2**16))
def test_native_equals_numpy(lead, m, k, n, isa, seed, monkeypatch_session):
    rng = np.random.default_rng(seed)
    _, packed, scales = _weights(rng, n, k)
    a = (rng.standard_normal((*lead, m, k)) * rng.uniform(0.01, 100)).astype(np.float32)
    inputs = {"a": a}
    want = linear_q4._linear_q4(a, packed, scales)
    got = _session(build_model("LinearQ4", inputs, 1, weights={"w": packed, "d": scales}), register=True, isa=isa,
                   monkeypatch=monkeypatch_session).run(None, inputs)[0]
    assert got.shape == want.shape
    assert _rel(got, want) <= 1e-5


@needs_lib
@pytest.mark.parametrize("m, k, n", [(1, 2048, 700), (6, 1024, 2100), (3, 3072, 300)])
def test_native_over_several_row_blocks_and_tasks(m, k, n, monkeypatch_session):
    """Weight rows split over threads; several rows of A re-read ~256 KB blocks of weight rows."""
    rng = np.random.default_rng(k + n)
    _, packed, scales = _weights(rng, n, k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    inputs = {"a": a}
    got = _session(build_model("LinearQ4", inputs, 1, weights={"w": packed, "d": scales}), register=True,
                   monkeypatch=monkeypatch_session).run(None, inputs)[0]
    assert _rel(got, linear_q4._linear_q4(a, packed, scales)) <= 1e-5


@needs_lib
@pytest.mark.parametrize("m, k, n", [(0, 5, 3), (2, 0, 3), (2, 5, 0)])
def test_native_empty_products(m, k, n, monkeypatch_session):
    packed, scales = linear_q4.quantize(np.ones((n, k), np.float32))
    a = np.ones((m, k), np.float32)
    inputs = {"a": a}
    got = _session(build_model("LinearQ4", inputs, 1, weights={"w": packed, "d": scales}), register=True,
                   monkeypatch=monkeypatch_session).run(None, inputs)[0]
    np.testing.assert_array_equal(got, np.zeros((m, n), np.float32))


@needs_lib
def test_registered_kernel_runs_instead_of_the_function_body(tmp_path):
    """With the library the profile shows LinearQ4 itself; without it the body's MatMul: numbers within the int8
    activation rounding of each other."""
    rng = np.random.default_rng(4)
    _, packed, scales = _weights(rng, 40, 512)
    inputs = {"a": rng.standard_normal((3, 512)).astype(np.float32)}
    model = build_model("LinearQ4", inputs, 1, weights={"w": packed, "d": scales})
    native_sess = _session(model, register=True, profile=str(tmp_path / "native"))
    body_sess = _session(model, register=False, profile=str(tmp_path / "body"))
    got, body = native_sess.run(None, inputs)[0], body_sess.run(None, inputs)[0]
    assert _profiled_ops(native_sess) == {"LinearQ4"}
    assert "LinearQ4" not in _profiled_ops(body_sess)
    assert 1e-5 < np.linalg.norm(got - body) / np.linalg.norm(body) < 2e-2
    assert LIB is not None


@needs_lib
@pytest.mark.parametrize("isa", ISAS)
def test_non_finite_activations_stay_non_finite(isa, monkeypatch_session):
    """A NaN in a row of A makes that row's outputs NaN, an inf makes them inf or NaN, as float32 math would (int8
    cannot hold them): never a finite number; the other rows are untouched. NumPy kernel and native agree."""
    _, packed, scales = _weights(np.random.default_rng(6), 16, 300)
    a = np.random.default_rng(7).standard_normal((3, 300)).astype(np.float32)
    a[0, 5], a[1, 290] = np.nan, np.inf
    inputs = {"a": a}
    got = _session(build_model("LinearQ4", inputs, 1, weights={"w": packed, "d": scales}), register=True, isa=isa,
                   monkeypatch=monkeypatch_session).run(None, inputs)[0]
    want = linear_q4._linear_q4(a, packed, scales)
    assert np.isnan(got[0]).all() and np.isnan(want[0]).all()
    assert not np.isfinite(got[1]).any() and not np.isfinite(want[1]).any()
    assert np.isfinite(got[2]).all() and _rel(got[2], want[2]) <= 1e-5


@needs_lib
def test_native_kernel_names_mismatched_shapes():
    """A is K = 600 wide (3 super-blocks) but W holds 2: ORT's error names the op and the expected layout."""
    import onnxruntime as ort

    packed, scales = linear_q4.quantize(np.ones((4, 300), np.float32))
    inputs = {"a": np.ones((2, 600), np.float32)}
    sess = _session(build_model("LinearQ4", inputs, 1, weights={"w": packed, "d": scales}), register=True)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                       match=r"LinearQ4: expected .* found A\[..., 600\] \(rank 2\), W\[4, 2, 136\], D\[4, 2\]"):
        sess.run(None, inputs)
