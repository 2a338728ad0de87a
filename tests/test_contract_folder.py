"""The export folder contract: the typed manifest's one reader and writer, folder kinds."""

from __future__ import annotations

import json

import pytest

from mxport.contract.folder import (MANIFEST_FILE, MODEL_FILE, Manifest, folder_kind, manifest_dict, model_path,
                                    read_manifest, write_manifest)
from mxport.errors import MxportError


def test_manifest_round_trips_and_keeps_the_key_order(tmp_path):
    m = Manifest(mxport_version="0.1.0", checkpoint="/ckpt", family="qwen3", layout="hf", config={"vocab_size": 8},
                 target="cpu", experts="none", dense="int4", window_cache=True, accuracy_level=0,
                 allow_non_finite=True,
                 matrix_storage="bfloat16", opset_imports={"": 23}, inputs=("input_ids",), outputs=("logits",),
                 eos_token_ids=(1, 2), pad_token_id=None)
    write_manifest(tmp_path, m)
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert list(data)[:5] == ["mxport_version", "checkpoint", "family", "layout", "config"]
    assert "lowering" not in data and "checkpoint_experts" not in data and data["pad_token_id"] is None
    assert data["inputs"] == ["input_ids"] and data["eos_token_ids"] == [1, 2]
    assert read_manifest(tmp_path) == m
    assert read_manifest(tmp_path / MODEL_FILE) == m  # a model path reads its folder's manifest
    assert manifest_dict(read_manifest(tmp_path)) == data


def test_a_folder_without_manifest_reads_as_the_defaults(tmp_path):
    m = read_manifest(tmp_path)
    assert m == Manifest() and m.checkpoint is None and m.config is None
    assert (m.target, m.experts, m.dtype, m.dense, m.window_cache, m.accuracy_level) == (
        "portable", "mxfp4", "float32", "float32", False, 4)


def test_older_manifests_without_newer_keys_read(tmp_path):
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"checkpoint": "/c", "experts": "fp32", "unknown_key": 1}))
    m = read_manifest(tmp_path)
    assert m.checkpoint == "/c" and m.experts == "float32" and m.window_cache is False  # fp32: the older spelling


def test_bad_json_names_the_file(tmp_path):
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(MxportError, match=r"mxport\.json: cannot read the export manifest"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("[1, 2]")
    with pytest.raises(MxportError, match=r"mxport\.json: expected a JSON object, found list"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(MxportError, match=r"mxport\.json: cannot read the export manifest: not valid JSON \(nested "
                                          r"too deeply\)"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(" " * (17 << 20) + "{}")
    with pytest.raises(MxportError, match=r"mxport\.json: export manifest of 17,825,794 bytes is larger than"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("field, value, want", [
    ("window_cache", "yes", "bool"),
    ("accuracy_level", True, "int"),  # a JSON bool is not an int here
    ("accuracy_level", 4.0, "int"),
    ("config", [1], "dict"),
    ("inputs", ["input_ids", 3], "list of str"),
    ("eos_token_ids", 2, "list of int"),
    ("opset_imports", {"": "23"}, "dict of int"),
    ("experts", None, "str"),  # null only where the field may be absent (checkpoint, config, ...)
    ("allow_non_finite", "yes", "bool"),
])
def test_a_field_of_the_wrong_type_names_the_file_and_field(tmp_path, field, value, want):
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({field: value}))
    with pytest.raises(MxportError, match=rf"mxport\.json: field '{field}' must be {want}, found"):
        read_manifest(tmp_path)


def test_folder_kinds(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / MODEL_FILE).write_bytes(b"")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{}")
    (tmp_path / "c" / "model.safetensors").write_bytes(b"")
    assert folder_kind(tmp_path / "e") == "export" and folder_kind(tmp_path / "c") == "checkpoint"
    assert model_path(tmp_path / "e") == tmp_path / "e" / MODEL_FILE
    with pytest.raises(MxportError, match="neither an exported folder"):
        folder_kind(tmp_path)
    with pytest.raises(MxportError, match="no such ONNX model"):
        model_path(tmp_path / "c")
