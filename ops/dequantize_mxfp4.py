"""DequantizeMXFP4 (ai.mxport, version 1): MXFP4 blocks + E8M0 scales -> float32.

Schema
    DequantizeMXFP4(blocks: uint8[..., NB, 16], scales: uint8[..., NB]) -> float32[..., NB*32]
    no attributes

    out[..., b*32 + 2j]     = FP4(blocks[..., b, j] & 0x0F) * 2^(scales[..., b] - 127)
    out[..., b*32 + 2j + 1] = FP4(blocks[..., b, j] >> 4)   * 2^(scales[..., b] - 127)
    scale byte 0xFF gives NaN for the whole block (OCP MX v1.0).

Every format fact (value table, nibble order, bias, NaN byte) comes from mxport.ops.mxfp4.

Function body dataflow:

    blocks u8 [..., NB, 16] ──┬─ BitwiseAnd 0x0F ─ Unsqueeze(-1) ─┐
                              └─ BitShift >> 4 ──── Unsqueeze(-1) ─┴─ Concat(-1) [..., NB, 16, 2]
                                                                      │ Cast int32 (ORT has no Gather on uint8 indices)
                                                      FP4 table[16] ─ Gather ─ values [..., NB, 16, 2]
    scales u8 [..., NB] ─ Cast int32 ─ Gather(E8M0 table[256]) ─ Unsqueeze(-1,-2) ──── Mul
                                                                      │
                                                   Reshape [..., NB*32] (prefix from Shape(scales))

Why a table for the scale: a Gather from 256 entries of 2^(s-127) (NaN at 0xFF), built by mxfp4.scale_values, is
exact for every byte including the float32 subnormals 2^-127..2^-126, and handles 0xFF without a Where;
Pow(2, s-127) would depend on the runtime's pow() accuracy.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper
from onnx.reference.op_run import OpRun
from onnxscript import FLOAT, UINT8, script
from onnxscript import opset23 as op

from mxport.ops import DOMAIN, OPSET, mxfp4

# Constant tensors of the function body, all derived from the codec module.
_FP4_TABLE = numpy_helper.from_array(mxfp4.FP4_VALUES, "fp4_values")  # float32 [16], code -> value
with np.errstate(over="ignore"):  # byte 0xFF overflows to inf before scale_values sets it to NaN
    _E8M0_TABLE = numpy_helper.from_array(mxfp4.scale_values(np.arange(256, dtype=np.uint8)), "e8m0_values")
# float32 [256]: byte -> 2^(s-127), NaN at 0xFF
_NIBBLE_BITS = 8 * mxfp4.BYTES_PER_BLOCK // mxfp4.BLOCK_SIZE  # two elements per byte -> 4 bits each
_LOW_MASK = numpy_helper.from_array(np.array((1 << _NIBBLE_BITS) - 1, np.uint8))  # low nibble: element 2j
_HIGH_SHIFT = numpy_helper.from_array(np.array(_NIBBLE_BITS, np.uint8))  # high nibble: element 2j+1
_ONE_BLOCK_AXIS = numpy_helper.from_array(np.array([-1], np.int64))
_SCALE_AXES = numpy_helper.from_array(np.array([-1, -2], np.int64))
_MINUS_ONE = numpy_helper.from_array(np.array([-1], np.int64))


@script(OPSET, default_opset=op)
def DequantizeMXFP4(blocks: UINT8, scales: UINT8) -> FLOAT:
    """DequantizeMXFP4(blocks uint8[..., NB, 16], scales uint8[..., NB]) -> float32[..., NB*32]."""
    low = op.BitwiseAnd(blocks, op.Constant(value=_LOW_MASK))  # element 2j
    high = op.BitShift(blocks, op.Constant(value=_HIGH_SHIFT), direction="RIGHT")  # element 2j+1
    axis = op.Constant(value=_ONE_BLOCK_AXIS)
    codes = op.Concat(op.Unsqueeze(low, axis), op.Unsqueeze(high, axis), axis=-1)  # [..., NB, 16, 2]
    values = op.Gather(op.Constant(value=_FP4_TABLE), op.Cast(codes, to=6))  # to=INT32; [..., NB, 16, 2]
    scale = op.Gather(op.Constant(value=_E8M0_TABLE), op.Cast(scales, to=6))  # [..., NB]
    scaled = op.Mul(values, op.Unsqueeze(scale, op.Constant(value=_SCALE_AXES)))  # [..., NB, 16, 2]
    out_shape = op.Concat(op.Shape(scales, end=-1), op.Constant(value=_MINUS_ONE), axis=0)  # [..., NB*32]
    return op.Reshape(scaled, out_shape)


def _dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """NumPy kernel: the codec's decode, float32."""
    try:
        mxfp4.check_shapes(blocks, scales, name="DequantizeMXFP4")
    except ValueError as e:
        raise ValueError(f"{e} (op {DOMAIN}.DequantizeMXFP4)") from e
    with np.errstate(over="ignore"):  # scale byte 0xFF: inf before decode sets the block to NaN
        return mxfp4.decode(blocks, scales, np.float32)


FUNCTIONS = (DequantizeMXFP4,)  # the op's function body; onnx.reference finds kernels by class name, so the
HELPERS = ()                    # kernel class below takes over the name DequantizeMXFP4 in this module.


class DequantizeMXFP4(OpRun):  # noqa: F811
    """onnx.reference kernel for ai.mxport.DequantizeMXFP4."""

    op_domain = DOMAIN

    def _run(self, blocks, scales):
        return (_dequantize_mxfp4(blocks, scales),)
