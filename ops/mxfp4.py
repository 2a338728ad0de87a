"""MXFP4 (OCP Microscaling Formats v1.0): every format fact mxport relies on, in one place.

A block of 32 E2M1 elements shares one E8M0 scale.

    scale byte s      -> 2^(s - 127); 0xFF is NaN
    element nibble c  -> bit 3 sign, codes 0..7 -> 0, 0.5, 1, 1.5, 2, 3, 4, 6
    packed byte j     -> element 2j in the low nibble, element 2j+1 in the high nibble (gpt-oss order)

    blocks uint8 [..., K/32, 16] + scales uint8 [..., K/32]  <->  values [..., K]

Exporter, kernels, synthetic checkpoints and tests all use this module; nothing else spells these constants.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

BLOCK_SIZE = 32  # elements sharing one scale
BYTES_PER_BLOCK = BLOCK_SIZE // 2  # two E2M1 nibbles per byte
E8M0_BIAS = 127  # scale byte s means 2^(s - 127)
E8M0_NAN = 0xFF  # the one NaN encoding of E8M0
E2M1_MAX = 6.0  # largest E2M1 magnitude
E2M1_EMAX = 2  # exponent of E2M1_MAX (6 = 1.5 * 2^2): the OCP shared exponent is floor(log2 amax) - emax

# E2M1 code -> value; codes 8..15 are the negatives of 0..7 (bit 3 is the sign).
FP4_VALUES = np.array(
    [+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float32,
)

# Name maps: how each checkpoint layout names the two halves of an MXFP4 tensor.
HF_SUFFIXES = ("_blocks", "_scales")  # model.layers.N.mlp.experts.gate_up_proj_blocks / _scales
ORIGINAL_SUFFIXES = (".blocks", ".scales")  # block.N.mlp.mlp1_weight.blocks / .scales

# Rounding boundaries between neighbouring non-negative E2M1 values (0.25, 0.75, ..., 5).
_E2M1_MIDPOINTS = (FP4_VALUES[1:8] + FP4_VALUES[0:7]) / 2

FLOAT4 = ml_dtypes.float4_e2m1fn
FLOAT8_E8M0 = ml_dtypes.float8_e8m0fnu
BFLOAT16 = ml_dtypes.bfloat16


def check_shapes(blocks: np.ndarray, scales: np.ndarray, name: str = "mxfp4 tensor") -> None:
    """Raise ValueError unless blocks [..., NB, 16] uint8 and scales [..., NB] uint8 belong together."""
    if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
        raise ValueError(f"{name}: blocks and scales must be uint8, found {blocks.dtype=} {scales.dtype=}")
    if blocks.ndim < 2 or blocks.shape[-1] != BYTES_PER_BLOCK or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"{name}: {blocks.shape=} does not match {scales.shape=} (expected [..., NB, 16] and [..., NB])")


def unpack_codes(blocks: np.ndarray) -> np.ndarray:
    """uint8 [..., NB, 16] -> E2M1 codes uint8 [..., NB, 32] (low nibble first)."""
    codes = np.empty(blocks.shape[:-1] + (BLOCK_SIZE,), dtype=np.uint8)
    codes[..., 0::2] = blocks & 0x0F
    codes[..., 1::2] = blocks >> 4
    return codes


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """E2M1 codes uint8 [..., NB, 32] -> uint8 [..., NB, 16]."""
    codes = np.asarray(codes, dtype=np.uint8)
    return (codes[..., 0::2] & 0x0F) | (codes[..., 1::2] << 4)


def scale_values(scales: np.ndarray) -> np.ndarray:
    """E8M0 bytes -> float32 2^(s-127), NaN for 0xFF (explicit: 2^128 is not a float32 anyway)."""
    with np.errstate(over="ignore"):  # 0xFF gives 2^128 = inf here, replaced by NaN below
        out = np.ldexp(np.float32(1.0), scales.astype(np.int32) - E8M0_BIAS).astype(np.float32)
    out[scales == E8M0_NAN] = np.nan
    return out


def decode(blocks: np.ndarray, scales: np.ndarray, dtype: np.dtype = np.float32) -> np.ndarray:
    """blocks uint8 [..., NB, 16] + scales uint8 [..., NB] -> values [..., NB*32] in `dtype` (float32 or bfloat16).

    float32 holds every decoded value exactly (E2M1 has 2 significant bits, the scale is a power of two),
    except the float32 subnormal tail below 2^-149, which underflows to 0 as in every float32 implementation.
    """
    check_shapes(blocks, scales)
    values = FP4_VALUES[unpack_codes(blocks)]  # [..., NB, 32]
    exponents = scales.astype(np.int32)[..., None] - E8M0_BIAS
    with np.errstate(over="ignore"):  # 6 * 2^127 and up do not fit float32: inf, as any float32 decoder gives
        out = np.ldexp(values, exponents).astype(np.float32)
    if (scales == E8M0_NAN).any():
        out[np.broadcast_to((scales == E8M0_NAN)[..., None], out.shape)] = np.nan
    out = out.reshape(blocks.shape[:-2] + (blocks.shape[-2] * BLOCK_SIZE,))
    return out.astype(dtype, copy=False)


def encode(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """values [..., K] (K a multiple of 32) -> (blocks uint8 [..., K/32, 16], scales uint8 [..., K/32]).

    OCP MX v1.0: shared exponent X = floor(log2(amax)) - 2 per block, clamped to E8M0's range [-127, 127];
    each element v / 2^X rounds to the nearest E2M1 value (ties to even mantissa) and saturates at +-6.
    An all-zero block gets scale byte 0 (2^-127). NaN inputs are not representable in E2M1 and raise.

    float32 (and narrower float) inputs are scaled in float32, where v / 2^X is exact; other inputs in float64,
    rounded once to float32 for ml_dtypes' E2M1 cast, with the one double-rounding case (a float64 value that
    lands exactly on an E2M1 midpoint in float32) nudged back to its side of the midpoint.
    """
    v = np.asarray(values)
    work = np.float32 if v.dtype.kind == "f" and v.dtype.itemsize <= 4 else np.float64
    v = v.astype(work, copy=False)
    if v.shape[-1] % BLOCK_SIZE:
        raise ValueError(f"encode: last dimension {v.shape[-1]} is not a multiple of {BLOCK_SIZE}")
    if not np.isfinite(v).all():
        raise ValueError("encode: values must be finite (E2M1 has no NaN or infinity)")
    v = v.reshape(v.shape[:-1] + (v.shape[-1] // BLOCK_SIZE, BLOCK_SIZE))
    amax = np.abs(v).max(axis=-1)
    _, e = np.frexp(amax)  # amax = m * 2^e with m in [0.5, 1), so floor(log2(amax)) = e - 1
    X = np.where(amax > 0, e - 1 - E2M1_EMAX, -E8M0_BIAS)
    X = np.clip(X, -E8M0_BIAS, E8M0_BIAS).astype(np.int32)
    # 2^-X is a power of two within float32's normal range, so the product is exact (|v / 2^X| < 8).
    scaled = v * np.ldexp(work(1.0), -X)[..., None]
    np.clip(scaled, work(-E2M1_MAX), work(E2M1_MAX), out=scaled)  # saturate
    s32 = scaled.astype(np.float32, copy=False)
    if work is np.float64:
        off_tie = (s32 != scaled) & np.isin(np.abs(s32), _E2M1_MIDPOINTS)
        toward = np.where(scaled[off_tie] > s32[off_tie], np.float32(np.inf), np.float32(-np.inf))
        s32[off_tie] = np.nextafter(s32[off_tie], toward)
    # ml_dtypes rounds to nearest, ties to even, as the spec asks; its code is the low nibble of the byte.
    codes = s32.astype(FLOAT4).view(np.uint8) & 0x0F
    return pack_codes(codes), (X + E8M0_BIAS).astype(np.uint8)


def as_float4(blocks: np.ndarray) -> np.ndarray:
    """uint8 [..., NB, 16] -> ml_dtypes.float4_e2m1fn [..., NB*32] (one element per byte, unpacked)."""
    codes = unpack_codes(blocks)
    return codes.reshape(blocks.shape[:-2] + (-1,)).view(FLOAT4)


def as_e8m0(scales: np.ndarray) -> np.ndarray:
    """uint8 [..., NB] -> ml_dtypes.float8_e8m0fnu [..., NB] (same bytes, typed view)."""
    return np.asarray(scales, dtype=np.uint8).view(FLOAT8_E8M0)


def exact_int8(blocks: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact int8 form of MXFP4: value = q * 2^(s - 128) with q = 2 * E2M1 value in [-12, 12].

    Returns (q int8 [..., NB*32], scale float32 [..., NB]); q * scale reproduces decode() bit for bit.
    """
    check_shapes(blocks, scales)
    q = (2 * FP4_VALUES[unpack_codes(blocks)]).astype(np.int8)
    scale = scale_values(scales) * np.float32(0.5)
    return q.reshape(blocks.shape[:-2] + (-1,)), scale
