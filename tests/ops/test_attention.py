"""Attention: kernel == function body on ORT == function body on onnx.reference == naive loops."""

from __future__ import annotations

import numpy as np
import pytest

from mxport.ops import attention


def naive_attention(query, key, value, past_key, past_value, mask, sinks, hq, hkv, scale, window):
    """float64, one (batch, head, query row) at a time, every key slot checked by hand."""
    b_, s_, _ = query.shape
    d = query.shape[-1] // hq
    p_ = past_key.shape[2]
    keys = np.concatenate([past_key, key.reshape(b_, s_, hkv, d).transpose(0, 2, 1, 3)], axis=2).astype(np.float64)
    values = np.concatenate([past_value, value.reshape(b_, s_, hkv, d).transpose(0, 2, 1, 3)], axis=2).astype(np.float64)
    q = query.reshape(b_, s_, hq, d).astype(np.float64)
    scale = scale or 1 / np.sqrt(d)
    out = np.zeros((b_, s_, hq, d))
    for b in range(b_):
        for h in range(hq):
            kv = h // (hq // hkv)
            for s in range(s_):
                i = p_ + s  # this query row's slot
                kept = [j for j in range(p_ + s_) if j <= i and (window == 0 or j > i - window) and mask[b, j] == 1]
                if not kept:  # fully masked row: all weight on a finite sink, else the plain mean (see the op doc)
                    out[b, s, h] = 0.0 if np.isfinite(sinks[h]) else values[b, kv].mean(axis=0)
                    continue
                logits = np.array([scale * (q[b, s, h] @ keys[b, kv, j]) for j in kept] + [sinks[h]])
                w = np.exp(logits - logits.max())
                w /= w.sum()
                out[b, s, h] = sum(w[n] * values[b, kv, j] for n, j in enumerate(kept))
    return out.reshape(b_, s_, hq * d), keys, values


def make_inputs(b, s, p, hq, hkv, d, pads, sinks="random", seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((b, p + s), np.int64)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0  # left padding
    sink_values = {"random": rng.standard_normal(hq), "-inf": np.full(hq, -np.inf), "big": np.full(hq, 30.0)}[sinks]
    return dict(
        query=rng.standard_normal((b, s, hq * d)).astype(np.float32),
        key=rng.standard_normal((b, s, hkv * d)).astype(np.float32),
        value=rng.standard_normal((b, s, hkv * d)).astype(np.float32),
        past_key=rng.standard_normal((b, hkv, p, d)).astype(np.float32),
        past_value=rng.standard_normal((b, hkv, p, d)).astype(np.float32),
        attention_mask=mask,
        sinks=sink_values.astype(np.float32),
    )


CASES = [  # (B, S, P, Hq, Hkv, D, window, left pads per batch row, scale)
    (1, 5, 0, 2, 2, 8, 0, [0], 0.0),  # prefill, Hq = Hkv
    (2, 3, 4, 4, 1, 8, 0, [0, 2], 0.0),  # past, Hq = 4 Hkv, one left-padded row
    (2, 6, 0, 8, 2, 4, 3, [3, 0], 0.0),  # window < S, padded prefill (rows 0..2 of batch 0 fully masked)
    (1, 2, 5, 4, 1, 8, 4, [1], 0.0),  # window reaching into the past
    (2, 1, 7, 4, 2, 8, 0, [0, 5], 0.25),  # decode S = 1, explicit scale
    (1, 4, 3, 4, 4, 16, 2, [0], 0.0),  # window 2 with past
]


@pytest.mark.parametrize("b, s, p, hq, hkv, d, window, pads, scale", CASES)
def test_three_ways_match_naive(run_op, b, s, p, hq, hkv, d, window, pads, scale):
    inputs = make_inputs(b, s, p, hq, hkv, d, pads, seed=b * 100 + s * 10 + p)
    want = naive_attention(*inputs.values(), hq, hkv, scale, window)
    got = run_op("Attention", inputs, 3, num_heads=hq, kv_num_heads=hkv, scale=scale, window=window)
    for way, outputs in got.items():
        for name, out, ref in zip(("output", "present_key", "present_value"), outputs, want):
            assert out.shape == ref.shape and out.dtype == np.float32, f"{way} {name}"
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=f"{way} {name}")


