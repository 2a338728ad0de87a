"""The NumPy reference model on Qwen3-MoE checkpoints against transformers' Qwen3MoeForCausalLM (fp32, eager), in
both expert layouts, and against itself (KV cache, left padding); the family's config and layer rule.
Cases: tests/qwen3_moe_cases.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import qwen3_moe_cases
from decoding import ids_for, rel_err
from mxport.errors import MxportError
from mxport.exporter import families
from mxport.exporter.checkpoint import open_checkpoint
from mxport.exporter.families import qwen3_moe
from mxport.runtime.oracle import layers as L
from mxport.runtime.oracle.model import ReferenceModel

_CACHE: dict = {}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return lambda name: qwen3_moe_cases.make(tmp_path_factory, _CACHE, name)


@pytest.mark.parametrize("layout", ["per_expert", "fused"])
@pytest.mark.parametrize("name", sorted(qwen3_moe_cases.CASES))
def test_logits_and_hidden_states_match_transformers(case, name, layout):
    path, fused, oracle = case(name)
    ids = ids_for(oracle.config.vocab_size, (2, 11))
    with torch.no_grad():
        want = oracle(torch.tensor(ids), output_hidden_states=True)
    with ReferenceModel(path if layout == "per_expert" else fused) as model:
        got = model.forward(ids, return_hidden_states=True)
    err = rel_err(got.logits, want.logits.numpy())
    print(f"\n{name} ({layout}): max relative logits error vs transformers {err:.2e}")
    assert err <= 1e-4 and (got.logits.argmax(-1) == want.logits.numpy().argmax(-1)).all()
    for i in range(oracle.config.num_hidden_layers - 1):  # transformers' last entry is after the final norm
        assert rel_err(got.hidden_states[i], want.hidden_states[i + 1].numpy()) <= 1e-4


def test_layouts_read_the_same_canonical_tensors(case):
    path, fused, _ = case("step2_bf16")
    with open_checkpoint(path) as a, open_checkpoint(fused) as b:
        assert a.names() == b.names()
        assert "model.layers.3.mlp.experts.gate_up_proj" in a.names()
        assert "model.layers.2.mlp.experts.gate_up_proj" not in a.names()  # dense layer
        for name in a.names():
            np.testing.assert_array_equal(a.get(name), b.get(name), err_msg=name)
            assert a.spec(name) == b.spec(name)
        x = "model.layers.3.mlp.experts.gate_up_proj"
        np.testing.assert_array_equal(a.get_rows(x, 2, 4), a.get(x)[2:4])  # one expert's files at a time


def test_router_math_matches_transformers():
    """softmax over all E in float32, top-k, renormalised iff norm_topk_prob: transformers' Qwen3MoeTopKRouter."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

    for norm in (True, False):
        router = Qwen3MoeTopKRouter(Qwen3MoeConfig(hidden_size=16, num_experts=7, num_experts_per_tok=3,
                                                   norm_topk_prob=norm))
        with torch.no_grad():
            router.weight.normal_()
            x = torch.randn(5, 16)
            logits, scores, idx = router(x)
        ids, weights = L.route_softmax_topk(logits.numpy(), 3, norm)
        np.testing.assert_array_equal(ids, idx.numpy())
        np.testing.assert_allclose(weights, scores.numpy(), rtol=1e-6)


def test_left_padded_batch_matches_transformers(case):
    path, _, oracle = case("sliding")
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


@pytest.mark.parametrize("name", ["norm", "sliding"])
def test_cached_decoding_equals_recomputation(case, name):
    path, _, oracle = case(name)
    ids = ids_for(oracle.config.vocab_size, (2, 10))
    for window_cache in (False, True):
        with ReferenceModel(path, window_cache=window_cache) as model:
            full = model.forward(ids).logits
            out = model.forward(ids[:, :6])
            steps, past = [out.logits], out.present
            for t in range(6, 10):
                out = model.forward(ids[:, t : t + 1], np.ones((2, t + 1), np.int64), past=past)
                steps.append(out.logits)
                past = out.present
        assert rel_err(np.concatenate(steps, axis=1), full) <= 1e-5


def test_streamed_experts_equal_cached(case):
    """Without the weight cache only the chosen experts' rows are read (get_rows): same logits."""
    path, _, oracle = case("step2_bf16")
    ids = ids_for(oracle.config.vocab_size, (1, 7))
    with ReferenceModel(path) as cached, ReferenceModel(path, cache_weights=False) as streamed:
        np.testing.assert_array_equal(cached.forward(ids).logits, streamed.forward(ids).logits)


