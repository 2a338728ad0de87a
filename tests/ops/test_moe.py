"""MoE / MoEMXFP4: kernel == function body on ORT == function body on onnx.reference == a dense per-token loop."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from mxport import ops
from mxport.ops import moe, mxfp4

H, I = 32, 32  # hidden, expert intermediate: one MXFP4 block each
GPT_OSS = dict(swiglu_interleaved=1, swiglu_limit=7.0, activation_alpha=1.702, activation_beta=1.0)
PLAIN = dict(swiglu_interleaved=0, swiglu_limit=0.0, activation_alpha=1.0, activation_beta=0.0)


def per_token_moe(x, logits, w1, b1, w2, b2, k, normalize_routing_weights, swiglu_interleaved, swiglu_limit,
                  activation_alpha, activation_beta):
    """The op's meaning written out: float64, one token at a time, its k chosen experts in rank order."""
    x, logits, w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in (x, logits, w1, b1, w2, b2))
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        chosen = sorted(range(logits.shape[1]), key=lambda e: (-logits[t, e], e))[:k]
        z = logits[t, chosen] if normalize_routing_weights else logits[t]
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        weights = p if normalize_routing_weights else p[chosen]
        for e, weight in zip(chosen, weights):
            h = w1[e] @ x[t] + b1[e]
            if swiglu_interleaved:
                gate, up = h[0::2], h[1::2]
            else:
                gate, up = h[:I], h[I:]
            if swiglu_limit:
                gate, up = np.minimum(gate, swiglu_limit), np.clip(up, -swiglu_limit, swiglu_limit)
            act = gate / (1 + np.exp(-activation_alpha * gate)) * (up + activation_beta)
            y[t] += weight * (w2[e] @ act + b2[e])
    return y


