"""The NumPy reference model on Qwen3 checkpoints against transformers' Qwen3ForCausalLM (fp32, eager), and against
itself (KV cache, left padding, float64). Cases: tests/qwen3_cases.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qwen3_cases
from decoding import ids_for, rel_err
from mxport.errors import MxportError
from mxport.runtime.oracle.model import ReferenceModel

_CACHE: dict = {}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return lambda name: qwen3_cases.make(tmp_path_factory, _CACHE, name)


@pytest.mark.parametrize("name", sorted(qwen3_cases.CASES))
def test_logits_and_hidden_states_match_transformers(case, name):
    path, oracle = case(name)
    ids = ids_for(oracle.config.vocab_size, (2, 11))
    with torch.no_grad():
        want = oracle(torch.tensor(ids), output_hidden_states=True)
    with ReferenceModel(path) as model:
        got = model.forward(ids, return_hidden_states=True)
    err = rel_err(got.logits, want.logits.numpy())
    print(f"\n{name}: max relative logits error vs transformers {err:.2e}")
    assert err <= 1e-4 and (got.logits.argmax(-1) == want.logits.numpy().argmax(-1)).all()
    for i in range(oracle.config.num_hidden_layers - 1):  # transformers' last entry is after the final norm
        assert rel_err(got.hidden_states[i], want.hidden_states[i + 1].numpy()) <= 1e-4


def test_left_padded_batch_matches_transformers(case):
    path, oracle = case("sliding_bf16")
    ids = ids_for(oracle.config.vocab_size, (2, 9))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    with torch.no_grad():
        want = oracle(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)).logits
    with ReferenceModel(path) as model:
        got = model.forward(ids, mask).logits
    keep = mask.astype(bool)
    assert rel_err(got[keep], want.numpy()[keep]) <= 1e-4


@pytest.mark.parametrize("name", ["tied", "sliding_bf16"])
def test_cached_decoding_equals_recomputation(case, name):
    path, oracle = case(name)
    ids = ids_for(oracle.config.vocab_size, (2, 10))
    for window_cache in (False, True):
        with ReferenceModel(path, window_cache=window_cache) as model:
            full = model.forward(ids).logits
            out = model.forward(ids[:, :6])
            steps = [out.logits]
            past = out.present
            for t in range(6, 10):
                mask = np.ones((2, t + 1), np.int64)
                out = model.forward(ids[:, t : t + 1], mask, past=past)
                steps.append(out.logits)
                past = out.present
        assert rel_err(np.concatenate(steps, axis=1), full) <= 1e-5


def test_left_padded_batch_equals_each_row_alone(case):
    path, oracle = case("sliding_bf16")
    a, b = ids_for(oracle.config.vocab_size, (1, 8), 1), ids_for(oracle.config.vocab_size, (1, 5), 2)
    batch = np.concatenate([a, np.concatenate([np.zeros((1, 3), np.int64), b], axis=1)])
    mask = np.ones_like(batch)
    mask[1, :3] = 0
    with ReferenceModel(path) as model:
        got = model.generate_greedy(batch, 6, mask)
        alone_a, alone_b = model.generate_greedy(a, 6), model.generate_greedy(b, 6)
    np.testing.assert_array_equal(got[0], alone_a[0])
    np.testing.assert_array_equal(got[1, 3:], alone_b[0])


def test_float64_agrees_with_float32(case):
    path, oracle = case("yarn")
    ids = ids_for(oracle.config.vocab_size, (1, 12))
    with ReferenceModel(path) as f32, ReferenceModel(path, dtype=np.float64) as f64:
        assert rel_err(f32.forward(ids).logits, f64.forward(ids).logits) <= 1e-5


def test_transformers_reads_the_config_we_write(tmp_path):
    """config_to_dict -> transformers' Qwen3Config: the same layer types, window, rope, tie and head_dim."""
    import json

    from transformers import Qwen3Config as HFConfig

    from mxport.exporter.families import qwen3
    from mxport.exporter.families.base import Rope

    cfg = qwen3.PRESETS["qwen3-tiny"].replace(
        use_sliding_window=True, sliding_window=16, max_window_layers=1, layer_types=(),
        rope=Rope(theta=5e5, rope_type="yarn", factor=2.0, original_max_position=256))
    d = qwen3.config_to_dict(cfg)
    (tmp_path / "config.json").write_text(json.dumps(d))
    hf = HFConfig.from_pretrained(tmp_path)
    assert hf.layer_types == list(cfg.layer_types) == ["full_attention", "sliding_attention", "sliding_attention"]
    assert hf.sliding_window == 16 and hf.head_dim == 24 and hf.tie_word_embeddings
    assert hf.rope_parameters["rope_type"] == "yarn" and hf.rope_parameters["factor"] == 2.0
    assert qwen3.config_from_dict(d) == cfg
    assert qwen3.config_from_dict(hf.to_dict()) == cfg  # transformers 5's own spelling (rope_parameters)


def test_missing_norm_tensor_is_named(case, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    path, _ = case("tied")
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    tensors = load_file(bad / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(MxportError, match=r"model\.layers\.1\.self_attn\.k_norm\.weight"):
        ReferenceModel(bad)
