"""The NumPy reference model against transformers (fp32, eager, MXFP4 dequantized) and against itself.

Oracle: tests/oracles.py `load_transformers_gpt_oss` on tiny synthetic checkpoints (tests/conftest.py
`make_checkpoint`). Measured errors are written up in docs/NUMERICS_REPORT.md; `pytest -s` prints them.
"""

from __future__ import annotations

import numpy as np
import pytest

from mxport.errors import MxportError
from mxport.exporter.families.gpt_oss.config import FULL, SLIDING, GptOssConfig
from mxport.exporter.synth import PRESETS
from mxport.ops import mxfp4
from mxport.runtime.oracle import layers as L
from mxport.runtime.oracle import model as reference_model
from mxport.runtime.oracle.model import ReferenceModel, run_checkpoint

# Small configs that each stress one thing transformers and the reference could disagree on.
# MXFP4 needs hidden and intermediate sizes that are multiples of 32.
_SMALL = dict(vocab_size=96, pad_token_id=0, eos_token_ids=(1,), max_position_embeddings=64)
CONFIGS = {
    # window 4 < 12-token prompt, k=3 of 5 experts, 6 query / 3 KV heads of 24, hidden 96, YaRN s=4
    "window4-k3of5-odd-heads-yarn4": GptOssConfig(
        hidden_size=96, intermediate_size=64, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=3,
        head_dim=24, num_experts=5, experts_per_token=3, sliding_window=4, rope_theta=10000.0,
        rope_scaling_factor=4.0, rope_original_max_position=16, **_SMALL,
    ),
    # gpt-oss rope (theta 150000, YaRN s=32, L=4096), MQA (8 query heads on 1 KV head), full layer first
    "gptoss-yarn32-mqa-full-first": GptOssConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=1,
        head_dim=16, num_experts=4, experts_per_token=2, sliding_window=3, layer_types=(FULL, SLIDING), **_SMALL,
    ),
    # plain RoPE (s=1), top-1 routing, window longer than the prompt, 5 query heads of 40 on 5 KV heads (MHA)
    "plain-rope-top1-mha": GptOssConfig(
        hidden_size=160, intermediate_size=32, num_hidden_layers=2, num_attention_heads=5, num_key_value_heads=5,
        head_dim=40, num_experts=3, experts_per_token=1, sliding_window=128, rope_scaling_factor=1.0, **_SMALL,
    ),
}
CONFIGS["tiny-preset"] = PRESETS["tiny"]  # what the other suites run on: window 8, 8 experts top-2, vocab 512
# synthetic pre-activations stay within |h| < 4, so the published limit 7 never clamps: limit 1 clamps ~30%
CONFIGS["swiglu-limit-1"] = PRESETS["tiny"].replace(swiglu_limit=1.0)
# dense (unquantized) experts, stored input-major [E,H,2I] / [E,I,H] as transformers saves them
CONFIGS["dense-experts"] = CONFIGS["window4-k3of5-odd-heads-yarn4"].replace(experts_mxfp4=False)
PROMPT = 12
MEASURED: dict[str, float] = {}  # config -> max relative logits error vs transformers (printed with -s)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max|a-b| / max|b|"""
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def prompt(cfg: GptOssConfig, shape: tuple[int, ...], seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, cfg.vocab_size, shape).astype(np.int64)


@pytest.fixture
def tiny(make_checkpoint):
    """The first config's checkpoint and a model on it (most tests need one; none needs transformers)."""
    cfg = CONFIGS["window4-k3of5-odd-heads-yarn4"]
    path = make_checkpoint(cfg)
    with ReferenceModel(path) as model:
        yield cfg, path, model


