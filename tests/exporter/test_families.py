"""The family registry: detection from config.json, one error listing the supported families, and the refactor guard
(gpt-oss exports stay byte-identical to the ones made before families existed)."""

from __future__ import annotations

import hashlib
import json

import onnx
import onnx_ir
import pytest

from mxport.errors import MxportError
from mxport.exporter import families
from mxport.exporter.families.base import DecoderConfig, Rope


def test_gpt_oss_is_registered_and_detected(tiny_config):
    fam = families.get("gpt_oss")
    assert tiny_config.family is fam
    assert families.detect(tiny_config.to_hf_dict()) is fam
    assert families.detect({"architectures": ["GptOssForCausalLM"]}) is fam
    assert families.detect(tiny_config.to_original_dict()) is fam  # the original/ layout names no architecture
    assert families.config_from_dict(tiny_config.to_hf_dict()) == tiny_config


def test_unknown_family_lists_the_supported_ones():
    with pytest.raises(MxportError, match=r"x.json: unknown architecture .*'llama'.*supported families: gpt_oss"):
        families.detect({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "x.json")
    with pytest.raises(MxportError, match=r"unknown model family 'llama'; supported: gpt_oss"):
        families.get("llama")


def test_presets_are_unique_and_belong_to_their_family():
    presets = families.presets()
    assert {"tiny", "mini", "gpt-oss-20b", "gpt-oss-120b"} <= set(presets)
    for name, cfg in presets.items():
        assert name in cfg.family.presets


def test_decoder_config_names_what_is_wrong():
    with pytest.raises(MxportError, match="num_attention_heads=6 is not a multiple of num_key_value_heads=4"):
        DecoderConfig(architecture="gpt_oss", vocab_size=8, hidden_size=8, num_hidden_layers=1,
                      num_attention_heads=6, num_key_value_heads=4, head_dim=2)
    with pytest.raises(MxportError, match="hidden_size=-1 must be a positive integer"):
        DecoderConfig(architecture="gpt_oss", vocab_size=8, hidden_size=-1, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, head_dim=2)


def test_rope_kinds():
    base, _ = Rope(theta=10000.0).inv_freq(8)
    linear, scale = Rope(theta=10000.0, rope_type="linear", factor=4.0).inv_freq(8)
    assert scale == 1.0 and linear == pytest.approx(base / 4)
    yarn, scale = Rope(theta=10000.0, rope_type="yarn", factor=4.0, original_max_position=64).inv_freq(8)
    assert scale == pytest.approx(0.1 * 1.3862943611198906 + 1) and yarn[0] == pytest.approx(base[0])


# Hashes of model.onnx + model.onnx.data of the gpt-oss tiny preset, exported before the family refactor (commit
# 685291b). Serialization belongs to onnx / onnx-ir: with other versions than these the bytes may legitimately differ.
# The cpu graph changed on purpose since (its logits did not): the RotaryEmbedding of q and k folded into
# GroupQueryAttention (lower/rotary.py) and the unused mean / inv_std outputs of the Skip*Normalization nodes
# left out (it was f76f0d7ea5b18892 up to 470f642). Re-recorded once more when every family's layer-ending Add took
# the one residual role of the model I/O contract (`layers.{i}/residual`, was `moe_residual`; it was
# 4f2b24e9919b9b9a / 157f6c2f27f02ff3 before): the bytes differ by that value's name only (checked by renaming it
# back: identical model.onnx, identical model.onnx.data). The cpu graph's lowering report (metadata mxport.lowering)
# spells its experts mode "float32" since the mode table's one spelling (it was 00a4985dd453d3c8 with "fp32"; with
# that one string put back the bytes are the same). Since the cpu graph's attention is ai.mxport.GroupQueryAttention
# (mxport's native kernel; its function body is ORT's node) it was 7cc1db5ea7b31e82: with each node put back to
# com.microsoft (its four absent inputs before query_seqlens) and the body dropped, the bytes are those again.
GOLDEN_VERSIONS = ("1.23.2", "1.1.0")
GOLDEN = {"portable": "90d46d9df9ce8f68", "cpu": "c387f2c49d298dfb"}


@pytest.mark.skipif((onnx.__version__, onnx_ir.__version__) != GOLDEN_VERSIONS,
                    reason=f"golden hashes were recorded with onnx/onnx-ir {GOLDEN_VERSIONS}")
@pytest.mark.parametrize("target", ["portable", "cpu"])
def test_gpt_oss_tiny_export_is_byte_identical_to_before_families(target, tiny_config, make_checkpoint, tmp_path):
    from mxport.exporter.export import export

    out = export(make_checkpoint(tiny_config), tmp_path / target, target=target, progress=False)
    digest = hashlib.sha256((out / "model.onnx").read_bytes() + (out / "model.onnx.data").read_bytes())
    assert digest.hexdigest()[:16] == GOLDEN[target]
    assert json.loads((out / "mxport.json").read_text())["family"] == "gpt_oss"
