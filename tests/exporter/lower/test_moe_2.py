"""Lowering the bias-free MoE_2 / MoEMXFP4_2 (Qwen3-MoE: gate rows first, plain SwiGLU) and encoding float experts
to MXFP4 at export. Before = the ai.mxport function body on ORT; after = the lowered graph on ORT CPU."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mxport import ops
from mxport.exporter.experts import encode_experts, mxfp4_encoded
from mxport.exporter.lower import experts_mxfp4, rules
from mxport.exporter.lower import moe as moe_rule
from mxport.ops import mxfp4, quant

T, H, I, E, K = 6, 64, 32, 7, 3
# Qwen3-MoE: split halves, no clamp, alpha 1, beta 0. Large weights so |gate|, |up| pass 7 often: a kernel that
# clamped at gpt-oss's 7 or used its alpha 1.702 / beta 1 would be far off (docs/NUMERICS.md: older ORT kernels did).
QWEN3_MOE = dict(k=K, swiglu_interleaved=0, swiglu_limit=0.0, activation_alpha=1.0, activation_beta=0.0)


def _case(seed: int = 0, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((E, 2 * I, H)) * scale).astype(np.float32)
    w2 = (rng.standard_normal((E, H, I)) * 0.3).astype(np.float32)
    x = rng.standard_normal((T, H)).astype(np.float32)
    logits = rng.standard_normal((T, E)).astype(np.float32) * 2
    return w1, w2, x, logits


def _tensor(name, w):
    if w.dtype == ml_dtypes.bfloat16:
        return helper.make_tensor(name, TensorProto.BFLOAT16, w.shape, w.view(np.uint16).tobytes(), raw=True)
    return numpy_helper.from_array(w, name)


def _portable(weights: dict[str, np.ndarray], op_type: str, **attrs) -> onnx.ModelProto:
    node = ops.make_node(op_type, ["x", "router_logits", *weights], ["y"], name="layers.0/moe/experts", **attrs)
    graph = helper.make_graph(
        [node], "moe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", H]),
         helper.make_tensor_value_info("router_logits", TensorProto.FLOAT, ["T", E])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", H])],
        initializer=[_tensor(n, w) for n, w in weights.items()],
    )
    return ops.make_model(graph)


def _lower(proto, experts: str, target: str = "cpu", rule_list=None):
    model = ir.serde.deserialize_model(proto)
    ctx = rules.Context(model=model, target=target, experts=experts, dtype="float32")
    rules.apply(rule_list or [moe_rule.LowerMoE()], ctx)
    rules.remove_dead(ctx)
    return ir.serde.serialize_model(model), ctx.report


def _run(proto, x, logits) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x, "router_logits": logits})[0]


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def reference(x, logits, w1, w2, normalize):
    """Qwen3-MoE in float64, one token at a time (transformers' Qwen3MoeSparseMoeBlock)."""
    x, logits, w1, w2 = (np.asarray(a, np.float64) for a in (x, logits, w1, w2))
    y = np.zeros_like(x)
    for t in range(len(x)):
        p = np.exp(logits[t] - logits[t].max())
        p /= p.sum()
        chosen = np.argsort(-logits[t], kind="stable")[:K]
        weights = p[chosen] / p[chosen].sum() if normalize else p[chosen]
        for e, wt in zip(chosen, weights):
            gate, up = np.split(w1[e] @ x[t], 2)
            y[t] += wt * (w2[e] @ (gate / (1 + np.exp(-gate)) * up))
    return y


@pytest.mark.parametrize("normalize", [1, 0])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_fp32_com_microsoft_moe_is_exact_plain_swiglu(normalize, dtype):
    """com.microsoft.MoE on ORT 1.32 with fc1 rows interleaved at export, alpha 1, beta 0, no limit, no biases ==
    the portable MoE_2 == the float64 Qwen3-MoE block."""
    w1, w2, x, logits = _case(normalize)
    w1, w2 = w1.astype(dtype), w2.astype(dtype)
    before = _portable(dict(w1=w1, w2=w2), "MoE_2", normalize_routing_weights=normalize, **QWEN3_MOE)
    after, report = _lower(before, "float32")
    (node,) = after.graph.node
    assert (node.domain, node.op_type) == ("com.microsoft", "MoE") and report.applied["moe"] == 1
    attrs = _attrs(node)
    assert attrs["swiglu_fusion"] == 1 and attrs["activation_alpha"] == 1.0 and attrs["activation_beta"] == 0.0
    assert "swiglu_limit" not in attrs and attrs["normalize_routing_weights"] == normalize
    assert node.input[3] == "" and (len(node.input) < 6 or node.input[5] == "")  # no fc1 / fc2 bias
    want = reference(x, logits, w1.astype(np.float32), w2.astype(np.float32), normalize)
    gate = np.einsum("eoh,th->teo", w1.astype(np.float32), x)[..., :I]
    assert (np.abs(gate) > 7).mean() > 0.2  # a hard-coded clamp at 7 would show
    for y in (_run(before, x, logits), _run(after, x, logits)):
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_interleave_rows_is_the_ort_order():
    order = moe_rule.interleave_rows(6)
    assert order.tolist() == [0, 3, 1, 4, 2, 5]  # gate_0, up_0, gate_1, up_1, ...


@pytest.mark.parametrize("mode, bound", [("int8", 0.03), ("int4", 0.25)])
def test_qmoe_from_float_experts(mode, bound):
    w1, w2, x, logits = _case(3, scale=0.3)
    before = _portable(dict(w1=w1, w2=w2), "MoE_2", normalize_routing_weights=1, **QWEN3_MOE)
    after, _ = _lower(before, mode)
    (node,) = after.graph.node
    assert (node.domain, node.op_type) == ("com.microsoft", "QMoE")
    assert _attrs(node)["expert_weight_bits"] == (8 if mode == "int8" else 4)
    y0, y1 = _run(before, x, logits), _run(after, x, logits)
    rel = np.abs(y1 - y0).max() / np.abs(y0).max()
    assert 0 < rel < bound, rel


def test_int8_quantize_round_trip():
    w = np.random.default_rng(1).standard_normal((2, 5, 64)).astype(np.float32)
    q, s = quant.int8_quantize(w)
    assert q.dtype == np.uint8 and q.shape == w.shape and s.shape == (2, 5, 2)
    deq = ((q.astype(np.float32) - 128).reshape(2, 5, 2, 32) * s[..., None]).reshape(w.shape)
    assert np.abs(deq - w).max() <= s.max() / 2 + 1e-7


def test_encode_rule_mxfp4_2_matches_the_codec_and_runs():
    """--experts mxfp4 on float experts: MoE_2 -> MoEMXFP4_2 whose bytes are ops.mxfp4.encode of the weights."""
    w1, w2, x, logits = _case(4, scale=0.3)
    w1, w2 = w1.astype(ml_dtypes.bfloat16), w2.astype(ml_dtypes.bfloat16)
    before = _portable(dict(w1=w1, w2=w2), "MoE_2", normalize_routing_weights=0, **QWEN3_MOE)
    after, report = _lower(before, "mxfp4", target="portable", rule_list=[experts_mxfp4.EncodeExpertsMXFP4()])
    (node,) = after.graph.node
    assert (node.domain, node.op_type) == ("ai.mxport", "MoEMXFP4_2") and report.applied["experts_mxfp4"] == 1
    assert _attrs(node) == _attrs(before.graph.node[0])
    init = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}
    assert sorted(init) == ["w1_blocks", "w1_scales", "w2_blocks", "w2_scales"]
    for name, w in (("w1", w1), ("w2", w2)):
        blocks, scales = mxfp4.encode(w.astype(np.float32))
        np.testing.assert_array_equal(init[name + "_blocks"], blocks)
        np.testing.assert_array_equal(init[name + "_scales"], scales)
    dq1 = mxfp4.decode(init["w1_blocks"], init["w1_scales"])
    dq2 = mxfp4.decode(init["w2_blocks"], init["w2_scales"])
    want = reference(x, logits, dq1, dq2, 0)
    np.testing.assert_allclose(_run(after, x, logits), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # the cuda path then keeps those bytes as QMoE fp4 (gate rows interleaved for ORT)
    cuda, _ = _lower(before, "mxfp4", target="cuda",
                     rule_list=[experts_mxfp4.EncodeExpertsMXFP4(), moe_rule.LowerMoE()])
    (qnode,) = cuda.graph.node
    assert (qnode.domain, qnode.op_type) == ("com.microsoft", "QMoE") and _attrs(qnode)["quant_type"] == b"fp4"
    assert _attrs(qnode)["swiglu_fusion"] == 1 and qnode.input[4] == "" and qnode.input[7] == ""
    cinit = {t.name: t for t in cuda.graph.initializer}
    fc1 = numpy_helper.to_array(cinit[qnode.input[2]]).reshape(E, 2 * I, H // 32, 16)
    np.testing.assert_array_equal(fc1, init["w1_blocks"][:, moe_rule.interleave_rows(2 * I)])
    assert cinit[qnode.input[3]].data_type == TensorProto.FLOAT8E8M0
    onnx.checker.check_model(cuda)


def test_encode_rule_keeps_gpt_oss_biases():
    w1, w2, x, logits = _case(5, scale=0.3)
    b1, b2 = np.full((E, 2 * I), 0.1, np.float32), np.full((E, H), -0.2, np.float32)
    attrs = dict(k=2, swiglu_interleaved=1, swiglu_limit=7.0, activation_alpha=1.702, activation_beta=1.0)
    before = _portable(dict(w1=w1, b1=b1, w2=w2, b2=b2), "MoE", **attrs)
    after, _ = _lower(before, "mxfp4", target="portable", rule_list=[experts_mxfp4.EncodeExpertsMXFP4()])
    (node,) = after.graph.node
    assert node.op_type == "MoEMXFP4" and list(node.input) == [
        "x", "router_logits", "w1_blocks", "w1_scales", "b1", "w2_blocks", "w2_scales", "b2"]
    init = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}
    dq = dict(w1=mxfp4.decode(init["w1_blocks"], init["w1_scales"]), b1=b1,
              w2=mxfp4.decode(init["w2_blocks"], init["w2_scales"]), b2=b2)
    np.testing.assert_allclose(_run(after, x, logits), _run(_portable(dq, "MoE", **attrs), x, logits), rtol=1e-5,
                               atol=1e-5)


def test_encode_experts_streams_per_expert_and_chunk(monkeypatch):
    """Row chunks and experts encode independently: the same bytes as one encode of the whole tensor."""
    from mxport.exporter import experts

    w = np.random.default_rng(6).standard_normal((3, 10, 96)).astype(np.float32)
    monkeypatch.setattr(experts, "ENCODE_VALUES", 96 * 3)  # 3 rows per chunk: a short last chunk too
    reads = []
    blocks, scales = encode_experts(lambda e: reads.append(e) or w[e], w.shape)
    assert reads == [0, 1, 2]
    want = mxfp4.encode(w)
    np.testing.assert_array_equal(blocks, want[0])
    np.testing.assert_array_equal(scales, want[1])
    b, s = mxfp4_encoded(ir.tensor(w), "x")
    np.testing.assert_array_equal(s.const_value.numpy(), want[1])  # scales first: encodes, blocks reuse it
    np.testing.assert_array_equal(b.const_value.numpy(), want[0])
