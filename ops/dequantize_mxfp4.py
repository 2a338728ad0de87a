"""DequantizeMXFP4 (ai.mxport, version 1): MXFP4 blocks + E8M0 scales -> float32.

Schema
    DequantizeMXFP4(blocks: uint8[..., NB, 16], scales: uint8[..., NB]) -> float32[..., NB*32]
    no attributes

    out[..., b*32 + 2j]     = FP4(blocks[..., b, j] & 0x0F) * 2^(scales[..., b] - 127)
    out[..., b*32 + 2j + 1] = FP4(blocks[..., b, j] >> 4)   * 2^(scales[..., b] - 127)
    scale byte 0xFF gives NaN for the whole block (OCP MX v1.0).

Every format fact (value table, nibble order, bias, NaN byte) comes from mxport.ops.mxfp4.

Function body dataflow:

    blocks u8 [..., NB, 16] ─ Cast int32 (ORT has no Gather on uint8 indices)
                            ─ Gather(byte table [256, 2]) ─ values [..., NB, 16, 2]   (element 2j, element 2j+1)
    scales u8 [..., NB] ─ Cast int32 ─ Gather(E8M0 table [256]) ─ Unsqueeze(-1, -2) ─ Mul
                                                   Reshape [..., NB*32] (prefix from Shape(scales))

Why tables: ORT's Gather costs about the same per index whatever it copies, and its uint8 bit ops are not fast
either, so one Gather per byte that yields both elements (a [256, 2] table made by the codec's decode) is about
2x faster than unpacking nibbles (BitwiseAnd/BitShift/Concat) and gathering a 16-entry table per element, and
~3x faster than computing E2M1 values with bit arithmetic (measured on ORT 1.32 CPU, 2M elements: 43 ms vs
82 ms vs 141 ms). The scale table (2^(s-127) for every byte, NaN at 0xFF, from mxfp4.scale_values) is exact
for every byte including the float32 subnormal 2^-127, and handles 0xFF without a Where; Pow(2, s-127) would
depend on the runtime's pow() accuracy.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper
from onnx.reference.op_run import OpRun
from onnxscript import FLOAT, UINT8, script
from onnxscript import opset23 as op

from mxport.ops import DOMAIN, OPSET, mxfp4

# Constant tensors of the function body, all derived from the codec module.
_BYTES = np.arange(256, dtype=np.uint8)
_PAIR_TABLE = numpy_helper.from_array(  # float32 [256, 2]: packed byte -> (element 2j, element 2j+1) at scale 1
    mxfp4.decode(
        np.broadcast_to(_BYTES[:, None, None], (256, 1, mxfp4.BYTES_PER_BLOCK)).copy(),
        np.full((256, 1), mxfp4.E8M0_BIAS, np.uint8),
    )[:, :2],
    "e2m1_pairs",
)
with np.errstate(over="ignore"):  # byte 0xFF overflows to inf before scale_values sets it to NaN
    _E8M0_TABLE = numpy_helper.from_array(mxfp4.scale_values(_BYTES), "e8m0_values")  # float32 [256], NaN at 0xFF
_SCALE_AXES = numpy_helper.from_array(np.array([-1, -2], np.int64))
_MINUS_ONE = numpy_helper.from_array(np.array([-1], np.int64))


@script(OPSET, default_opset=op)
def DequantizeMXFP4(blocks: UINT8, scales: UINT8) -> FLOAT:
    """DequantizeMXFP4(blocks uint8[..., NB, 16], scales uint8[..., NB]) -> float32[..., NB*32]."""
    values = op.Gather(op.Constant(value=_PAIR_TABLE), op.Cast(blocks, to=6))  # to=INT32; [..., NB, 16, 2]
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
