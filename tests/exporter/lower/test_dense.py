"""Dense MatMul -> MatMulNBits (int8 / int4, block 32): layout per ORT's contract, error bounded, router kept."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mxport.exporter.lower import dense, rules
from mxport.ops import quant

K, N = 128, 96


def _graph(w: np.ndarray, bf16: bool):
    nodes, inits = [], []
    if bf16:
        inits.append(numpy_helper.from_array(w.astype(ml_dtypes.bfloat16), "w"))
        nodes.append(helper.make_node("Cast", ["w"], ["w32"], to=TensorProto.FLOAT))
    else:
        inits.append(numpy_helper.from_array(w, "w32"))
    nodes.append(helper.make_node("MatMul", ["x", "w32"], ["y"], name="lm_head/matmul"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", N])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def _lower(proto, bits, accuracy_level=4):
    model = ir.serde.deserialize_model(proto)
    ctx = rules.Context(model=model, target="cpu", experts="float32", dtype="float32", accuracy_level=accuracy_level)
    report = rules.apply([dense.DenseNBits(bits)], ctx)
    rules.remove_dead(ctx)
    return ir.serde.serialize_model(model), report


@pytest.mark.parametrize("bits,max_rel", [(8, 0.02), (4, 0.15)])
@pytest.mark.parametrize("bf16", [False, True])
def test_matmul_nbits_error_is_bounded(bits, max_rel, bf16):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((K, N)).astype(np.float32)
    before = _graph(w, bf16)
    after, report = _lower(before, bits)
    assert report.applied["matmul_nbits"] == 1
    node = after.graph.node[0]
    assert (node.domain, node.op_type) == ("com.microsoft", "MatMulNBits")
    init = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}
    assert init[node.input[1]].shape == (N, K // 32, 32 * bits // 8) and init[node.input[2]].shape == (N, K // 32)
    x = rng.standard_normal((2, 3, K)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    y0, y1 = run(before), run(after)
    rel = np.abs(y1 - y0).max() / np.abs(y0).max()
    assert 0 < rel < max_rel, rel


def test_accuracy_level_0_is_exact_on_its_own_weights():
    """Level 0 keeps the activations float32: MatMulNBits equals x @ (its dequantized int8 weights)."""
    rng = np.random.default_rng(8)
    w = rng.standard_normal((K, N)).astype(np.float32)
    after, _ = _lower(_graph(w, False), 8, accuracy_level=0)
    node = after.graph.node[0]
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute}["accuracy_level"] == 0
    init = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}
    q = init[node.input[1]].reshape(N, K).astype(np.float32) - 128
    w_deq = (q.reshape(N, K // 32, 32) * init[node.input[2]][..., None]).reshape(N, K).T
    x = rng.standard_normal((2, 3, K)).astype(np.float32)
    y = ort.InferenceSession(after.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ w_deq, rtol=1e-5, atol=1e-5 * np.abs(y).max())


def test_router_stays_float():
    f = TensorProto.FLOAT
    w = numpy_helper.from_array(np.ones((K, 8), np.float32), "router.w")
    nodes = [helper.make_node("MatMul", ["x", "router.w"], ["logits"], name="router"),
             helper.make_node("MoE", ["x", "logits", "w1", "", "w2"], ["y"], domain="com.microsoft", k=2)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, f, None) for n in ("x", "w1", "w2")],
                              [helper.make_tensor_value_info("y", f, None)], initializer=[w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid("com.microsoft", 1)])
    _, report = _lower(proto, 4)
    assert report.applied["matmul_nbits"] == 0 and "router" in report.refused[0][2]


@pytest.mark.parametrize("bits", [4, 8])
def test_column_chunks_quantize_like_the_whole_matrix(bits, monkeypatch):
    """Streaming the columns through float32 a chunk at a time changes nothing (blocks run along K)."""
    w = np.random.default_rng(bits).standard_normal((K, N)).astype(ml_dtypes.bfloat16)
    whole = (quant.int4_quantize if bits == 4 else quant.int8_quantize)(np.asarray(w, np.float32).T.copy())
    monkeypatch.setattr(dense, "CHUNK_BYTES", 4 * K * 7)  # 7 columns per chunk: N = 48 leaves a partial one
    packed, scales = dense.quantize_columns(w, bits)
    np.testing.assert_array_equal(packed, whole[0].reshape(N, -1))
    np.testing.assert_array_equal(scales, whole[1])


@pytest.mark.parametrize("bits", [8, 4])
def test_tied_head_quantizes_the_embedding_rows_as_the_transposed_matrix(bits):
    """MatMul(x, Transpose(Cast(E))) (a tied output projection, E [N,K] also gathered) gives the same MatMulNBits
    as MatMul(x, E.T stored [K,N]); the table stays for the Gather."""
    rng = np.random.default_rng(bits + 10)
    e = rng.standard_normal((N, K)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["e", "ids"], ["rows"], axis=0),
             helper.make_node("Cast", ["e"], ["e32"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["e32"], ["et"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "et"], ["y"], name="lm_head/matmul")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K]),
                     helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", N]),
         helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["B", "S", K])],
        initializer=[numpy_helper.from_array(e, "e")])
    tied, report = _lower(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), bits)
    plain, _ = _lower(_graph(np.ascontiguousarray(e.T), bf16=False), bits)
    assert report.applied["matmul_nbits"] == 1
    assert sorted(n.op_type for n in tied.graph.node) == ["Gather", "MatMulNBits"]
    q_tied = {t.name: numpy_helper.to_array(t) for t in tied.graph.initializer}
    q_plain = {t.name: numpy_helper.to_array(t) for t in plain.graph.initializer}
    for suffix in (f".q{bits}", f".q{bits}_scales"):
        np.testing.assert_array_equal(q_tied["lm_head_matmul" + suffix], q_plain["lm_head_matmul" + suffix])
    assert "e" in q_tied  # still gathered


@pytest.mark.parametrize("rule", ["nbits", "q4"])
def test_quantized_rows_come_from_the_checkpoint_reader_a_chunk_at_a_time(rule, monkeypatch):
    """A weight the exporter's reader tagged with exporter/layers.SOURCE_ROWS (its checkpoint tensor, held
    transposed) is read through it, a chunk of rows at a time, and never whole (the initializer's own tensor is not
    evaluated); the result is that of the whole matrix. Without the tag the stored tensor is read once and released
    when the matrix is done."""
    from mxport.exporter.layers import SOURCE_ROWS
    from mxport.exporter.lower import q4
    from mxport.ops import linear_q4

    w = np.random.default_rng(5).standard_normal((K, N)).astype(np.float32)
    model = ir.serde.deserialize_model(_graph(w, bf16=False))
    value = model.graph.initializers["w32"]
    calls = []
    value.meta[SOURCE_ROWS] = (lambda a, b: calls.append((a, b)) or w.T[a:b], True)
    value.const_value = ir.LazyTensor(lambda: pytest.fail("the whole matrix was read"), dtype=ir.DataType.FLOAT,
                                      shape=ir.Shape([K, N]))
    monkeypatch.setattr(dense, "CHUNK_BYTES", 4 * K * 40)  # 40 rows per chunk: 96 = 40 + 40 + 16
    ctx = rules.Context(model=model, target="cpu", experts="float32", dtype="float32", accuracy_level=4)
    rules.apply([dense.DenseNBits(4) if rule == "nbits" else q4.DenseQ4()], ctx)
    rules.remove_dead(ctx)
    got = {t.name: numpy_helper.to_array(t) for t in ir.serde.serialize_model(model).graph.initializer}
    assert calls == [(0, 40), (40, 80), (80, 96)]
    if rule == "nbits":
        packed, scales = quant.int4_quantize(w.T.copy())
        assert np.array_equal(got["lm_head_matmul.q4"].reshape(N, -1), packed.reshape(N, -1))
    else:
        packed, scales = linear_q4.quantize(w.T)
        assert np.array_equal(got["lm_head_matmul.q4"], packed)
        assert np.array_equal(got["lm_head_matmul.q4_scales"], scales)
    stored = dense._StoredRows(ir.tensor(w), transposed=False)
    assert [n1 for _, n1, _ in dense.each_chunk(stored, N, 40)] == [40, 80, 96] and stored.w is None


def test_source_rows_of_a_tensor_used_as_stored_are_not_w_transposed():
    """A table held as stored (layers.stored: SOURCE_ROWS transposed False) read by a plain MatMul(x, E) is W
    itself, so its rows are not W.T's: the lowering quantizes W.T from the stored tensor, never from those rows."""
    from mxport.exporter.layers import SOURCE_ROWS

    w = np.random.default_rng(6).standard_normal((K, N)).astype(np.float32)
    model = ir.serde.deserialize_model(_graph(w, bf16=False))
    model.graph.initializers["w32"].meta[SOURCE_ROWS] = (lambda a, b: pytest.fail("read W's rows as W.T's"), False)
    ctx = rules.Context(model=model, target="cpu", experts="float32", dtype="float32", accuracy_level=4)
    rules.apply([dense.DenseNBits(4)], ctx)
    got = {t.name: numpy_helper.to_array(t) for t in ir.serde.serialize_model(model).graph.initializer}
    packed, _ = quant.int4_quantize(w.T.copy())
    assert np.array_equal(got["lm_head_matmul.q4"].reshape(N, -1), packed.reshape(N, -1))