# ---- against transformers ------------------------------------------------------------------------------------
@pytest.mark.oracle
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_hidden_states_match_transformers(make_checkpoint, name):
    torch = pytest.importorskip("torch")
    import oracles

    cfg = CONFIGS[name]
    path = make_checkpoint(cfg, seed=3)
    ids = prompt(cfg, (2, PROMPT))
    oracle = oracles.load_transformers_gpt_oss(path)
    assert oracle.config._attn_implementation == "eager"
    with torch.no_grad():
        hf = oracle(torch.from_numpy(ids), output_hidden_states=True)
    want = hf.logits.float().numpy()
    with ReferenceModel(path) as model:
        out = model.forward(ids, return_hidden_states=True)

    assert out.logits.dtype == np.float32 and out.logits.shape == (2, PROMPT, cfg.vocab_size)
    err = rel_err(out.logits, want)
    MEASURED[name] = err
    print(f"\n{name}: max relative logits error vs transformers {err:.2e}")
    assert err <= 1e-4, f"{name}: logits differ from transformers by {err:.2e} relative"
    np.testing.assert_array_equal(out.logits.argmax(-1), want.argmax(-1))
    # transformers' hidden_states: [embeddings, after layer 0, ..., after layer L-2, final-normed]
    for i, h in enumerate(out.hidden_states[:-1]):
        assert rel_err(h, hf.hidden_states[i + 1].float().numpy()) <= 1e-5, f"{name}: residual after layer {i}"


@pytest.mark.oracle
def test_far_positions_match_transformers_with_fp32_rope_angles(make_checkpoint):
    """At position 30000 fp32 angles are off by ~2e-3 rad; float32 mode rounds them like transformers does
    (float64 angles would differ from transformers by 2.4e-4 relative here, NUMERICS_REPORT.md)."""
    torch = pytest.importorskip("torch")
    import oracles

    cfg = PRESETS["tiny"]
    path = make_checkpoint(cfg, seed=3)
    ids = prompt(cfg, (1, PROMPT))
    pos = np.arange(30000, 30000 + PROMPT)[None]
    with torch.no_grad():
        want = oracles.load_transformers_gpt_oss(path)(
            torch.from_numpy(ids), position_ids=torch.from_numpy(pos)
        ).logits.float().numpy()
    with ReferenceModel(path) as model:
        got = model.forward(ids, position_ids=pos).logits
    err = rel_err(got, want)
    print(f"\npositions 30000..30011: max relative logits error vs transformers {err:.2e}")
    assert err <= 1e-4
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.oracle
def test_left_padded_batch_matches_transformers(make_checkpoint):
    torch = pytest.importorskip("torch")
    import oracles

    cfg = CONFIGS["window4-k3of5-odd-heads-yarn4"]
    path = make_checkpoint(cfg, seed=4)
    ids = prompt(cfg, (2, PROMPT))
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    ids[1, :5] = 0
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        want = oracles.load_transformers_gpt_oss(path)(
            torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), position_ids=torch.from_numpy(pos)
        ).logits.float().numpy()
    with ReferenceModel(path) as model:
        got = model.forward(ids, mask).logits
    real = mask.astype(bool)
    err = rel_err(got[real], want[real])
    print(f"\nleft-padded batch: max relative logits error vs transformers on real positions {err:.2e}")
    assert err <= 1e-4
    np.testing.assert_array_equal(got[real].argmax(-1), want[real].argmax(-1))


# ---- layouts, dtypes, cache, padding -------------------------------------------------------------------------
def test_hf_and_original_layouts_give_identical_logits(make_checkpoint):
    cfg = CONFIGS["window4-k3of5-odd-heads-yarn4"]
    ids = prompt(cfg, (1, PROMPT))
    with ReferenceModel(make_checkpoint(cfg, layout="hf", seed=5)) as hf_model:
        hf = hf_model.forward(ids).logits
    with ReferenceModel(make_checkpoint(cfg, layout="original", seed=5)) as orig_model:
        assert orig_model.ckpt.layout == "original"
        orig = orig_model.forward(ids).logits
    np.testing.assert_array_equal(orig, hf)


