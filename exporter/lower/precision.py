"""--dtype float16 | bfloat16: the lowered graph computes in half precision, with half I/O and KV cache.

A whole-graph pass, not a node rule, run after every rule (it needs a graph with no ai.mxport node left: the
custom ops' function bodies are float32 only):

    position_ids, attention_mask ─► region computed only from them and constants
        (RoPE cos/sin tables: Cast(positions) · inv_freq, Cos, Sin; the GQA mask bias) stays float32 ─► Cast(half)
        where it meets the rest of the graph (float16 cannot hold positions above 2048 exactly)
    everything else: float32 initializers -> half (lazily, at save time), Cast(to=float) -> Cast(to=half),
        float graph inputs/outputs (past/present KV cache, logits) -> half
    kept float32: what an op's contract demands (QMoE fc*_global_scale) and the region above

ORT's contract for the half path (onnxruntime 1.32 schemas): GroupQueryAttention, SimplifiedLayerNormalization,
SkipSimplifiedLayerNormalization, MoE, QMoE and MatMulNBits take float16 and bfloat16; QMoE scales stay float8e8m0
(fp4) or the activation type (int), global scales float.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mxport.contract import io
from mxport.errors import MxportError

from .rules import Context, const

HALF = {"float16": ir.DataType.FLOAT16, "bfloat16": ir.DataType.BFLOAT16}
# Model I/O inputs whose derived values stay float32 (mxport/contract/io.py); input_ids is not one of them:
# the embedding lookup is the data path.
FLOAT32_SOURCES = (io.POSITION_IDS, io.ATTENTION_MASK)


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and value.type is not None and value.dtype == ir.DataType.FLOAT


def _integer_region(graph: ir.Graph) -> set[ir.Node]:
    """Nodes computed only from position_ids / attention_mask, constants and each other (graph order is
    topological)."""
    sources = {v for v in graph.inputs if v.name in FLOAT32_SOURCES}
    region: set[ir.Node] = set()
    produced: set[ir.Value] = set(sources)
    for node in graph:
        inputs = [v for v in node.inputs if v is not None]
        if inputs and all(v in produced or const(v) is not None for v in inputs) and any(v in produced for v in inputs):
            region.add(node)
            produced.update(node.outputs)
    return region


def to_half(ctx: Context, dtype_name: str) -> None:
    half = HALF[dtype_name]
    graph = ctx.graph
    from mxport.ops import DOMAIN

    if left := sorted({n.op_type for n in graph if n.domain == DOMAIN}):
        raise MxportError(f"lower: --dtype {dtype_name} needs every ai.mxport op lowered; still portable: {left} "
                          "(see the refusals in the lowering report)")
    keep = set(ctx.shared.get("keep_float32", ()))
    # value types of the standard-op parts (onnx inference; large initializers are left out of the call)
    import onnx_ir.passes.common as common

    common.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=False)(ctx.model)
    region = _integer_region(graph)
    region_values = {v for n in region for v in n.outputs}

    # 1. the float32 region meets the half graph through a Cast
    for node in list(graph):
        if node not in region:
            continue
        for out in node.outputs:
            outside = [u for u in out.uses() if u.node not in region]
            if not _is_float(out) or not outside:
                continue
            cast = ir.node("Cast", [out], {"to": half}, name=f"{node.name}/to_{dtype_name}")
            cast.outputs[0].name = f"{out.name}_{dtype_name}"
            cast.outputs[0].type = ir.TensorType(half)
            graph.insert_after(node, cast)
            for use in outside:
                use.node.replace_input_with(use.idx, cast.outputs[0])

    # 2. initializers used outside the region
    for name, value in list(graph.initializers.items()):
        if value.dtype != ir.DataType.FLOAT or name in keep:
            continue
        if all(u.node in region for u in value.uses()):
            continue
        if any(u.node in region for u in value.uses()):
            raise MxportError(f"lower: initializer {name} is used in float32 and in {dtype_name} parts of the graph")
        value.const_value = _half_tensor(value.const_value, half)
        value.type = ir.TensorType(half)

    # 3. casts to float outside the region, 4. float graph I/O, 5. float value types
    for node in graph:
        if node in region:
            continue
        if node.op_type == "Cast" and node.domain == "" and node.attributes["to"].value == ir.DataType.FLOAT:
            node.attributes["to"] = ir.AttrInt64("to", half)
        for out in node.outputs:
            if _is_float(out) and out not in region_values:
                out.type = ir.TensorType(half)
    for value in [*graph.inputs, *graph.outputs]:
        if _is_float(value) and value not in region_values:
            value.type = ir.TensorType(half)


def _half_tensor(tensor: ir.TensorProtocol, half: ir.DataType) -> ir.TensorProtocol:
    name, shape = tensor.name, tensor.shape
    target = half.numpy()

    def produce() -> ir.TensorProtocol:
        array = np.asarray(tensor.numpy(), dtype=np.float32)
        if half == ir.DataType.FLOAT16:
            finite = np.finfo(np.float16)
            array = np.clip(array, finite.min, finite.max)  # e.g. a float32-min mask constant stays finite
        return ir.tensor(array.astype(target), dtype=half, name=name)

    return ir.LazyTensor(produce, dtype=half, shape=shape, name=name)