@pytest.mark.parametrize("p, window, pads", [(0, 0, [0, 2]), (3, 2, [4, 0])])
def test_minus_inf_sinks_is_plain_softmax(run_op, p, window, pads):
    """sinks = -inf: rows sum to one, the op equals attention without sinks (checked against a plain formula)."""
    b, s, hq, hkv, d = 2, 4, 4, 2, 8
    inputs = make_inputs(b, s, p, hq, hkv, d, pads, sinks="-inf", seed=5)
    q = inputs["query"].reshape(b, s, hq, d).astype(np.float64)
    keys = np.concatenate([inputs["past_key"], inputs["key"].reshape(b, s, hkv, d).transpose(0, 2, 1, 3)], 2)
    values = np.concatenate([inputs["past_value"], inputs["value"].reshape(b, s, hkv, d).transpose(0, 2, 1, 3)], 2)
    keys, values = (np.repeat(a.astype(np.float64), hq // hkv, axis=1) for a in (keys, values))  # [B,Hq,L,D]
    slot, key_slot = np.arange(p, p + s)[:, None], np.arange(p + s)[None]
    keep = (key_slot <= slot) & ((window == 0) | (key_slot > slot - window)) & (inputs["attention_mask"] == 1)[:, None, None]
    scores = np.where(keep, np.einsum("bshd,bhld->bhsl", q, keys) / np.sqrt(d), -np.inf)
    live = keep.any(-1)[:, 0]  # [B,S] rows with at least one key
    with np.errstate(invalid="ignore"):  # fully masked rows: -inf - -inf; they are left out below
        probs = np.exp(scores - scores.max(-1, keepdims=True, where=np.isfinite(scores), initial=-np.inf))
    probs /= probs.sum(-1, keepdims=True)
    plain = np.einsum("bhsl,bhld->bshd", probs, values).reshape(b, s, hq * d)
    for way, (out, _, _) in run_op("Attention", inputs, 3, num_heads=hq, kv_num_heads=hkv, window=window).items():
        np.testing.assert_allclose(out[live], plain[live], rtol=1e-5, atol=1e-5, err_msg=way)


@pytest.mark.parametrize("sinks", ["random", "-inf", "big"])
def test_fully_masked_rows_stay_finite(run_op, sinks):
    """Left-padding query rows see no key: no NaN, and with a finite sink their output is 0."""
    inputs = make_inputs(1, 4, 0, 2, 1, 8, pads=[2], sinks=sinks, seed=9)
    for way, (out, _, _) in run_op("Attention", inputs, 3, num_heads=2, kv_num_heads=1).items():
        assert np.isfinite(out).all(), way
        if sinks != "-inf":
            np.testing.assert_array_equal(out[0, :2], 0.0, err_msg=way)


def test_sinks_take_weight():
    """A big sink drains the row: the output shrinks towards 0 (rows sum < 1), unlike -inf sinks."""
    small = make_inputs(1, 3, 0, 2, 2, 8, pads=[0], sinks="big", seed=1)
    plain = dict(small, sinks=np.full(2, -np.inf, np.float32))
    run = lambda x: attention._attention(*x.values(), 2, 2, 0.0, 0)[0]  # noqa: E731
    assert np.abs(run(small)).max() < 1e-6 * np.abs(run(plain)).max()


@pytest.mark.parametrize("attrs, match", [
    (dict(num_heads=3, kv_num_heads=2), r"Attention: num_heads=3 must be a multiple of kv_num_heads=2"),
    (dict(num_heads=4, kv_num_heads=4), r"Attention: expected key/value \[B, S, kv_num_heads\*D\] = \(1, 2, 16\)"),
])
def test_kernel_rejects_bad_heads(attrs, match):
    inputs = make_inputs(1, 2, 0, 4, 2, 4, pads=[0])
    with pytest.raises(ValueError, match=match):
        attention._attention(*inputs.values(), scale=0.0, window=0, **attrs)


def test_kernel_rejects_short_mask():
    inputs = make_inputs(1, 2, 3, 4, 2, 4, pads=[0])
    inputs["attention_mask"] = inputs["attention_mask"][:, 1:]
    with pytest.raises(ValueError, match=r"Attention: expected attention_mask \[B, P\+S\] = \(1, 5\)"):
        attention._attention(*inputs.values(), 4, 2, 0.0, 0)