def test_float64_agrees_with_float32(tiny):
    cfg, path, model = tiny
    ids = prompt(cfg, (2, PROMPT))
    with ReferenceModel(path, dtype=np.float64) as model64:
        out64 = model64.forward(ids)
    assert out64.logits.dtype == np.float64
    err = rel_err(model.forward(ids).logits, out64.logits)
    print(f"\nfloat32 vs float64 reference: max relative logits error {err:.2e}")
    assert err <= 1e-5


def test_uncached_weights_give_identical_logits(tiny, monkeypatch):
    cfg, path, model = tiny
    ids = prompt(cfg, (2, PROMPT))
    assert model.cache_weights  # auto: a tiny checkpoint is cached
    monkeypatch.setattr(reference_model, "CACHE_LIMIT_BYTES", 10_000)  # as if it were gpt-oss-20b
    with ReferenceModel(path) as lean:
        assert not lean.cache_weights
        np.testing.assert_array_equal(lean.forward(ids).logits, model.forward(ids).logits)
        assert not lean._cache  # nothing kept between calls


def test_cached_decoding_equals_recomputing_the_sequence(tiny):
    cfg, _, model = tiny
    ids = prompt(cfg, (2, PROMPT))
    full = model.forward(ids)
    step = model.forward(ids[:, :5])  # prefill 5, then one token at a time across the window-4 boundary
    logits, past = [step.logits], step.present
    for s in range(5, PROMPT):
        step = model.forward(ids[:, s : s + 1], past=past)
        logits.append(step.logits)
        past = step.present
    err = rel_err(np.concatenate(logits, axis=1), full.logits)
    print(f"\ncached decoding vs recomputation: max relative logits error {err:.2e}")
    assert err <= 1e-5
    for (k, v), (fk, fv) in zip(past, full.present):  # the cache holds every slot, keys after RoPE
        assert k.shape == (2, cfg.num_key_value_heads, PROMPT, cfg.head_dim)
        np.testing.assert_allclose(k, fk, rtol=0, atol=1e-5)
        np.testing.assert_allclose(v, fv, rtol=0, atol=1e-5)


def test_generate_greedy_equals_argmax_of_recomputation(tiny):
    cfg, _, model = tiny
    ids = prompt(cfg, (2, 6))
    got = model.generate_greedy(ids, max_new_tokens=5)
    want = ids
    for _ in range(5):
        want = np.concatenate([want, model.forward(want).logits[:, -1:].argmax(-1)], axis=1)
    np.testing.assert_array_equal(got, want)


def test_generate_greedy_stops_when_every_row_hit_eos(tiny):
    cfg, _, model = tiny
    ids = prompt(cfg, (1, 6))
    free = model.generate_greedy(ids, max_new_tokens=4)
    first = int(free[0, 6])
    stopped = model.generate_greedy(ids, max_new_tokens=4, eos_token_ids=[first])
    np.testing.assert_array_equal(stopped, free[:, :7])


def test_left_padded_batch_equals_each_row_alone(tiny):
    cfg, _, model = tiny
    rows = [prompt(cfg, (1, PROMPT), seed=1), prompt(cfg, (1, 7), seed=2)]
    ids = np.zeros((2, PROMPT), np.int64)
    mask = np.zeros((2, PROMPT), np.int64)
    for b, r in enumerate(rows):
        ids[b, -r.shape[1] :], mask[b, -r.shape[1] :] = r[0], 1
    batch = model.forward(ids, mask)
    assert np.isfinite(batch.logits).all()  # padded query rows see nothing but must not be NaN
    # then one cached step with the padding still in the cache
    nxt = batch.logits[:, -1].argmax(-1)[:, None]
    step = model.forward(nxt, np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1), past=batch.present)
    for b, r in enumerate(rows):
        alone = model.forward(np.concatenate([r, nxt[b : b + 1]], axis=1)).logits[0]
        n = r.shape[1]
        assert rel_err(batch.logits[b, -n:], alone[:n]) <= 1e-5, f"row {b} prompt"
        assert rel_err(step.logits[b, 0], alone[n]) <= 1e-5, f"row {b} cached step"