# ---- config -------------------------------------------------------------------------------------------------------
def test_sparse_layers_follow_transformers():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    for kw in (dict(), dict(decoder_sparse_step=2), dict(decoder_sparse_step=3, mlp_only_layers=[2]),
               dict(mlp_only_layers=[0, 4]), dict(num_experts=0)):
        d = dict(qwen3_moe_cases.BASE, num_hidden_layers=6, hidden_size=32, intermediate_size=32,
                 moe_intermediate_size=32, vocab_size=16, **kw)
        theirs = Qwen3MoeForCausalLM(Qwen3MoeConfig(**d))
        want = [isinstance(layer.mlp, Qwen3MoeSparseMoeBlock) for layer in theirs.model.layers]
        ours = qwen3_moe.config_from_dict(d)
        assert [ours.sparse(i) for i in range(6)] == want, kw


def test_config_round_trip_and_transformers_reads_it(tmp_path):
    from transformers import Qwen3MoeConfig as HFConfig

    cfg = qwen3_moe.PRESETS["qwen3-moe-tiny"].replace(norm_topk_prob=False, decoder_sparse_step=2)
    d = qwen3_moe.config_to_dict(cfg)
    (tmp_path / "config.json").write_text(json.dumps(d))
    hf = HFConfig.from_pretrained(tmp_path)
    assert (hf.num_experts, hf.num_experts_per_tok, hf.moe_intermediate_size) == (8, 2, 32)
    assert hf.mlp_only_layers == [1] and hf.decoder_sparse_step == 2 and not hf.norm_topk_prob
    assert hf.head_dim == 16 and not hf.tie_word_embeddings
    assert families.read_config(tmp_path / "config.json") == cfg
    assert qwen3_moe.config_from_dict(hf.to_dict()) == cfg  # transformers 5's spelling (num_local_experts, ...)


def test_published_30b_a3b_shapes():
    cfg = qwen3_moe.PRESETS["qwen3-30b-a3b"]
    table = qwen3_moe.expected_tensors(cfg)
    params = sum(int(np.prod(e.shape)) for e in table)
    assert 30.0e9 < params < 31.0e9  # Qwen3-30B-A3B: 30.5B parameters
    active = params - sum(int(np.prod(e.shape)) * (1 - 8 / 128) for e in table if ".experts." in e.name)
    assert 3.0e9 < active < 3.6e9  # "A3B": 3.3B activated
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (48, 2048, 32, 4)
    assert (cfg.head_dim, cfg.num_experts, cfg.num_experts_per_tok, cfg.vocab_size) == (128, 128, 8, 151936)
    assert cfg.norm_topk_prob and not cfg.tie_word_embeddings and all(cfg.sparse(i) for i in range(48))


@pytest.mark.parametrize("change, message", [
    ({"num_experts_per_tok": 8}, r"num_experts_per_tok=8 must be in \[1, num_experts=7\]"),
    ({"decoder_sparse_step": 0}, "decoder_sparse_step=0 must be at least 1"),
    ({"mlp_only_layers": 3}, "'mlp_only_layers' should be a list"),
    ({"moe_intermediate_size": "wide"}, "'moe_intermediate_size' should be int"),
    ({"intermediate_size": None}, "missing required key 'intermediate_size'"),
])
def test_bad_config_keys_are_named(tmp_path, change, message):
    d = {"model_type": "qwen3_moe", **qwen3_moe_cases.BASE, **change}
    d = {k: v for k, v in d.items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(MxportError, match=message) as exc:
        families.read_config(tmp_path / "config.json")
    assert "config.json" in str(exc.value)


def test_missing_expert_file_is_named(case, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    path, _, _ = case("norm")
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    tensors = load_file(bad / "model.safetensors")
    del tensors["model.layers.1.mlp.experts.5.up_proj.weight"]
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(MxportError, match=r"missing tensor 'model\.layers\.1\.mlp\.experts\.5\.up_proj\.weight'"):
        open_checkpoint(bad)


def test_published_config_json_parses_to_the_preset():
    """Qwen/Qwen3-30B-A3B's config.json (as published, transformers 4.51 spellings) -> the qwen3-30b-a3b preset."""
    published = {
        "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144,
        "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe",
        "moe_intermediate_size": 768, "norm_topk_prob": True, "num_attention_heads": 32, "num_experts": 128,
        "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": False,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    }
    cfg = families.config_from_dict(published)
    assert cfg == qwen3_moe.PRESETS["qwen3-30b-a3b"]
    assert qwen3_moe.config_from_dict(qwen3_moe.config_to_dict(cfg)) == cfg
