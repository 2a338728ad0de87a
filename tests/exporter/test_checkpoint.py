"""Checkpoint readers: both layouts, shards, dense experts, and one clear MxportError per kind of bad input."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from mxport.errors import MxportError
from mxport.exporter.checkpoint import INDEX_FILE, TensorSpec, open_checkpoint, read_header
from mxport.ops import mxfp4

GATE_UP = "model.layers.1.mlp.experts.gate_up_proj"


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture
def hf_copy(tiny_config, make_checkpoint, tmp_path):
    """A private, writable copy of the tiny HF checkpoint."""
    return shutil.copytree(make_checkpoint(tiny_config), tmp_path / "ckpt")


def rewrite(file, change):
    """Load a (tiny) safetensors file, let change(dict) edit it, save it back."""
    with safe_open(str(file), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(tensors)
    save_file(tensors, str(file))


# ---- reading -----------------------------------------------------------------------------------------------------
def test_hf_reader_names_specs_and_values(tiny_config, make_checkpoint):
    with open_checkpoint(make_checkpoint(tiny_config)) as ckpt:
        assert ckpt.layout == "hf" and ckpt.config == tiny_config
        names = ckpt.names()
        assert len(names) == 3 + tiny_config.num_hidden_layers * 19 and names[0] == "model.embed_tokens.weight"
        assert names[-2:] == ["model.norm.weight", "lm_head.weight"]
        spec = ckpt.spec(GATE_UP + "_blocks")
        assert spec == TensorSpec(GATE_UP + "_blocks", (8, 128, 2, 16), np.dtype(np.uint8))
        q = ckpt.get("model.layers.0.self_attn.q_proj.weight")
        assert q.dtype == mxfp4.BFLOAT16 and q.shape == ckpt.spec("model.layers.0.self_attn.q_proj.weight").shape
        q32 = ckpt.get_f32("model.layers.0.self_attn.q_proj.weight")
        assert q32.dtype == np.float32 and np.array_equal(q32, q.astype(np.float32))
        for name in names:
            assert ckpt.get(name).shape == ckpt.spec(name).shape, name


def test_get_f32_refuses_packed_halves_and_unknown_names(tiny_config, make_checkpoint):
    with open_checkpoint(make_checkpoint(tiny_config)) as ckpt:
        with pytest.raises(MxportError, match="MXFP4 packed data"):
            ckpt.get_f32(GATE_UP + "_blocks")
        with pytest.raises(MxportError, match="no tensor named 'model.layers.9.mlp.gate'"):
            ckpt.get("model.layers.9.mlp.gate")


def test_original_layout_gives_identical_tensors(tiny_config, make_checkpoint):
    hf, orig = open_checkpoint(make_checkpoint(tiny_config)), open_checkpoint(make_checkpoint(tiny_config, "original"))
    assert orig.layout == "original" and orig.names() == hf.names()
    for name in hf.names():
        assert orig.spec(name) == hf.spec(name), name
        assert same_bytes(orig.get(name), hf.get(name)), name
    keys = {"eos_token_ids", "pad_token_id"}  # the original config has no eos/pad keys
    assert orig.config.replace(**{k: getattr(hf.config, k) for k in keys}) == hf.config


def test_original_layout_stores_fused_qkv(tiny_config, make_checkpoint):
    path = make_checkpoint(tiny_config, "original")
    header = read_header(path / "model.safetensors")
    D, heads, kv = tiny_config.head_dim, tiny_config.num_attention_heads, tiny_config.num_key_value_heads
    assert header["block.0.attn.qkv.weight"].shape == ((heads + 2 * kv) * D, tiny_config.hidden_size)
    assert "block.1.mlp.mlp1_weight.blocks" in header and "unembedding.weight" in header
    with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
        qkv = f.get_tensor("block.0.attn.qkv.bias")
    with open_checkpoint(path) as ckpt:
        parts = [ckpt.get(f"model.layers.0.self_attn.{p}_proj.bias") for p in "qkv"]
    assert [len(p) for p in parts] == [heads * D, kv * D, kv * D]
    assert same_bytes(np.concatenate(parts), qkv)


def test_repo_root_with_only_original_folder_opens_it(tiny_config, make_checkpoint, tmp_path):
    shutil.copytree(make_checkpoint(tiny_config, "original"), tmp_path / "repo" / "original")
    with open_checkpoint(tmp_path / "repo") as ckpt:
        assert ckpt.layout == "original" and ckpt.path == tmp_path / "repo" / "original"


def test_shards_and_index(tiny_config, make_checkpoint):
    sharded = make_checkpoint(tiny_config, max_shard_bytes=60_000)
    shards = sorted(sharded.glob("*.safetensors"))
    index = json.loads((sharded / INDEX_FILE).read_text())
    assert len(shards) > 2 and set(index["weight_map"].values()) == {s.name for s in shards}
    assert index["metadata"]["total_size"] == sum(s.stat().st_size for s in shards) - sum(
        8 + struct.unpack("<Q", s.read_bytes()[:8])[0] for s in shards
    )
    with open_checkpoint(sharded) as a, open_checkpoint(make_checkpoint(tiny_config)) as b:
        for name in b.names():
            assert same_bytes(a.get(name), b.get(name)), name


def test_dense_experts_variant(tiny_config, make_checkpoint):
    dense_cfg = tiny_config.replace(experts_mxfp4=False)
    with open_checkpoint(make_checkpoint(dense_cfg)) as dense, open_checkpoint(make_checkpoint(tiny_config)) as q:
        assert not dense.config.experts_mxfp4
        E, H, I = tiny_config.num_experts, tiny_config.hidden_size, tiny_config.intermediate_size
        assert dense.spec(GATE_UP).shape == (E, H, 2 * I)
        assert dense.spec("model.layers.0.mlp.experts.down_proj").shape == (E, I, H)
        assert GATE_UP + "_blocks" not in dense.names()
        for proj in ("gate_up_proj", "down_proj"):  # same numbers as the MXFP4 checkpoint, input-major
            name = f"model.layers.0.mlp.experts.{proj}"
            w = mxfp4.decode(q.get(name + "_blocks"), q.get(name + "_scales"))  # [E, out, in]
            np.testing.assert_array_equal(dense.get_f32(name), w.transpose(0, 2, 1))


# ---- errors ------------------------------------------------------------------------------------------------------
def test_missing_config_key(hf_copy):
    cfg = json.loads((hf_copy / "config.json").read_text())
    del cfg["num_local_experts"]
    (hf_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MxportError, match=r"config\.json: missing required key 'num_local_experts'"):
        open_checkpoint(hf_copy)


def test_unknown_architecture(hf_copy):
    cfg = json.loads((hf_copy / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (hf_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MxportError, match="config.json: unknown architecture.*llama"):
        open_checkpoint(hf_copy)


def test_missing_tensor(hf_copy):
    rewrite(hf_copy / "model.safetensors", lambda t: t.pop("model.layers.1.self_attn.sinks"))
    with pytest.raises(MxportError, match=r"model\.safetensors: missing tensor 'model\.layers\.1\.self_attn\.sinks' "
                                          r"\(expected BF16\[4\]"):
        open_checkpoint(hf_copy)


def test_missing_tensor_original_layout_names_the_stored_tensor(tiny_config, make_checkpoint, tmp_path):
    path = shutil.copytree(make_checkpoint(tiny_config, "original"), tmp_path / "orig")
    rewrite(path / "model.safetensors", lambda t: t.pop("block.0.mlp.mlp2_weight.scales"))
    with pytest.raises(MxportError, match=r"missing tensor 'block\.0\.mlp\.mlp2_weight\.scales' \(expected U8\[8, 64, 2\]"):
        open_checkpoint(path)


def test_unexpected_tensor(hf_copy):
    rewrite(hf_copy / "model.safetensors", lambda t: t.update(extra=np.zeros(3, np.float32)))
    with pytest.raises(MxportError, match=r"model\.safetensors: unexpected tensor 'extra' F32\[3\]"):
        open_checkpoint(hf_copy)


def test_mis_shaped_tensor(hf_copy):
    name = "model.layers.0.self_attn.k_proj.weight"
    rewrite(hf_copy / "model.safetensors", lambda t: t.update({name: t[name][:16]}))
    with pytest.raises(MxportError, match=rf"model\.safetensors: tensor '{name}' has shape \[16, 64\], expected \[32, 64\]"):
        open_checkpoint(hf_copy)


@pytest.mark.parametrize(
    "name, dtype, message",
    [
        ("model.layers.0.self_attn.sinks", np.int32, "has dtype I32, expected BF16 or F16 or F32"),
        (GATE_UP + "_scales", np.float32, "has dtype F32, expected U8"),
    ],
)
def test_wrong_dtype(hf_copy, name, dtype, message):
    rewrite(hf_copy / "model.safetensors", lambda t: t.update({name: t[name].astype(dtype)}))
    with pytest.raises(MxportError, match=rf"model\.safetensors: tensor '{name}' {message}"):
        open_checkpoint(hf_copy)


def test_float32_dense_weights_are_accepted(hf_copy):
    name = "model.layers.0.input_layernorm.weight"
    rewrite(hf_copy / "model.safetensors", lambda t: t.update({name: t[name].astype(np.float32)}))
    with open_checkpoint(hf_copy) as ckpt:
        assert ckpt.get(name).dtype == np.float32


def test_truncated_file(hf_copy):
    file = hf_copy / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(MxportError, match=r"model\.safetensors: truncated: the header describes \d+ bytes"):
        open_checkpoint(hf_copy)


def test_header_longer_than_file(hf_copy):
    file = hf_copy / "model.safetensors"
    file.write_bytes(struct.pack("<Q", 10**9) + file.read_bytes()[8:])
    with pytest.raises(MxportError, match=r"model\.safetensors: truncated or corrupt: header length 1000000000"):
        open_checkpoint(hf_copy)


def test_bad_json_header(hf_copy):
    file = hf_copy / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[8:12] = b"#!x\x00"
    file.write_bytes(bytes(data))
    with pytest.raises(MxportError, match=r"model\.safetensors: corrupt safetensors header: not valid JSON"):
        open_checkpoint(hf_copy)


def test_missing_shard(tiny_config, make_checkpoint, tmp_path):
    path = shutil.copytree(make_checkpoint(tiny_config, max_shard_bytes=60_000), tmp_path / "sharded")
    victim = sorted(path.glob("*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(MxportError, match=rf"{INDEX_FILE}: shard '{victim.name}' \(holding tensor '.+'\) is missing"):
        open_checkpoint(path)


def test_shard_tensor_not_in_index(tiny_config, make_checkpoint, tmp_path):
    path = shutil.copytree(make_checkpoint(tiny_config, max_shard_bytes=60_000), tmp_path / "sharded")
    shard = sorted(path.glob("*.safetensors"))[0]
    rewrite(shard, lambda t: t.update(stray=np.zeros(2, np.uint8)))
    with pytest.raises(MxportError, match=rf"{shard.name}: unexpected tensor 'stray' U8\[2\] \(not listed in"):
        open_checkpoint(path)


def test_no_weights_and_no_folder(tmp_path, tiny_config):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config.to_hf_dict()))
    with pytest.raises(MxportError, match=r"no \*\.safetensors files"):
        open_checkpoint(tmp_path)
    with pytest.raises(MxportError, match="nowhere: checkpoint folder not found"):
        open_checkpoint(tmp_path / "nowhere")
    with pytest.raises(MxportError, match=r"config\.json: is a file, not a checkpoint folder"):
        open_checkpoint(tmp_path / "config.json")


@pytest.mark.oracle
def test_reads_transformers_save_of_a_dequantized_model(tiny_config, make_checkpoint, tmp_path):
    """transformers 5 saves dense experts under the `_blocks` names (float, [E, in, out]) without
    quantization_config; the reader maps them to the dense names with the same numbers as our dense variant."""
    pytest.importorskip("torch")
    oracles = pytest.importorskip("oracles")
    oracles.load_transformers_gpt_oss(make_checkpoint(tiny_config)).save_pretrained(tmp_path / "saved")
    with open_checkpoint(tmp_path / "saved") as saved, open_checkpoint(make_checkpoint(tiny_config.replace(
            experts_mxfp4=False))) as dense:
        assert not saved.config.experts_mxfp4 and saved.names() == dense.names()
        for name in dense.names():
            np.testing.assert_array_equal(saved.get_f32(name), dense.get_f32(name), err_msg=name)


def test_index_lists_a_tensor_its_shard_lacks(tiny_config, make_checkpoint, tmp_path):
    path = shutil.copytree(make_checkpoint(tiny_config, max_shard_bytes=60_000), tmp_path / "sharded")
    weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
    shard = path / weight_map["model.norm.weight"]
    rewrite(shard, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(MxportError, match=rf"{shard.name}: tensor 'model.norm.weight' is listed in {INDEX_FILE} but"):
        open_checkpoint(path)


def test_bad_index(tiny_config, make_checkpoint, tmp_path):
    path = shutil.copytree(make_checkpoint(tiny_config, max_shard_bytes=60_000), tmp_path / "sharded")
    (path / INDEX_FILE).write_text('{"metadata": {}}')
    with pytest.raises(MxportError, match=rf"{INDEX_FILE}: not a valid index \(expected JSON with a 'weight_map'"):
        open_checkpoint(path)


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_get_rows_reads_a_slice_of_the_canonical_tensor(tiny_config, make_checkpoint, layout):
    """Row slices equal the rows of the whole tensor, also for q/k/v split out of the original layout's qkv."""
    with open_checkpoint(make_checkpoint(tiny_config, layout=layout)) as ckpt:
        for name in ("model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.experts.down_proj_blocks",
                     "lm_head.weight"):
            whole = ckpt.get(name)
            np.testing.assert_array_equal(ckpt.get_rows(name, 1, 3), whole[1:3], err_msg=name)
        with pytest.raises(MxportError, match=r"rows \[0, 9999\) out of range"):
            ckpt.get_rows("lm_head.weight", 0, 9999)