def make_case(t, e, seed, route=None):
    """x[T, H], router logits[T, E] and float experts; `route` shapes the logits ("same", "unused")."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, H)).astype(np.float32)
    logits = rng.standard_normal((t, e)).astype(np.float32)
    if route == "same":  # every token's first choice is expert 1
        logits[:, 1] += 10
    if route == "unused":  # experts 0 and e-1 are never chosen
        logits[:, [0, e - 1]] -= 10
    if route == "ties":  # equal logits: TopK takes the lower expert index first
        logits = np.round(logits).astype(np.float32)
    w1 = (rng.standard_normal((e, 2 * I, H)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((e, H, I)) * 0.3).astype(np.float32)
    b1 = rng.standard_normal((e, 2 * I)).astype(np.float32)
    b2 = rng.standard_normal((e, H)).astype(np.float32)
    return x, logits, w1, b1, w2, b2


def check_all(got, want):
    atol = 1e-5 * np.abs(want).max()
    for way, (y,) in got.items():
        assert y.shape == want.shape and y.dtype == np.float32, way
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=atol, err_msg=way)


CASES = [  # (T, E, k, route, normalize, activation)
    (5, 4, 1, None, 1, GPT_OSS),  # k = 1
    (3, 4, 4, None, 0, PLAIN),  # k = E
    (1, 8, 2, None, 1, PLAIN),  # decode, T = 1
    (6, 4, 2, "same", 0, GPT_OSS),  # every token shares expert 1
    (7, 8, 2, "unused", 1, GPT_OSS),  # experts 0, 7 chosen by no token
    (4, 6, 3, None, 0, dict(GPT_OSS, swiglu_interleaved=0)),  # gpt-oss activation, split halves
    (4, 6, 2, None, 1, dict(PLAIN, swiglu_interleaved=1, swiglu_limit=0.5)),  # small limit clamps most values
    (8, 4, 2, "ties", 1, GPT_OSS),  # tied router logits
]


@pytest.mark.parametrize("t, e, k, route, normalize, act", CASES)
def test_moe_three_ways(run_op, t, e, k, route, normalize, act):
    x, logits, w1, b1, w2, b2 = make_case(t, e, seed=t * 100 + e * 10 + k, route=route)
    want = per_token_moe(x, logits, w1, b1, w2, b2, k, normalize, **act)
    inputs = dict(x=x, router_logits=logits, w1=w1, b1=b1, w2=w2, b2=b2)
    check_all(run_op("MoE", inputs, k=k, normalize_routing_weights=normalize, **act), want)


@pytest.mark.parametrize("t, e, k, route, normalize, act", CASES)
def test_moe_mxfp4_three_ways(run_op, t, e, k, route, normalize, act):
    x, logits, w1, b1, w2, b2 = make_case(t, e, seed=t * 100 + e * 10 + k + 1, route=route)
    (w1_blocks, w1_scales), (w2_blocks, w2_scales) = mxfp4.encode(w1), mxfp4.encode(w2)
    want = per_token_moe(x, logits, mxfp4.decode(w1_blocks, w1_scales), b1, mxfp4.decode(w2_blocks, w2_scales), b2,
                         k, normalize, **act)
    inputs = dict(x=x, router_logits=logits, w1_blocks=w1_blocks, w1_scales=w1_scales, b1=b1,
                  w2_blocks=w2_blocks, w2_scales=w2_scales, b2=b2)
    check_all(run_op("MoEMXFP4", inputs, k=k, normalize_routing_weights=normalize, **act), want)


def test_ties_case_has_ties_at_the_cut():
    """The "ties" case must tie across the top-k boundary for some token (else it would not test tie order)."""
    for seed in (842, 843):  # the seeds test_moe_three_ways / test_moe_mxfp4_three_ways use for this case
        _, logits, *_ = make_case(8, 4, seed=seed, route="ties")
        ordered = -np.sort(-logits, axis=1)
        assert (ordered[:, 1] == ordered[:, 2]).any(), seed


def test_clamp_is_exercised():
    """The limit-0.5 case must actually clamp (else it would not test swiglu_limit)."""
    x, logits, w1, b1, w2, b2 = make_case(4, 6, seed=0)
    h = np.einsum("eoh,th->teo", w1, x) + b1
    assert (np.abs(h) > 0.5).mean() > 0.5
    clamped = per_token_moe(x, logits, w1, b1, w2, b2, 2, 1, **dict(PLAIN, swiglu_limit=0.5))
    assert not np.allclose(clamped, per_token_moe(x, logits, w1, b1, w2, b2, 2, 1, **PLAIN))


class CountingEvaluator(ReferenceEvaluator):
    """onnx.reference with the function bodies alone, logging every DequantizeMXFP4 function call's blocks shape.

    onnx.reference evaluates nested functions (and Loop bodies) with self.__class__, so this sees them all.
    """

    calls: list[tuple[int, ...]] = []

    def run(self, output_names, feed_inputs, *args, **kwargs):
        if isinstance(self.proto_, onnx.FunctionProto) and self.proto_.name == "DequantizeMXFP4":
            CountingEvaluator.calls.append(feed_inputs["blocks"].shape)
        return super().run(output_names, feed_inputs, *args, **kwargs)


@pytest.mark.parametrize("t, e, k, route", [(1, 8, 1, None), (6, 8, 2, "unused"), (6, 8, 2, "same")])
def test_mxfp4_dequantizes_each_chosen_expert_once(op_model, t, e, k, route):
    """The body dequantizes exactly the unique chosen experts, one expert's weight per call."""
    x, logits, w1, b1, w2, b2 = make_case(t, e, seed=3, route=route)
    (w1_blocks, w1_scales), (w2_blocks, w2_scales) = mxfp4.encode(w1), mxfp4.encode(w2)
    inputs = dict(x=x, router_logits=logits, w1_blocks=w1_blocks, w1_scales=w1_scales, b1=b1,
                  w2_blocks=w2_blocks, w2_scales=w2_scales, b2=b2)
    CountingEvaluator.calls = []
    (y,) = CountingEvaluator(op_model("MoEMXFP4", inputs, 1, k=k, **GPT_OSS)).run(None, inputs)
    n_unique = len(np.unique(np.argsort(-logits, axis=-1, kind="stable")[:, :k]))
    assert n_unique < e
    one_expert = [w1_blocks.shape[1:]] * n_unique + [w2_blocks.shape[1:]] * n_unique
    assert sorted(CountingEvaluator.calls) == sorted(one_expert)
    if (t, k) == (1, 1):
        assert len(CountingEvaluator.calls) == 2  # decode with k=1: one expert's w1 and w2, not all 8 experts
    want = per_token_moe(x, logits, mxfp4.decode(w1_blocks, w1_scales), b1, mxfp4.decode(w2_blocks, w2_scales), b2,
                         k, 1, **GPT_OSS)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_mxfp4_body_dequantizes_only_inside_the_expert_loop():
    """Structure: no DequantizeMXFP4 at the top of the MoEMXFP4 body; inside the Loop it reads one expert (Gather)."""
    body = next(f for f in ops.functions() if f.name == "MoEMXFP4")
    assert not [n for n in body.node if n.op_type == "DequantizeMXFP4"]
    (loop,) = [n for n in body.node if n.op_type == "Loop"]
    inner = {o: n for n in loop.attribute[0].g.node for o in n.output}
    dequantize = [n for n in loop.attribute[0].g.node if n.op_type == "DequantizeMXFP4"]
    assert len(dequantize) == 2
    for node in dequantize:
        assert [inner[i].op_type for i in node.input] == ["Gather", "Gather"]
    trip_count = {o: n for n in body.node for o in n.output}[loop.input[0]]
    assert trip_count.op_type == "Size"
    assert {o: n for n in body.node for o in n.output}[trip_count.input[0]].op_type == "Unique"


@pytest.mark.parametrize("bad, match", [
    (dict(k=5), r"MoE: attribute k=5 must be in \[1, E=4\]"),
    (dict(k=0), r"MoE: attribute k=0 must be in \[1, E=4\]"),
    (dict(limit=-1.0), r"MoE: swiglu_limit=-1.0 must be >= 0"),
])
def test_kernel_rejects_bad_attributes(bad, match):
    x, logits, w1, b1, w2, b2 = make_case(2, 4, seed=0)
    args = dict(k=2, normalize=1, interleaved=1, limit=7.0, alpha=1.702, beta=1.0) | bad
    with pytest.raises(ValueError, match=match):
        moe._moe(x, logits, w1, b1, w2, b2, **args)


def test_kernel_rejects_expert_count_mismatch():
    x, logits, w1, b1, w2, b2 = make_case(2, 4, seed=0)
    with pytest.raises(ValueError, match=r"MoE: expected w1\[E, 2I, H\], w2\[E, H, I\] with E=4, found w1.shape=\(3, 64, 32\)"):
        moe._moe(x, logits, w1[:3], b1, w2, b2, 2, 1, 1, 7.0, 1.702, 1.0)
