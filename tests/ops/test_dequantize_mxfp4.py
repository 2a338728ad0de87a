"""DequantizeMXFP4: kernel == function body on ORT == function body on onnx.reference == the codec's decode."""

from __future__ import annotations

import numpy as np
import pytest

from mxport.ops import dequantize_mxfp4, mxfp4


def _random_mxfp4(rng: np.random.Generator, shape: tuple[int, ...], nb: int, lo: int = 100, hi: int = 150):
    blocks = rng.integers(0, 256, size=shape + (nb, mxfp4.BYTES_PER_BLOCK), dtype=np.uint8)
    scales = rng.integers(lo, hi, size=shape + (nb,), dtype=np.uint8)
    return blocks, scales


@pytest.mark.parametrize("shape, nb", [((), 1), ((3,), 2), ((2, 5), 3), ((2, 1, 4), 1)])
def test_three_ways_match_decode(run_op, shape, nb):
    rng = np.random.default_rng(len(shape) * 10 + nb)
    blocks, scales = _random_mxfp4(rng, shape, nb)
    want = mxfp4.decode(blocks, scales)
    assert want.shape == shape + (nb * mxfp4.BLOCK_SIZE,)
    got = run_op("DequantizeMXFP4", {"blocks": blocks, "scales": scales})
    for way, (out,) in got.items():
        assert out.dtype == np.float32, way
        np.testing.assert_array_equal(out, want, err_msg=way)  # exact: every value is representable


@pytest.mark.filterwarnings("ignore:overflow encountered")  # 6 * 2^127 is inf in float32, in every way
def test_every_code_every_scale_byte_incl_nan(run_op):
    """All 16 codes in both nibbles under all 256 scale bytes: exact, subnormals kept, 0xFF -> NaN block."""
    codes = np.arange(16, dtype=np.uint8)
    pairs = (codes[:, None] | (codes[None, :] << 4)).reshape(-1)  # all 256 bytes, [256]
    blocks = np.broadcast_to(pairs.reshape(16, 16), (256, 16, 16)).reshape(256, 16, 16).copy()  # [256, NB=16, 16]
    scales = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, 16)).copy()  # [256, 16]
    with np.errstate(over="ignore"):  # byte 0xFF: inf before decode writes NaN
        want = mxfp4.decode(blocks, scales)
    assert np.isnan(want[255]).all() and not np.isnan(want[:255]).any()
    for way, (out,) in run_op("DequantizeMXFP4", {"blocks": blocks, "scales": scales}).items():
        np.testing.assert_array_equal(out, want, err_msg=way)
        assert np.array_equal(np.signbit(out[:255]), np.signbit(want[:255])), f"{way}: sign of zero differs"


def test_nibble_order_low_first():
    """Byte j holds element 2j in the low nibble (gpt-oss order): 0x71 -> 0.5 then 6."""
    blocks = np.zeros((1, mxfp4.BYTES_PER_BLOCK), np.uint8)
    blocks[0, 0] = 0x71
    out = dequantize_mxfp4._dequantize_mxfp4(blocks, np.array([mxfp4.E8M0_BIAS], np.uint8))
    assert out[0] == 0.5 and out[1] == 6.0 and not out[2:].any()


def test_kernel_rejects_mismatched_shapes():
    blocks = np.zeros((2, 3, 16), np.uint8)
    with pytest.raises(ValueError, match=r"DequantizeMXFP4.*blocks.shape=\(2, 3, 16\).*scales.shape=\(2, 4\)"):
        dequantize_mxfp4._dequantize_mxfp4(blocks, np.zeros((2, 4), np.uint8))
