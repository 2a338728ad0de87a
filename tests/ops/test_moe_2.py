"""MoE_2 / MoEMXFP4_2 (bias-free MoE): kernel == function body on onnx.reference == function body on ORT == a
per-token float64 loop; bf16-stored weights; the version-1 ops keep their biases."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from mxport import ops
from mxport.ops import moe_2, mxfp4

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("_ops_test_moe", pathlib.Path(__file__).with_name("test_moe.py"))
_v1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_v1)
GPT_OSS, H, I, PLAIN, check_all, per_token_moe = _v1.GPT_OSS, _v1.H, _v1.I, _v1.PLAIN, _v1.check_all, _v1.per_token_moe

QWEN3_MOE = dict(swiglu_interleaved=0, swiglu_limit=0.0, activation_alpha=1.0, activation_beta=0.0)


def make_case(t, e, seed, route=None):
    """x[T, H], router logits[T, E], float experts w1[E, 2I, H], w2[E, H, I] (no biases)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, H)).astype(np.float32)
    logits = rng.standard_normal((t, e)).astype(np.float32)
    if route == "same":  # every token's first choice is expert 1
        logits[:, 1] += 10
    if route == "ties":
        logits = np.round(logits).astype(np.float32)
    w1 = (rng.standard_normal((e, 2 * I, H)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((e, H, I)) * 0.3).astype(np.float32)
    return x, logits, w1, w2


def zeros(e):
    return np.zeros((e, 2 * I), np.float32), np.zeros((e, H), np.float32)


CASES = [  # (T, E, k, route, normalize, activation)
    (5, 7, 3, None, 1, QWEN3_MOE),  # Qwen3-MoE, norm_topk_prob true, k=3 of 7
    (5, 7, 3, None, 0, QWEN3_MOE),  # norm_topk_prob false: softmax over all 7, chosen unnormalised
    (1, 8, 2, None, 1, QWEN3_MOE),  # decode, T = 1
    (6, 4, 4, "same", 0, QWEN3_MOE),  # k = E, shared first choice
    (8, 4, 2, "ties", 1, QWEN3_MOE),  # tied router logits
    (4, 6, 2, None, 1, GPT_OSS),  # the other attributes still apply
    (4, 6, 1, None, 0, dict(PLAIN, swiglu_interleaved=1, swiglu_limit=0.5)),
]


@pytest.mark.parametrize("t, e, k, route, normalize, act", CASES)
def test_moe_2_three_ways(run_op, t, e, k, route, normalize, act):
    x, logits, w1, w2 = make_case(t, e, seed=t * 100 + e * 10 + k, route=route)
    want = per_token_moe(x, logits, w1, *zeros(e)[:1], w2, zeros(e)[1], k, normalize, **act)
    inputs = dict(x=x, router_logits=logits, w1=w1, w2=w2)
    check_all(run_op("MoE_2", inputs, k=k, normalize_routing_weights=normalize, **act), want)


def bf16_initializer_model(x, logits, w1, w2, **attrs) -> onnx.ModelProto:
    """MoE_2 with bf16 weights as initializers (ORT takes no bf16 numpy feeds)."""
    def bf16(name, w):
        return onnx.helper.make_tensor(name, onnx.TensorProto.BFLOAT16, w.shape, w.view(np.uint16).tobytes(), raw=True)

    node = ops.make_node("MoE_2", ["x", "router_logits", "w1", "w2"], ["out0"], **attrs)
    vi = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node], "moe_2_bf16", [vi("x", onnx.TensorProto.FLOAT, x.shape), vi("router_logits", onnx.TensorProto.FLOAT, logits.shape)],
        [vi("out0", onnx.TensorProto.FLOAT, None)], initializer=[bf16("w1", w1), bf16("w2", w2)])
    return ops.make_model(graph)


@pytest.mark.parametrize("t, e, k, route, normalize, act", CASES[:3])
def test_moe_2_bf16_weights_three_ways(t, e, k, route, normalize, act):
    """bf16-stored experts: each chosen expert is cast to float32 (exact), so the result is the float32 one."""
    x, logits, w1, w2 = make_case(t, e, seed=t * 100 + e * 10 + k + 7, route=route)
    w1, w2 = w1.astype(ml_dtypes.bfloat16), w2.astype(ml_dtypes.bfloat16)
    want = per_token_moe(x, logits, w1.astype(np.float32), zeros(e)[0], w2.astype(np.float32), zeros(e)[1], k,
                         normalize, **act)
    model = bf16_initializer_model(x, logits, w1, w2, k=k, normalize_routing_weights=normalize, **act)
    feeds = dict(x=x, router_logits=logits)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = {"kernel": ReferenceEvaluator(model, new_ops=ops.reference_kernels()).run(None, feeds),
           "reference": ReferenceEvaluator(model).run(None, feeds), "ort": session.run(None, feeds)}
    check_all(got, want)


@pytest.mark.parametrize("t, e, k, route, normalize, act", CASES)
def test_moe_mxfp4_2_three_ways(run_op, t, e, k, route, normalize, act):
    x, logits, w1, w2 = make_case(t, e, seed=t * 100 + e * 10 + k + 1, route=route)
    (w1_blocks, w1_scales), (w2_blocks, w2_scales) = mxfp4.encode(w1), mxfp4.encode(w2)
    want = per_token_moe(x, logits, mxfp4.decode(w1_blocks, w1_scales), zeros(e)[0],
                         mxfp4.decode(w2_blocks, w2_scales), zeros(e)[1], k, normalize, **act)
    inputs = dict(x=x, router_logits=logits, w1_blocks=w1_blocks, w1_scales=w1_scales,
                  w2_blocks=w2_blocks, w2_scales=w2_scales)
    check_all(run_op("MoEMXFP4_2", inputs, k=k, normalize_routing_weights=normalize, **act), want)


def test_version_2_equals_version_1_with_zero_biases(run_op):
    """MoE_2 is MoE with the biases gone: same routing and activation, same numbers as MoE with zero biases."""
    x, logits, w1, w2 = make_case(6, 7, seed=5)
    b1, b2 = zeros(7)
    v1 = run_op("MoE", dict(x=x, router_logits=logits, w1=w1, b1=b1, w2=w2, b2=b2), k=3, **QWEN3_MOE)
    v2 = run_op("MoE_2", dict(x=x, router_logits=logits, w1=w1, w2=w2), k=3, **QWEN3_MOE)
    for way in v1:
        np.testing.assert_allclose(v2[way][0], v1[way][0], rtol=1e-6, atol=1e-6, err_msg=way)


def test_bodies_take_no_bias_inputs():
    bodies = {f.name: f for f in ops.functions()}
    assert list(bodies["MoE_2"].input) == ["x", "router_logits", "w1", "w2"]
    assert list(bodies["MoEMXFP4_2"].input) == ["x", "router_logits", "w1_blocks", "w1_scales", "w2_blocks", "w2_scales"]
    assert list(bodies["MoE"].input) == ["x", "router_logits", "w1", "b1", "w2", "b2"]  # version 1 unchanged


def test_kernel_rejects_shape_mismatch():
    x, logits, w1, w2 = make_case(2, 4, seed=0)
    with pytest.raises(ValueError, match=r"MoE_2: expected w1\[E, 2I, H\], w2\[E, H, I\] with E=4"):
        moe_2._moe_2(x, logits, w1[:3], w2, 2, 1, 0, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"MoE: attribute k=5 must be in \[1, E=4\]"):
        moe_2._moe_2(x, logits, w1, w2, 5, 1, 0, 0.0, 1.0, 0.0)
