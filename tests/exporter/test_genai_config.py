"""genai_config.json: onnxruntime-genai 0.18 loads every export folder as is and decodes the same greedy tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mxport.errors import MxportError
from mxport.exporter.export import export
from mxport.contract.folder import GENAI_FILE
from mxport.exporter.genai_config import genai_config
from mxport.runtime.generation.generate import Generator

og = pytest.importorskip("onnxruntime_genai")

PROMPT = [5, 17, 99, 23, 44, 301, 7, 250, 12, 64, 3, 81]  # 12 tokens: longer than the tiny window (8)
NEW = 20  # decode well past the window


@pytest.fixture(scope="module")
def exports(tiny_config, make_checkpoint, tmp_path_factory):
    from mxport.exporter.synth import PRESETS

    ckpt = make_checkpoint(tiny_config)
    gpt2 = make_checkpoint(PRESETS["gpt2-tiny"])  # learned positions, no sliding layers, its own tokenizer
    qwen3 = make_checkpoint(PRESETS["qwen3-tiny"])  # q/k norms, tied head
    root = tmp_path_factory.mktemp("genai")
    return {
        name: export(src, root / name, progress=False, **opts)
        for name, (src, opts) in {
            "portable": (ckpt, {}),
            "cpu": (ckpt, {"target": "cpu"}),
            "cpu-full-cache": (ckpt, {"target": "cpu", "window_cache": False}),
            "gpt2-portable": (gpt2, {}),
            "gpt2-cpu": (gpt2, {"target": "cpu"}),
            "qwen3-portable": (qwen3, {}),
            "qwen3-cpu": (qwen3, {"target": "cpu"}),
        }.items()
    }


def genai_greedy(folder, prompt: list[int], new: int) -> list[int]:
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new, min_length=len(prompt) + new)  # no early eos
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([prompt], np.int32))
    out = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


@pytest.mark.parametrize("name", ["portable", "cpu", "cpu-full-cache", "gpt2-portable", "gpt2-cpu", "qwen3-portable",
                                  "qwen3-cpu"])
def test_genai_greedy_equals_mxport(exports, name):
    folder = exports[name]
    ours = Generator.from_folder(folder).generate(PROMPT, max_new_tokens=NEW, stop_token_ids=[])[0].token_ids
    assert genai_greedy(folder, PROMPT, NEW) == ours


def test_genai_config_contents(exports, tiny_config):
    cfg = json.loads((exports["cpu"] / GENAI_FILE).read_text())
    dec = cfg["model"]["decoder"]
    assert cfg["model"]["type"] == "decoder" and cfg["search"]["past_present_share_buffer"] is False  # window caches
    assert (dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]) == (
        tiny_config.num_hidden_layers, tiny_config.num_key_value_heads, tiny_config.head_dim)
    assert cfg["model"]["context_length"] == tiny_config.max_position_embeddings
    # tiny: layer 0 slides with window 8 -> capacity 7 = window_size 6 + cache_slack 1
    assert dec["sliding_window"] == {"window_size": 6, "cache_slack": 1, "layers": [0], "slide_inputs": False,
                                     "slide_key_value_cache": False}
    full = json.loads((exports["cpu-full-cache"] / GENAI_FILE).read_text())
    assert "sliding_window" not in full["model"]["decoder"]


@pytest.mark.parametrize("name, shared", [("portable", False), ("cpu", False), ("cpu-full-cache", True),
                                          ("gpt2-portable", False), ("gpt2-cpu", True), ("qwen3-cpu", True)])
def test_genai_shares_the_cache_buffer_where_every_layer_is_one_gqa(exports, name, shared):
    """past_present_share_buffer (genai binds one buffer as past and present, as its own builder's graphs do) only
    where GroupQueryAttention alone reads every past and writes its present; the greedy test above runs them."""
    cfg = json.loads((exports[name] / GENAI_FILE).read_text())
    assert cfg["search"]["past_present_share_buffer"] is shared


@pytest.mark.parametrize("name", ["gpt2-cpu", "qwen3-cpu"])
def test_genai_tokenizer_of_synthetic_families_matches(exports, name):
    text = "Hello, world! The quick brown fox"
    folder = exports[name]
    genai_tok = og.Tokenizer(og.Model(str(folder)))
    assert [int(i) for i in genai_tok.encode(text)] == Generator.from_folder(folder).tokenizer.encode(text)


def test_genai_tokenizer_matches(tiny_config, make_checkpoint, tmp_path):
    """With tokenizer.json alone, the export adds a minimal tokenizer_config.json so genai's tokenizer loads."""
    from mxport.runtime.generation.tokenizer import build_harmony_tokenizer

    ckpt = tmp_path / "ckpt"
    ckpt.symlink_to(make_checkpoint(tiny_config), target_is_directory=True)
    shadow = tmp_path / "with-tok"
    shadow.mkdir()
    for f in ckpt.iterdir():
        (shadow / f.name).symlink_to(f)
    tok = build_harmony_tokenizer(tiny_config.vocab_size)
    tok.save(shadow / "tokenizer.json")
    out = export(shadow, tmp_path / "out", progress=False)
    text = "Hello, world! Les élèves 🙂"
    genai_tok = og.Tokenizer(og.Model(str(out)))
    assert [int(i) for i in genai_tok.encode(text)] == tok.encode(text)


def test_genai_config_needs_the_io_contract(tiny_config):
    with pytest.raises(MxportError, match="'attention_mask'"):
        genai_config(tiny_config, inputs=["input_ids"], outputs=["logits"], window_cache=True)
