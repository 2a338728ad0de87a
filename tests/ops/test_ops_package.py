"""mxport.ops package API: op list, function bodies (valid ONNX, shape-inferable), kernels, node/model helpers."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

from mxport import ops

CONTRACT_OPS = ["DequantizeMXFP4", "MatMulMXFP4", "LinearBF16", "LinearQ4", "MoE", "MoEMXFP4", "MoE_2", "MoEMXFP4_2",
                "Attention", "GroupQueryAttention"]  # docs/ARCHITECTURE.md


def test_domain_and_op_list():
    assert (ops.DOMAIN, ops.VERSION) == ("ai.mxport", 1)
    assert ops.op_types() == CONTRACT_OPS
    assert [k.__name__ for k in ops.reference_kernels()] == CONTRACT_OPS
    assert all(k.op_domain == ops.DOMAIN for k in ops.reference_kernels())
    assert {(o.domain, o.version) for o in ops.opset_imports()} == {("", ops.STANDARD_OPSET), (ops.DOMAIN, 1)}


def test_functions_are_valid_and_closed():
    """Every body checks, and every ai.mxport op a body calls is itself in functions() (helpers included)."""
    protos = ops.functions()
    names = [p.name for p in protos]
    assert len(names) == len(set(names)) and set(CONTRACT_OPS) <= set(names)
    for proto in protos:
        assert proto.domain == ops.DOMAIN
        onnx.checker.check_function(proto)

        def calls(nodes):
            for node in nodes:
                yield node
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.GRAPH:
                        yield from calls(attr.g.node)

        for node in calls(proto.node):
            if node.domain == ops.DOMAIN:
                assert node.op_type in names, f"{proto.name} calls {node.op_type}, which functions() lacks"
            if node.op_type == "Loop":
                assert node.input[1], f"{proto.name}: Loop without an explicit cond (onnx.reference runs it 0 times)"


def test_model_with_every_op_checks_and_infers_shapes():
    """Full check + strict shape inference through the bodies, with symbolic B, S, P, T."""
    vi = helper.make_tensor_value_info
    E, H, I, Hq, Hkv, D = 4, 64, 32, 4, 2, 16
    inputs = [
        vi("blocks", TP.UINT8, [8, 2, 16]), vi("scales", TP.UINT8, [8, 2]), vi("a", TP.FLOAT, ["T", 64]),
        vi("x", TP.FLOAT, ["T", H]), vi("r", TP.FLOAT, ["T", E]),
        vi("w1", TP.FLOAT, [E, 2 * I, H]), vi("b1", TP.FLOAT, [E, 2 * I]), vi("w2", TP.FLOAT, [E, H, I]),
        vi("b2", TP.FLOAT, [E, H]), vi("w1b", TP.UINT8, [E, 2 * I, H // 32, 16]), vi("w1s", TP.UINT8, [E, 2 * I, H // 32]),
        vi("w2b", TP.UINT8, [E, H, I // 32, 16]), vi("w2s", TP.UINT8, [E, H, I // 32]),
        vi("q", TP.FLOAT, ["B", "S", Hq * D]), vi("k", TP.FLOAT, ["B", "S", Hkv * D]), vi("v", TP.FLOAT, ["B", "S", Hkv * D]),
        vi("pk", TP.FLOAT, ["B", Hkv, "P", D]), vi("pv", TP.FLOAT, ["B", Hkv, "P", D]),
        vi("mask", TP.INT64, ["B", "L"]), vi("sinks", TP.FLOAT, [Hq]),
    ]
    nodes = [
        ops.make_node("DequantizeMXFP4", ["blocks", "scales"], ["w"]),
        ops.make_node("MatMulMXFP4", ["a", "blocks", "scales"], ["mm"]),
        ops.make_node("MoE", ["x", "r", "w1", "b1", "w2", "b2"], ["y"], k=2),
        ops.make_node("MoEMXFP4", ["x", "r", "w1b", "w1s", "b1", "w2b", "w2s", "b2"], ["yq"], k=2),
        ops.make_node("MoE_2", ["x", "r", "w1", "w2"], ["y2"], k=2),
        ops.make_node("MoEMXFP4_2", ["x", "r", "w1b", "w1s", "w2b", "w2s"], ["yq2"], k=2),
        ops.make_node("Attention", ["q", "k", "v", "pk", "pv", "mask", "sinks"], ["o", "pk2", "pv2"],
                      num_heads=Hq, kv_num_heads=Hkv, window=8),
    ]
    outputs = [vi("w", TP.FLOAT, [8, 64]), vi("mm", TP.FLOAT, ["T", 8]), vi("y", TP.FLOAT, ["T", H]),
               vi("yq", TP.FLOAT, ["T", H]), vi("y2", TP.FLOAT, ["T", H]), vi("yq2", TP.FLOAT, ["T", H]), vi("o", TP.FLOAT, ["B", "S", Hq * D]),
               vi("pk2", TP.FLOAT, ["B", Hkv, None, D]), vi("pv2", TP.FLOAT, ["B", Hkv, None, D])]
    model = ops.make_model(helper.make_graph(nodes, "all_ops", inputs, outputs))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    assert len(inferred.graph.output) == len(outputs)


def test_make_node_fills_defaults():
    node = ops.make_node("MoE", list("xrabcd"), ["y"], k=2, swiglu_limit=7.0)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == dict(k=2, normalize_routing_weights=1, swiglu_interleaved=0, swiglu_limit=7.0,
                         activation_alpha=1.0, activation_beta=0.0)
    assert node.domain == ops.DOMAIN


def test_make_node_rejects_unknown_op_and_attribute():
    with pytest.raises(ValueError, match=r"ai.mxport has no op 'Softmax'"):
        ops.make_node("Softmax", ["x"], ["y"])
    with pytest.raises(ValueError, match=r"ai.mxport.Attention: unknown attributes \['heads'\]"):
        ops.make_node("Attention", ["q"], ["o"], heads=4)
    with pytest.raises(ValueError, match=r"ai.mxport.Attention: required attributes \['kv_num_heads'\] are missing"):
        ops.make_node("Attention", ["q"], ["o"], num_heads=4)


def test_version_2_bodies_travel_only_when_used():
    """Exports carry MoE_2 / MoEMXFP4_2 (and their helper) only when they use them; the v1 set always."""
    def names(used):
        return {p.name for p in ops.functions(used=used)}

    v2 = {"MoE_2", "MoEMXFP4_2", "SwiGLUExpertNoBias"}
    assert not v2 & names({"MoEMXFP4", "Attention"})
    assert {"MoE", "MoEMXFP4", "Attention", "MatMulMXFP4"} <= names({"MoEMXFP4", "Attention"})
    assert v2 <= names({"MoE_2", "Attention"})
    assert v2 <= names(None)
