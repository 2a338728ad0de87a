"""GptOssConfig: both config.json spellings, both layouts, YaRN against transformers' own computation."""

import json

import numpy as np
import pytest

from mxport.errors import MxportError
from mxport.exporter.families.gpt_oss.config import FULL, SLIDING, GptOssConfig, yarn_inv_freq


def test_defaults_are_gpt_oss_20b():
    cfg = GptOssConfig()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_experts, cfg.experts_per_token) == (2880, 24, 32, 4)
    assert cfg.layer_types[:2] == (SLIDING, FULL)
    assert cfg.window(0) == 128 and cfg.window(1) == 0
    assert cfg.q_per_kv == 8


@pytest.mark.parametrize("writer", ["to_hf_dict", "to_original_dict"])
def test_round_trip(writer):
    cfg = GptOssConfig(num_hidden_layers=3, layer_types=(FULL, SLIDING, SLIDING), rope_scaling_factor=4.0)
    back = GptOssConfig.from_dict(getattr(cfg, writer)())
    if writer == "to_original_dict":  # the original layout has no eos/pad keys
        back = back.replace(eos_token_ids=cfg.eos_token_ids, pad_token_id=cfg.pad_token_id)
    assert back == cfg


def test_rope_parameters_spelling_matches_rope_scaling():
    cfg = GptOssConfig(rope_theta=1234.0, rope_scaling_factor=8.0, rope_beta_fast=16.0)
    d = cfg.to_hf_dict()
    newer = {k: v for k, v in d.items() if k not in ("rope_scaling", "rope_theta")}
    newer["rope_parameters"] = {**d["rope_scaling"], "rope_theta": d["rope_theta"]}
    assert GptOssConfig.from_dict(newer) == GptOssConfig.from_dict(d) == cfg


def test_parses_transformers_own_config():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GptOssConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=64, num_local_experts=4,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=100)
    cfg = GptOssConfig.from_dict(json.loads(hf.to_json_string()))
    assert cfg.rope_theta == 150000.0 and cfg.rope_scaling_factor == 32.0 and cfg.rope_truncate is False
    assert cfg.num_experts == 4 and cfg.head_dim == 16 and cfg.layer_types == (SLIDING, FULL)


def test_yarn_matches_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = GptOssConfig(num_hidden_layers=2, head_dim=64)
    hf = transformers.GptOssConfig(**{k: v for k, v in cfg.to_hf_dict().items() if k != "quantization_config"})
    inv_freq, scale = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
    ours, our_scale = yarn_inv_freq(cfg)
    np.testing.assert_allclose(ours, inv_freq.double().numpy(), rtol=1e-6)
    assert our_scale == pytest.approx(scale)


def test_plain_rope_when_no_scaling():
    cfg = GptOssConfig(rope_scaling_factor=1.0, rope_theta=10000.0, head_dim=8)
    inv, scale = yarn_inv_freq(cfg)
    np.testing.assert_allclose(inv, 1.0 / 10000.0 ** (np.arange(0, 8, 2) / 8))
    assert scale == 1.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "unknown architecture"),
        ({"hidden_size": None}, "'hidden_size' should be int"),
        ({"num_attention_heads": 6, "num_key_value_heads": 4}, "not a multiple"),
        ({"layer_types": ["sliding_attention"]}, "layer_types has 1 entries"),
        ({"layer_types": ["local", "global"]}, "unknown values"),
        ({"hidden_size": 100, "head_dim": 20, "num_attention_heads": 5, "num_key_value_heads": 5}, "multiples of 32"),
    ],
)
def test_bad_config_errors(change, message):
    d = GptOssConfig(num_hidden_layers=2).to_hf_dict()
    d.update(change)
    with pytest.raises(MxportError, match=message):
        GptOssConfig.from_dict(d, source="ckpt/config.json")


def test_missing_key_names_file_and_key(tmp_path):
    d = GptOssConfig(num_hidden_layers=2).to_hf_dict()
    del d["vocab_size"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(MxportError, match=r"config.json: missing required key 'vocab_size'"):
        GptOssConfig.from_file(path)
    path.write_text("{not json")
    with pytest.raises(MxportError, match="not valid JSON"):
        GptOssConfig.from_file(path)
    with pytest.raises(MxportError, match="not found"):
        GptOssConfig.from_file(tmp_path / "nope.json")