def test_greedy_with_left_padding_equals_rows_alone(tiny):
    cfg, _, model = tiny
    a, b = prompt(cfg, (1, 8), seed=1), prompt(cfg, (1, 5), seed=2)
    ids = np.concatenate([a, np.concatenate([np.zeros((1, 3), np.int64), b], axis=1)])
    mask = (np.arange(8)[None] >= np.array([[0], [3]])).astype(np.int64)
    got = model.generate_greedy(ids, 4, attention_mask=mask)
    np.testing.assert_array_equal(got[0, 8:], model.generate_greedy(a, 4)[0, 8:])
    np.testing.assert_array_equal(got[1, 8:], model.generate_greedy(b, 4)[0, 5:])


# ---- runner interface and CLI hook ---------------------------------------------------------------------------
def test_infer_uses_the_model_io_names(tiny):
    cfg, _, model = tiny
    ids = prompt(cfg, (1, PROMPT))
    n, P = cfg.num_hidden_layers, 8
    first = model.infer({"input_ids": ids[:, :P], "attention_mask": np.ones((1, P), np.int64)})
    assert set(first) == {"logits"} | {f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")}
    feeds = {f"past_key_values.{i}.{kv}": first[f"present.{i}.{kv}"] for i in range(n) for kv in ("key", "value")}
    feeds.update(
        input_ids=ids[:, P:],
        attention_mask=np.ones((1, PROMPT), np.int64),
        position_ids=np.arange(P, PROMPT)[None],
    )
    second = model.infer(feeds, hidden_states=True)
    assert all(v.dtype == np.float32 for v in second.values())
    assert second["present.0.key"].shape == (1, cfg.num_key_value_heads, PROMPT, cfg.head_dim)
    full = model.forward(ids, return_hidden_states=True)
    assert rel_err(second["logits"], full.logits[:, P:]) <= 1e-5
    for i in range(n):
        assert rel_err(second[f"hidden_states.{i}"], full.hidden_states[i][:, P:]) <= 1e-5


def test_run_checkpoint_returns_ids_and_writes_logits(tiny, tmp_path):
    cfg, path, model = tiny
    ids = prompt(cfg, (PROMPT,))  # 1-D: one row
    out_file = tmp_path / "out" / "logits.npy"
    got = run_checkpoint(path, ids, max_new_tokens=3, logits_out=out_file)
    np.testing.assert_array_equal(got, model.generate_greedy(ids[None], 3))
    logits = np.load(out_file)
    assert logits.shape == (1, PROMPT + 2, cfg.vocab_size) and logits.dtype == np.float32
    assert rel_err(logits, model.forward(got[:, :-1]).logits) <= 1e-5
    assert [p.name for p in out_file.parent.iterdir()] == ["logits.npy"]  # no temporary file left behind
    run_checkpoint(path, ids, 0, out_file)
    np.testing.assert_array_equal(np.load(out_file), model.forward(ids[None]).logits)


def test_only_chosen_experts_are_dequantized_once_per_call(tiny, monkeypatch):
    cfg, _, model = tiny
    calls = []
    real = mxfp4.decode
    monkeypatch.setattr(mxfp4, "decode", lambda b, s, *a: calls.append(b.shape) or real(b, s, *a))
    model.forward(prompt(cfg, (1, 1)))  # one token picks k of E experts per layer: W1 and W2 of each
    assert len(calls) == 2 * cfg.experts_per_token * cfg.num_hidden_layers
    assert (2 * cfg.intermediate_size, cfg.hidden_size // 32, 16) in calls  # one expert's gate_up, not all E


# ---- errors --------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(tiny):
    cfg, path, model = tiny
    with pytest.raises(MxportError, match="dtype must be float32 or float64"):
        ReferenceModel(path, dtype=np.float16)
    with pytest.raises(MxportError, match=r"input_ids: ids must lie in \[0, vocab_size=96\)"):
        model.forward(np.array([[3, 96]]))
    with pytest.raises(MxportError, match=r"attention_mask: expected shape \[B, P\+S\] = \(1, 2\)"):
        model.forward(np.array([[3, 4]]), np.ones((1, 3), np.int64))
    with pytest.raises(MxportError, match=r"past: expected 3 \(key, value\) pairs"):
        model.forward(np.array([[3]]), past=[])
    with pytest.raises(MxportError, match=r"infer: unknown feeds \['past_key_values.9.key'\]"):
        model.infer({"input_ids": np.array([[3]]), "past_key_values.9.key": np.zeros(1)})
    with pytest.raises(MxportError, match=r"past_key_values incomplete, missing \['past_key_values.0.value'"):
        model.infer({"input_ids": np.array([[3]]), "past_key_values.0.key": np.zeros((1, 3, 1, 24), np.float32)})


def test_missing_tensor_is_named():
    cfg = CONFIGS["plain-rope-top1-mha"].replace(num_hidden_layers=1, layer_types=(FULL,))

    class Incomplete:  # an in-memory Checkpoint without its lm_head
        config = cfg

        def names(self):
            return ["model.embed_tokens.weight", "model.norm.weight"]

    with pytest.raises(MxportError, match=r"missing tensors lm_head.weight, model.layers.0.input_layernorm.weight"):
        ReferenceModel(Incomplete())


# ---- layers --------------------------------------------------------------------------------------------------
def test_attention_row_that_sees_nothing_is_zero_not_nan():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(1, 2, 3, 4)), rng.normal(size=(1, 1, 3, 4)), rng.normal(size=(1, 1, 3, 4))
    keep = L.attention_keep_mask(np.array([[0, 1, 1]]), past_len=0, seq_len=3, window=0)
    for sinks in (np.array([0.5, -1.0]), np.full(2, -np.inf)):
        out = L.attention(q, k, v, keep, sinks, 0.5)
        assert np.isfinite(out).all() and not out[0, 0].any()
    # with -inf sinks a visible row is plain softmax attention; the sink only shrinks the weights
    plain = L.attention(q, k, v, keep, np.full(2, -np.inf), 0.5)[0, 1].reshape(2, 4)
    np.testing.assert_allclose(plain, v[0, 0, 1][None].repeat(2, 0), rtol=1e-12)  # row 1 sees only slot 1


def test_keep_mask_window_is_absolute_in_cache_slots():
    keep = L.attention_keep_mask(np.ones((1, 6), np.int64), past_len=4, seq_len=2, window=3)
    np.testing.assert_array_equal(keep[0].astype(int), [[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]])


def test_route_picks_descending_top_k_and_softmaxes_them():
    ids, w = L.route(np.array([[0.0, 3.0, 1.0, 2.0]]), 3)
    np.testing.assert_array_equal(ids, [[1, 3, 2]])
    e = np.exp([3.0, 2.0, 1.0])
    np.testing.assert_allclose(w, [e / e.sum()])
    ids, _ = L.route(np.array([[1.0, 2.0, 2.0, 2.0]]), 2)  # ties across the cut: lower expert id first (as ops.moe)
    np.testing.assert_array_equal(ids, [[1, 2]])


def test_swiglu_is_interleaved_clamped_with_alpha_and_plus_one():
    h = np.array([[10.0, 9.0, -1.0, -9.0]])  # (gate, up) pairs: (10, 9), (-1, -9)
    got = L.swiglu(h, limit=7.0, alpha=1.702)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(got, [[7 * sig(1.702 * 7) * 8, -1 * sig(-1.702) * -6]])
