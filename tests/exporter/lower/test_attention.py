"""Attention lowering: ai.mxport Attention -> com.microsoft GroupQueryAttention, exact on ORT CPU.

The expected numbers come from a NumPy transcription of the contract (ARCHITECTURE.md "Model I/O" and
"Custom ops": absolute slots, left padding, causal j <= P+s, window P+s-W < j, sinks as an extra softmax
column) and, once ops/ has it, from the ai.mxport Attention function body run by ORT.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from mxport import ops
from mxport.exporter.lower import attention as attention_rule
from mxport.exporter.lower import rules
from mxport.runtime.execution.step_model import mxport_options

B, HQ, HKV, D = 2, 4, 2, 16


def reference(q, k, v, past_k, past_v, mask, sinks, window):
    """The contract in float64: outputs [B,S,HQ*D], present_k/v [B,HKV,P+S,D]."""
    Bn, S, _ = q.shape
    P = past_k.shape[2]
    q = q.reshape(Bn, S, HQ, D).transpose(0, 2, 1, 3).astype(np.float64)
    keys = np.concatenate([past_k, k.reshape(Bn, S, HKV, D).transpose(0, 2, 1, 3)], axis=2)
    values = np.concatenate([past_v, v.reshape(Bn, S, HKV, D).transpose(0, 2, 1, 3)], axis=2)
    slots = np.arange(P + S)
    out = np.zeros((Bn, HQ, S, D))
    for b in range(Bn):
        for h in range(HQ):
            kv = h // (HQ // HKV)
            for s in range(S):
                ok = (slots <= P + s) & (mask[b] == 1)
                if window:
                    ok &= slots > P + s - window
                scores = np.where(ok, keys[b, kv] @ q[b, h, s] / np.sqrt(D), -np.inf)
                m = max(scores.max(), sinks[h])
                e = np.exp(scores - m)
                out[b, h, s] = e @ values[b, kv] / (e.sum() + np.exp(sinks[h] - m))
    return out.transpose(0, 2, 1, 3).reshape(Bn, S, HQ * D), keys, values


def _portable(window: int) -> onnx.ModelProto:
    attrs = dict(num_heads=HQ, kv_num_heads=HKV, scale=float(D**-0.5), window=window)
    names = ["query", "key", "value", "past_key", "past_value", "attention_mask", "sinks"]
    outs = ["output", "present_key", "present_value"]
    node = helper.make_node("Attention", names, outs, domain=ops.DOMAIN, name="layers.0/attn/attention", **attrs)
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "attention",
        [helper.make_tensor_value_info("query", f, ["B", "S", HQ * D]),
         helper.make_tensor_value_info("key", f, ["B", "S", HKV * D]),
         helper.make_tensor_value_info("value", f, ["B", "S", HKV * D]),
         helper.make_tensor_value_info("past_key", f, ["B", HKV, "P", D]),
         helper.make_tensor_value_info("past_value", f, ["B", HKV, "P", D]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "T"]),
         helper.make_tensor_value_info("sinks", f, [HQ])],
        [helper.make_tensor_value_info(o, f, None) for o in outs],
    )
    return ops.make_model(graph)


def _lower(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, rules.Report]:
    model = ir.serde.deserialize_model(proto)
    ctx = rules.Context(model=model, target="cpu", experts="float32", dtype="float32")
    rules.apply([attention_rule.LowerAttention()], ctx)
    return ir.serde.serialize_model(model), ctx.report


def _feeds(P, S, pad, seed):
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    mask = np.ones((B, P + S), np.int64)
    mask[1, :pad] = 0  # row 1 is left-padded by `pad` slots
    return dict(query=r(B, S, HQ * D), key=r(B, S, HKV * D), value=r(B, S, HKV * D), past_key=r(B, HKV, P, D),
                past_value=r(B, HKV, P, D), attention_mask=mask, sinks=r(HQ))


def _valid_rows(P, S, pad):
    valid = np.ones((B, S), bool)
    valid[1, : max(0, pad - P)] = False  # query rows sitting on pad slots: output unspecified by the contract
    return valid


CASES = [  # (past P, new S, left pad of row 1): prefill, chunk after a past, decode; padded and not
    (0, 7, 0), (0, 7, 3), (6, 3, 0), (6, 3, 2), (9, 1, 0), (9, 1, 4),
]


@pytest.mark.parametrize("window", [0, 3])
@pytest.mark.parametrize("P,S,pad", CASES)
def test_gqa_is_exact_against_the_contract(P, S, pad, window):
    """On cpu in float32 the node is ai.mxport.GroupQueryAttention: its function body (ORT's com.microsoft op, a
    session without mxport's library) and its native kernel (mxport's options) both meet the contract."""
    after, report = _lower(_portable(window))
    assert [(n.domain, n.op_type) for n in after.graph.node][-1] == ("ai.mxport", "GroupQueryAttention")
    assert report.applied["attention"] == 1
    feeds = _feeds(P, S, pad, seed=P * 10 + S + pad + window)
    want, keys, values = reference(*(feeds[n] for n in ("query", "key", "value", "past_key", "past_value",
                                                        "attention_mask", "sinks")), window)
    valid = _valid_rows(P, S, pad)
    for options in (None, mxport_options()):
        sess = ort.InferenceSession(after.SerializeToString(), options, providers=["CPUExecutionProvider"])
        out, present_k, present_v = sess.run(None, feeds)
        np.testing.assert_allclose(out[valid], want[valid], rtol=1e-5, atol=1e-5)
        assert np.isfinite(out).all()  # pad rows: unspecified, but never NaN
        np.testing.assert_array_equal(present_k, keys.astype(np.float32))
        np.testing.assert_array_equal(present_v, values.astype(np.float32))


@pytest.mark.skipif("Attention" not in ops.op_types(), reason="ai.mxport Attention not in ops/ yet")
@pytest.mark.parametrize("window", [0, 3])
def test_gqa_matches_the_portable_body(window):
    before = _portable(window)
    after, _ = _lower(before)
    feeds = _feeds(6, 3, 2, seed=7)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)  # noqa: E731
    valid = _valid_rows(6, 3, 2)
    (o0, k0, v0), (o1, k1, v1) = run(before), run(after)
    np.testing.assert_allclose(o1[valid], o0[valid], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(k1, k0)


def test_attributes_follow_the_gqa_contract():
    after, _ = _lower(_portable(window=128))
    gqa = after.graph.node[-1]
    attrs = {a.name: helper.get_attribute_value(a) for a in gqa.attribute}
    assert attrs["local_window_size"] == 128 and attrs["do_rotary"] == 0
    assert attrs["num_heads"] == HQ and attrs["kv_num_heads"] == HKV
    assert list(gqa.input)[11] == "sinks"  # head_sink
    full, _ = _lower(_portable(window=0))
    assert {a.name: helper.get_attribute_value(a) for a in full.graph.node[-1].attribute}["local_window_size"] == -1


def test_refuses_without_mask():
    proto = _portable(0)
    proto.graph.node[0].input[5] = ""
    _, report = _lower(proto)
    assert report.applied["attention"] == 0
    assert "attention_mask" in report.refused[0][2]


def _portable_without_sinks(window: int) -> onnx.ModelProto:
    """The portable op as exporter/layers.attention(sinks=None) writes it: a -inf sink per head, an initializer."""
    proto = _portable(window)
    graph = proto.graph
    del graph.input[-1]  # "sinks" becomes a constant
    graph.initializer.append(onnx.numpy_helper.from_array(np.full(HQ, -np.inf, np.float32), "sinks"))
    return proto


@pytest.mark.parametrize("window", [0, 3])
@pytest.mark.parametrize("P,S,pad", [(0, 7, 3), (6, 3, 2), (9, 1, 4)])
def test_minus_inf_sinks_lower_to_gqa_without_head_sink(P, S, pad, window):
    after, report = _lower(_portable_without_sinks(window))
    gqa = after.graph.node[-1]
    assert (gqa.domain, gqa.op_type) == ("ai.mxport", "GroupQueryAttention") and report.applied["attention"] == 1
    assert len(gqa.input) < 12 or gqa.input[11] == ""  # no head_sink
    feeds = _feeds(P, S, pad, seed=P + S + pad + window)
    sinks = feeds.pop("sinks")
    with np.errstate(invalid="ignore"):  # pad rows see nothing: NaN in the reference, excluded below
        want, keys, _ = reference(*(feeds[n] for n in ("query", "key", "value", "past_key", "past_value",
                                                       "attention_mask")), np.full_like(sinks, -np.inf), window)
    valid = _valid_rows(P, S, pad)
    for options in (None, mxport_options()):  # the function body, the native kernel
        out, present_k, _ = ort.InferenceSession(after.SerializeToString(), options,
                                                 providers=["CPUExecutionProvider"]).run(None, feeds)
        np.testing.assert_allclose(out[valid], want[valid], rtol=1e-5, atol=1e-5)
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(present_k, keys.astype(np.float32))


def test_finite_sink_constants_stay_head_sink():
    proto = _portable_without_sinks(0)
    proto.graph.initializer[-1].CopyFrom(onnx.numpy_helper.from_array(
        np.array([-np.inf, 0.5, -np.inf, -np.inf], np.float32), "sinks"))
    after, _ = _lower(proto)
    assert list(after.graph.node[-1].input)[11] == "sinks"


def test_head_size_not_a_multiple_of_8_stays_portable():
    proto = _portable(0)
    for vi in proto.graph.input:
        if vi.name in ("past_key", "past_value"):
            vi.type.tensor_type.shape.dim[3].dim_value = 20
    after, report = _lower(proto)
    assert report.applied["attention"] == 0 and "head_size=20" in report.refused[0][2]
    assert after.graph.node[-1].op_type == "Attention"
