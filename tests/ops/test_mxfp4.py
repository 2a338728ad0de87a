"""MXFP4 codec properties (OCP MX v1.0): exact round trips, nearest-even rounding with saturation, ml_dtypes agreement.

The oracle for rounding is a brute-force search written here from the spec: the shared exponent from
math.frexp, then the nearest of the eight E2M1 magnitudes, ties to the even code (even mantissa), capped at 6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mxport.ops import mxfp4

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAGNITUDES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]  # E2M1 codes 0..7, written out independently of the module
MIDPOINTS = [(a + b) / 2 for a, b in zip(MAGNITUDES, MAGNITUDES[1:])]


def nearest_even(t: float) -> float:
    """E2M1 value nearest to t (|t| capped at 6), ties to the even code."""
    mag = min(abs(t), 6.0)
    best = min(range(8), key=lambda c: (abs(MAGNITUDES[c] - mag), c % 2))
    return math.copysign(MAGNITUDES[best], t)


def spec_encode_decode(block: np.ndarray) -> tuple[int, np.ndarray]:
    """(scale byte, decoded values) of one 32-element float64 block per the spec."""
    amax = float(np.abs(block).max())
    if amax == 0:
        return 0, np.zeros(32)
    X = max(-127, min(127, math.frexp(amax)[1] - 1 - 2))
    return X + 127, np.array([nearest_even(v / 2.0**X) * 2.0**X for v in block])


# ---- strategies ----------------------------------------------------------------------------------------------------
codes = arrays(np.uint8, st.integers(1, 3).map(lambda nb: (nb, 32)), elements=st.integers(0, 15))


@st.composite
def representable(draw):
    """float32 blocks [NB, 32] whose values are all E2M1 values times a per-block power of two."""
    c = draw(codes)
    X = draw(arrays(np.int32, (c.shape[0],), elements=st.integers(-124, 125)))
    values = np.array(mxfp4.FP4_VALUES)[c] * np.ldexp(np.float32(1.0), X)[:, None].astype(np.float32)
    return values.astype(np.float32)


@st.composite
def tricky_block(draw):
    """One float64 block of 32 with a known shared exponent X and elements on, near and between E2M1 points."""
    X = draw(st.integers(-120, 120))
    anchor = draw(st.floats(4.0, 8.0, exclude_max=True))  # amax / 2^X in [4, 8): the exponent is X
    kinds = st.one_of(
        st.sampled_from(MIDPOINTS + MAGNITUDES),  # exact ties and exact values
        st.floats(0.0, 8.0, exclude_max=True),  # anything in range, incl. saturating (6, 8)
        st.sampled_from(MIDPOINTS).flatmap(  # one float64 ulp off a tie: must not double-round through float32
            lambda m: st.sampled_from([np.nextafter(m, 0.0), np.nextafter(m, 9.0)])
        ),
    )
    t = np.array([anchor] + draw(st.lists(kinds, min_size=31, max_size=31)))
    signs = np.array(draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=32, max_size=32)))
    order = np.array(draw(st.permutations(range(32))))
    return (t * signs)[order] * 2.0**X, X


# ---- properties ----------------------------------------------------------------------------------------------------
@SETTINGS
@given(representable())
def test_round_trip_of_representable_values(x):
    blocks, scales = mxfp4.encode(x)
    np.testing.assert_array_equal(mxfp4.decode(blocks, scales), x)
    np.testing.assert_array_equal(mxfp4.decode(*mxfp4.encode(x.astype(np.float64))), x)


@SETTINGS
@given(codes, st.integers(1, 252))  # 6 * 2^(253-127) overflows float32
def test_encode_of_decode_is_identity_when_the_block_uses_the_top_binade(c, s):
    c[:, 0] = 7  # +6 present: the encoder must pick this very scale
    blocks, scales = mxfp4.pack_codes(c), np.full(c.shape[0], s, np.uint8)
    x = mxfp4.decode(blocks, scales, np.float64)
    b2, s2 = mxfp4.encode(x)
    np.testing.assert_array_equal(s2, scales)
    np.testing.assert_array_equal(b2, blocks)  # including the sign of zero (code 8)


@SETTINGS
@given(tricky_block())
def test_nearest_ties_to_even_and_saturation(case):
    block, X = case
    scale, expected = spec_encode_decode(block)
    assert scale == X + 127
    blocks, scales = mxfp4.encode(block[None])
    assert scales.reshape(-1).tolist() == [scale]
    np.testing.assert_array_equal(mxfp4.decode(blocks, scales, np.float64)[0], expected)


@SETTINGS
@given(arrays(np.float64, (2, 64), elements=st.floats(-1e30, 1e30, allow_subnormal=False)))
def test_matches_spec_on_arbitrary_values(x):
    blocks, scales = mxfp4.encode(x)
    decoded = mxfp4.decode(blocks, scales, np.float64).reshape(4, 32)
    for i, block in enumerate(x.reshape(4, 32)):
        scale, expected = spec_encode_decode(block)
        assert scales.reshape(-1)[i] == scale
        np.testing.assert_array_equal(decoded[i], expected)


@SETTINGS
@given(arrays(np.float32, (3, 32), elements=st.floats(-1e4, 1e4, width=32)))
def test_float32_and_float64_inputs_agree(x):
    b32, s32 = mxfp4.encode(x)
    b64, s64 = mxfp4.encode(x.astype(np.float64))
    np.testing.assert_array_equal(b32, b64)
    np.testing.assert_array_equal(s32, s64)


@SETTINGS
@given(codes, arrays(np.uint8, (3,), elements=st.integers(0, 252)))
def test_decode_agrees_with_ml_dtypes(c, s):
    s = s[: c.shape[0]]
    blocks = mxfp4.pack_codes(c)
    elements = mxfp4.as_float4(blocks).astype(np.float64).reshape(c.shape)  # ml_dtypes' E2M1
    scale = mxfp4.as_e8m0(s).astype(np.float64)  # ml_dtypes' E8M0
    np.testing.assert_array_equal(mxfp4.decode(blocks, s, np.float64).reshape(c.shape), elements * scale[:, None])
    q, q_scale = mxfp4.exact_int8(blocks, s)  # the int8 form reproduces decode bit for bit
    np.testing.assert_array_equal(q.reshape(c.shape) * q_scale[:, None], mxfp4.decode(blocks, s).reshape(c.shape))


def test_code_book_and_scale_table_agree_with_ml_dtypes():
    np.testing.assert_array_equal(mxfp4.FP4_VALUES, np.arange(16, dtype=np.uint8).view(mxfp4.FLOAT4).astype(np.float32))
    assert np.array_equal(mxfp4.FP4_VALUES[:8], MAGNITUDES)
    every = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(mxfp4.scale_values(every), every.view(mxfp4.FLOAT8_E8M0).astype(np.float32))
    encoded = np.array(MAGNITUDES + MIDPOINTS + [7.0, 100.0], np.float32)  # element rounding = ml_dtypes' cast
    np.testing.assert_array_equal(encoded.astype(mxfp4.FLOAT4).astype(np.float64), [nearest_even(t) for t in encoded])


def test_scale_0xff_is_nan():
    blocks = mxfp4.pack_codes(np.full((2, 32), 3, np.uint8))
    out = mxfp4.decode(blocks, np.array([mxfp4.E8M0_NAN, 127], np.uint8)).reshape(2, 32)
    assert np.isnan(out[0]).all() and (out[1] == 1.5).all()
    assert np.isnan(mxfp4.exact_int8(blocks, np.array([255, 127], np.uint8))[1][0])


def test_packing_order_low_nibble_first():
    c = np.arange(32, dtype=np.uint8)[None] % 16
    blocks = mxfp4.pack_codes(c)
    assert blocks[0, 0] == 0x10 and blocks[0, 1] == 0x32  # element 0 low, element 1 high
    np.testing.assert_array_equal(mxfp4.unpack_codes(blocks), c)


def test_zero_block_and_extremes():
    blocks, scales = mxfp4.encode(np.zeros(32))
    assert scales.tolist() == [0] and not blocks.any()
    b, s = mxfp4.encode(np.full(32, 1e300))  # exponent clamps at 127, elements saturate at 6
    assert s.tolist() == [254] and (mxfp4.unpack_codes(b) == 7).all()
    b, s = mxfp4.encode(np.full(32, 1e-300))  # exponent clamps at -127, elements flush to zero
    assert s.tolist() == [0] and not b.any()


@pytest.mark.parametrize(
    "values, message",
    [(np.zeros(31), "not a multiple of 32"), (np.full(32, np.nan), "must be finite"), (np.full(32, np.inf), "finite")],
)
def test_encode_rejects_bad_input(values, message):
    with pytest.raises(ValueError, match=message):
        mxfp4.encode(values)


def test_decode_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="does not match"):
        mxfp4.decode(np.zeros((2, 16), np.uint8), np.zeros(3, np.uint8))
