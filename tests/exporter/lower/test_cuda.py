"""target=cuda: there is no GPU here, so the lowered graph is checked against ORT's own registered contract
(onnxruntime 1.32 operator schemas: attribute names, input counts, type constraints of every initializer) and the
QMoE fp4 layout documented in its schema (weights [E, N, K/2] uint8, float8e8m0 scales [E, N, K/32], float
global scales). Running it on a GPU is still to be done (docs/LOWERING.md says so)."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnxruntime.capi import onnxruntime_pybind11_state as C

from mxport.exporter.families.gpt_oss import graph as gpt_oss
from mxport.exporter import lower as lowering
from mxport.exporter.checkpoint import open_checkpoint

SCHEMAS = {(s.domain, s.name): s for s in C.get_all_operator_schema()}


def _type_str(elem_type: int) -> str:
    return f"tensor({helper.tensor_dtype_to_string(elem_type).removeprefix('TensorProto.').lower()})"


def check_against_ort(model: onnx.ModelProto) -> list[str]:
    """Every problem of a com.microsoft / contrib node w.r.t. ORT's registered schema, as readable strings."""
    inits = {t.name: t for t in model.graph.initializer}
    problems = []
    for node in model.graph.node:
        if node.domain != "com.microsoft" and node.op_type != "SimplifiedLayerNormalization":
            continue
        schema = SCHEMAS.get((node.domain, node.op_type))
        if schema is None:
            problems.append(f"{node.op_type}: not a registered {node.domain or 'onnx'} op")
            continue
        if unknown := {a.name for a in node.attribute} - set(schema.attributes):
            problems.append(f"{node.name}: unknown attributes {sorted(unknown)}")
        if len(node.input) > len(schema.inputs):
            problems.append(f"{node.name}: {len(node.input)} inputs, schema has {len(schema.inputs)}")
        constraints = {tc.type_param_str: set(tc.allowed_type_strs) for tc in schema.type_constraints}
        for name, formal in zip(node.input, schema.inputs):
            if name in inits:
                allowed = constraints.get(formal.typeStr, {formal.typeStr})
                got = _type_str(inits[name].data_type)
                if got not in allowed:
                    problems.append(f"{node.name}: input {formal.name} is {got}, allowed {sorted(allowed)}")
    return problems


@pytest.fixture(scope="module")
def cuda_model(tiny_config, make_checkpoint):
    with open_checkpoint(make_checkpoint(tiny_config)) as c:
        b, inputs, outputs = gpt_oss.build(c)
        model = lowering.lower(b.model(inputs, outputs), target="cuda", experts="mxfp4", dtype="float32")
        return tiny_config, ir.serde.serialize_model(model), lowering.report(model)


def test_cuda_graph_has_only_ort_contrib_and_standard_ops(cuda_model):
    cfg, proto, report = cuda_model
    assert report["refused"] == []
    domains = {n.domain for n in proto.graph.node}
    assert domains <= {"", "com.microsoft"}
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QMoE") == ops.count("GroupQueryAttention") == cfg.num_hidden_layers
    assert check_against_ort(proto) == []


def test_cuda_qmoe_fp4_layout(cuda_model):
    cfg, proto, _ = cuda_model
    inits = {t.name: t for t in proto.graph.initializer}
    E, H, I = cfg.num_experts, cfg.hidden_size, cfg.intermediate_size
    for node in (n for n in proto.graph.node if n.op_type == "QMoE"):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["quant_type"] == b"fp4" and attrs["swiglu_fusion"] == 1 and attrs["k"] == cfg.experts_per_token
        assert attrs["normalize_routing_weights"] == 1 and attrs["swiglu_limit"] == cfg.swiglu_limit
        fc1, s1, fc2, s2 = (inits[node.input[i]] for i in (2, 3, 5, 6))
        assert (list(fc1.dims), fc1.data_type) == ([E, 2 * I, H // 2], TensorProto.UINT8)
        assert (list(s1.dims), s1.data_type) == ([E, 2 * I, H // 32], TensorProto.FLOAT8E8M0)
        assert (list(fc2.dims), list(s2.dims)) == ([E, H, I // 2], [E, H, I // 32])
        g1, g2 = (inits[node.input[i]] for i in (15, 16))
        assert list(g1.dims) == list(g2.dims) == [E] and g1.data_type == TensorProto.FLOAT


def test_contract_checker_catches_a_bad_attribute(cuda_model):
    _, proto, _ = cuda_model
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    gqa = next(n for n in bad.graph.node if n.op_type == "GroupQueryAttention")
    gqa.attribute.append(helper.make_attribute("window", 3))
    assert any("unknown attributes ['window']" in p for p in check_against_ort(bad))


HALF = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_half_graph_follows_ort_contract(tiny_config, make_checkpoint, dtype):
    with open_checkpoint(make_checkpoint(tiny_config)) as c:
        b, inputs, outputs = gpt_oss.build(c)
        model = lowering.lower(b.model(inputs, outputs), target="cuda", experts="mxfp4", dtype=dtype)
        proto = ir.serde.serialize_model(model)
    assert check_against_ort(proto) == []
    io = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}
    assert io["logits"] == io["present.0.key"] == io["past_key_values.0.value"] == HALF[dtype]
    assert io["input_ids"] == io["position_ids"] == TensorProto.INT64
    inits = {t.name: t for t in proto.graph.initializer}
    qmoe = next(n for n in proto.graph.node if n.op_type == "QMoE")
    assert inits[qmoe.input[15]].data_type == TensorProto.FLOAT  # global scales stay float (schema: T4)
    assert inits[qmoe.input[4]].data_type == HALF[dtype]  # fc1 bias in the activation type
    # RoPE: positions are cast to float32 (exact integers), cos/sin are cast to half where they meet q and k
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]
    assert any(n.input[0] == "position_ids" and n.attribute[0].i == TensorProto.FLOAT for n in casts)
    assert sum(n.attribute[0].i == HALF[dtype] and "rope" in n.name for n in casts) == 2
