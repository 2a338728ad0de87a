"""gpt-oss presets get a harmony tokenizer at synth time (exporter/families/gpt_oss/tokenizer.py), whose stop and
pad ids are the presets' eos / pad ids, so run --prompt / chat / serve work on a synthetic gpt-oss export."""

import json

import pytest

from mxport.errors import MxportError
from mxport.exporter.families.gpt_oss.tokenizer import (
    HARMONY_SPECIAL_TOKENS,
    O200K_HARMONY_VOCAB,
    harmony_special_ids,
    harmony_stop_ids,
    write_synth_files,
)
from mxport.exporter.synth import PRESETS, write_checkpoint
from mxport.runtime.generation.tokenizer import Tokenizer

GPT_OSS_PRESETS = [name for name, cfg in PRESETS.items() if cfg.family.name == "gpt_oss"]


def test_every_gpt_oss_preset_has_the_harmony_stops():
    assert set(GPT_OSS_PRESETS) >= {"tiny", "mini", "gpt-oss-20b", "gpt-oss-120b"}
    for name in GPT_OSS_PRESETS:
        cfg = PRESETS[name]
        ids = harmony_special_ids(cfg.vocab_size)
        assert cfg.eos_token_ids == (ids["<|return|>"], ids["<|endoftext|>"], ids["<|call|>"]), name
        assert cfg.pad_token_id == ids["<|endoftext|>"], name
        assert max(ids.values()) < cfg.vocab_size
    # the published shapes keep o200k_harmony's ids (as gpt-oss-20b's generation_config.json has them)
    assert PRESETS["gpt-oss-20b"].eos_token_ids == (200002, 199999, 200012)


@pytest.mark.parametrize("name", ["tiny", "mini"])
def test_synth_writes_a_harmony_tokenizer(name, tmp_path):
    cfg = PRESETS[name]
    out = write_checkpoint(tmp_path / name, cfg, seed=0) if name == "tiny" else tmp_path
    if name == "mini":  # the 0.6 GB weights are not the point: the family's synth_files hook is what writes these
        cfg.family.synth_files(cfg, out)
    tok = Tokenizer.from_file(out)
    assert tok.vocab_size == cfg.vocab_size
    for token, tid in harmony_special_ids(cfg.vocab_size).items():
        assert tok.token_to_id(token) == tid and tok.decode([tid]) == token
    text = "The capital of France is Paris. ¿Qué tal? 🙂"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|start|>user<|message|>hi<|end|>")[0] == tok.require("<|start|>")
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == list(cfg.eos_token_ids) and generation["pad_token_id"] == cfg.pad_token_id
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|return|>" and config["pad_token"] == "<|endoftext|>"


def test_o200k_sized_vocab_uses_o200k_ids(tmp_path):
    cfg = PRESETS["gpt-oss-20b"]
    assert cfg.vocab_size == O200K_HARMONY_VOCAB
    write_synth_files(cfg, tmp_path)
    tok = Tokenizer.from_file(tmp_path)
    for token, tid in HARMONY_SPECIAL_TOKENS.items():
        assert tok.token_to_id(token) == tid
    assert harmony_stop_ids(cfg.vocab_size) == (cfg.eos_token_ids, cfg.pad_token_id)


def test_small_vocab_is_refused_by_the_builder_and_skipped_by_synth(tmp_path):
    with pytest.raises(MxportError, match="vocab_size=100 is too small"):
        harmony_special_ids(100)
    write_synth_files(PRESETS["tiny"].replace(vocab_size=96, eos_token_ids=(1,), pad_token_id=0), tmp_path)
    assert not list(tmp_path.iterdir())  # a test-sized vocab gets no tokenizer, and no error
