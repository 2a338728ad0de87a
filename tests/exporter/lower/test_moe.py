"""MoE lowering: ai.mxport MoEMXFP4 / MoE before, com.microsoft MoE / QMoE after, on ORT CPU.

Before = the ai.mxport function body run by ORT (mxport.ops.functions()); after = the lowered node. fp32 must
match to float32 rounding; int8 and int4 report their error and are held to a measured bound.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mxport import ops
from mxport.exporter.lower import moe as moe_rule
from mxport.exporter.lower import rules
from mxport.ops import mxfp4, quant

T, H, I, E, K = 6, 64, 32, 4, 2


def _weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((E, 2 * I, H)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((E, H, I)).astype(np.float32) * 0.3
    w1b, w1s = mxfp4.encode(w1)
    w2b, w2s = mxfp4.encode(w2)
    b1 = rng.standard_normal((E, 2 * I)).astype(np.float32) * 0.1
    b2 = rng.standard_normal((E, H)).astype(np.float32) * 0.1
    x = rng.standard_normal((T, H)).astype(np.float32)
    logits = rng.standard_normal((T, E)).astype(np.float32) * 2
    return dict(w1_blocks=w1b, w1_scales=w1s, b1=b1, w2_blocks=w2b, w2_scales=w2s, b2=b2), x, logits


GPT_OSS = dict(k=K, normalize_routing_weights=1, swiglu_interleaved=1, swiglu_limit=7.0,
               activation_alpha=1.702, activation_beta=1.0)


def _portable(weights: dict, op_type: str = "MoEMXFP4", **attrs) -> onnx.ModelProto:
    names = ["w1_blocks", "w1_scales", "b1", "w2_blocks", "w2_scales", "b2"] if op_type == "MoEMXFP4" else [
        "w1", "b1", "w2", "b2"]
    node = ops.make_node(op_type, ["x", "router_logits", *names], ["y"], name="layers.0/moe/experts", **attrs)
    graph = helper.make_graph(
        [node], "moe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", H]),
         helper.make_tensor_value_info("router_logits", TensorProto.FLOAT, ["T", E])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", H])],
        initializer=[numpy_helper.from_array(weights[n], n) for n in names],
    )
    return ops.make_model(graph)


def _lower(proto: onnx.ModelProto, experts: str, target: str = "cpu",
           accuracy_level: int = 4) -> tuple[onnx.ModelProto, rules.Report]:
    model = ir.serde.deserialize_model(proto)
    ctx = rules.Context(model=model, target=target, experts=experts, dtype="float32", accuracy_level=accuracy_level)
    rules.apply([moe_rule.LowerMoE()], ctx)
    rules.remove_dead(ctx)
    return ir.serde.serialize_model(model), ctx.report


def _run(proto: onnx.ModelProto, x, logits) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x, "router_logits": logits})[0]


def _ops(proto: onnx.ModelProto) -> list[tuple[str, str]]:
    return [(n.domain, n.op_type) for n in proto.graph.node]


@pytest.mark.parametrize("normalize", [1, 0])
def test_fp32_is_exact(normalize):
    weights, x, logits = _weights()
    before = _portable(weights, **{**GPT_OSS, "normalize_routing_weights": normalize})
    after, report = _lower(before, "float32")
    assert _ops(after) == [("com.microsoft", "MoE")] and report.applied["moe"] == 1
    y0, y1 = _run(before, x, logits), _run(after, x, logits)
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5 * np.abs(y0).max())


def test_fp32_from_dense_moe():
    weights, x, logits = _weights(1)
    dense = dict(w1=mxfp4.decode(weights["w1_blocks"], weights["w1_scales"]), b1=weights["b1"],
                 w2=mxfp4.decode(weights["w2_blocks"], weights["w2_scales"]), b2=weights["b2"])
    before = _portable(dense, "MoE", **GPT_OSS)
    after, _ = _lower(before, "float32")
    np.testing.assert_allclose(_run(after, x, logits), _run(before, x, logits), rtol=1e-5, atol=1e-5)


def test_int8_weights_are_exact_and_error_is_activation_rounding():
    weights, x, logits = _weights(2)
    q, s = quant.int8_exact(weights["w1_blocks"], weights["w1_scales"])
    deq = (q.astype(np.float32) - 128).reshape(E, 2 * I, H // 32, 32) * s[..., None]
    np.testing.assert_array_equal(deq.reshape(E, 2 * I, H), mxfp4.decode(weights["w1_blocks"], weights["w1_scales"]))
    before = _portable(weights, **GPT_OSS)
    after, _ = _lower(before, "int8")
    assert _ops(after) == [("com.microsoft", "QMoE")]
    y0, y1 = _run(before, x, logits), _run(after, x, logits)
    rel = np.abs(y1 - y0).max() / np.abs(y0).max()
    # ORT's block-wise 8-bit QMoE quantizes activations to int8 (no fp32 kernel): ~1% here, never exact.
    assert 0 < rel < 0.03, rel


def test_int4_error_minimising_scale_beats_absmax():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 256)).astype(np.float32)
    packed, scales = quant.int4_quantize(w)
    err = np.square(quant.int4_dequantize(packed, scales) - w).sum()
    blocks = w.reshape(-1, 32)
    s = np.abs(blocks).max(1, keepdims=True) / 7
    absmax_err = np.square(np.clip(np.rint(blocks / s), -8, 7) * s - blocks).sum()
    assert packed.shape == (8, 128) and scales.shape == (8, 8)
    assert err < absmax_err


def test_int4_matches_its_dequantized_weights():
    weights, x, logits = _weights(4)
    before = _portable(weights, **GPT_OSS)
    after, _ = _lower(before, "int4")
    # fp32 MoE over the int4 weights dequantized = what QMoE int4 computes, up to its int8 activations
    init = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}
    node = after.graph.node[0]
    w1 = quant.int4_dequantize(init[node.input[2]], init[node.input[3]])
    w2 = quant.int4_dequantize(init[node.input[5]], init[node.input[6]])
    dense = dict(w1=w1, b1=weights["b1"], w2=w2, b2=weights["b2"])
    y_dense = _run(_portable(dense, "MoE", **GPT_OSS), x, logits)
    y_q4 = _run(after, x, logits)
    level = {a.name: helper.get_attribute_value(a) for a in node.attribute}["accuracy_level"]
    assert level == 4  # the default: int8 activations, ~0.5% here
    np.testing.assert_allclose(y_q4, y_dense, rtol=0, atol=3e-2 * np.abs(y_dense).max())
    # accuracy_level 0: float32 activations, so QMoE equals the float MoE over its own dequantized weights
    after0, _ = _lower(before, "int4", accuracy_level=0)
    assert {a.name: helper.get_attribute_value(a) for a in after0.graph.node[0].attribute}["accuracy_level"] == 0
    y_q4_f32 = _run(after0, x, logits)
    np.testing.assert_allclose(y_q4_f32, y_dense, rtol=0, atol=1e-5 * np.abs(y_dense).max())
    assert np.abs(y_q4 - y_dense).max() > 10 * np.abs(y_q4_f32 - y_dense).max()  # level 4 does round activations
    y0 = _run(before, x, logits)
    rel = np.abs(y_q4 - y0).max() / np.abs(y0).max()
    assert 0 < rel < 0.25, rel  # requantizing MXFP4 to int4 is lossy; LOWERING.md reports the model-level cost


def test_cpu_keeps_mxfp4_for_the_native_kernel():
    """cpu + experts=mxfp4: the node stays ai.mxport.MoEMXFP4 (mxport's native kernel; function body elsewhere)."""
    weights, x, logits = _weights(5)
    before = _portable(weights, **GPT_OSS)
    after, report = _lower(before, "mxfp4")
    assert _ops(after) == [("ai.mxport", "MoEMXFP4")]
    assert report.applied["moe"] == 1 and report.refused == []


def test_cuda_fp4_layout_follows_the_qmoe_contract():
    weights, _, _ = _weights(6)
    after, report = _lower(_portable(weights, **GPT_OSS), "mxfp4", target="cuda")
    node = after.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert (node.domain, node.op_type) == ("com.microsoft", "QMoE")
    assert attrs["quant_type"] == b"fp4" and attrs["block_size"] == 32 and attrs["swiglu_fusion"] == 1
    assert attrs["activation_alpha"] == pytest.approx(1.702) and attrs["swiglu_limit"] == 7.0
    init = {t.name: t for t in after.graph.initializer}
    fc1, s1 = init[node.input[2]], init[node.input[3]]
    assert list(fc1.dims) == [E, 2 * I, H // 2] and fc1.data_type == TensorProto.UINT8
    assert list(s1.dims) == [E, 2 * I, H // 32] and s1.data_type == TensorProto.FLOAT8E8M0
    fc2 = init[node.input[5]]
    assert list(fc2.dims) == [E, H, I // 2]
    assert [init[node.input[i]].data_type for i in (15, 16)] == [TensorProto.FLOAT] * 2  # global scales
    # bytes kept as they are: element 2j low nibble, 2j+1 high nibble (ONNX float4 packing = gpt-oss packing)
    np.testing.assert_array_equal(numpy_helper.to_array(fc1).reshape(weights["w1_blocks"].shape), weights["w1_blocks"])
    onnx.checker.check_model(after)


def test_int4_from_mxfp4_equals_the_generic_search():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((3, 16, 128)).astype(np.float32) * np.exp(rng.standard_normal((3, 16, 1)))
    blocks, scales = mxfp4.encode(w)
    fast_q, fast_s = quant.int4_from_mxfp4(blocks, scales)
    slow_q, slow_s = quant.int4_quantize(mxfp4.decode(blocks, scales))
    assert fast_q.shape == slow_q.shape == (3, 16, 64) and fast_s.shape == (3, 16, 4)
    decoded = mxfp4.decode(blocks, scales)
    err = lambda q, s: np.square(quant.int4_dequantize(q, s) - decoded).sum()  # noqa: E731
    assert err(fast_q, fast_s) <= err(slow_q, slow_s) * (1 + 1e-5)
    np.testing.assert_allclose(quant.int4_dequantize(fast_q, fast_s), quant.int4_dequantize(slow_q, slow_s),
                               rtol=1e-5, atol=1e-6 * np.abs(decoded).max())
