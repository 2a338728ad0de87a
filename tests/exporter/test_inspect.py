"""`mxport inspect`: op histogram, custom ops, I/O, bytes by dtype, all without the external data file."""

from __future__ import annotations

import shutil

import onnx
import pytest

from mxport.cli import main as cli_main
from mxport.errors import MxportError
from mxport.exporter.export import export
from mxport.exporter.inspect import format_summary, summarize
from mxport.exporter.synth import PRESETS

CFG = PRESETS["tiny"]


@pytest.fixture(scope="module")
def export_dir(make_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect") / "export"
    export(make_checkpoint(CFG), out, progress=False)
    # inspect must never open the data file: take it away
    shutil.move(out / "model.onnx.data", out.parent / "moved.data")
    return out


def test_summary_counts_ops_io_and_bytes(export_dir):
    s = summarize(export_dir)
    L = CFG.num_hidden_layers
    assert s.ops["ai.mxport::MoEMXFP4"] == L and s.ops["ai.mxport::Attention"] == L
    assert s.ops["ai.onnx::RMSNormalization"] == 2 * L + 1
    assert s.custom_ops == ["ai.mxport::Attention", "ai.mxport::MoEMXFP4"]
    assert "ai.mxport::MoEMXFP4" in s.functions
    assert s.inputs[0] == ("input_ids", "int64", ["batch", "seq"])
    assert s.outputs[0] == ("logits", "float", ["batch", "seq", CFG.vocab_size])
    assert len(s.inputs) == 3 + 2 * L and len(s.outputs) == 1 + 2 * L
    # MXFP4 experts: E * 2I * H/32 * (16 + 1) + E * H * I/32 * (16 + 1) bytes per layer
    E, H, I = CFG.num_experts, CFG.hidden_size, CFG.intermediate_size
    assert s.bytes_by_dtype["uint8"] == L * (E * 2 * I * H // 32 * 17 + E * H * I // 32 * 17)
    V = CFG.vocab_size
    assert s.bytes_by_dtype["bfloat16"] >= 2 * (2 * V * H)  # embed + lm_head kept bf16
    assert 0 < s.external_bytes <= sum(s.bytes_by_dtype.values())
    assert s.meta["target"] == "portable"


def test_format_and_cli(export_dir, capsys):
    text = format_summary(summarize(export_dir))
    assert f"{CFG.num_hidden_layers:6d}  ai.mxport::MoEMXFP4" in text
    assert "custom ops: ai.mxport::Attention, ai.mxport::MoEMXFP4" in text
    assert "uint8" in text and "present.1.value" in text
    assert f"sliding caches=last {CFG.sliding_window - 1} slots" in text.splitlines()[0]
    assert cli_main(["inspect", str(export_dir)]) == 0
    assert capsys.readouterr().out.strip() == text


def test_missing_or_bad_model_is_an_error(tmp_path, capsys):
    with pytest.raises(MxportError, match="not found"):
        summarize(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"\xff\x00 not a model")
    with pytest.raises(MxportError, match="not a readable ONNX model"):
        summarize(tmp_path)
    assert cli_main(["inspect", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("manifest, code, message", [
    ("{broken", 2, "mxport.json: cannot read the export manifest: not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, 2, "cannot read the export manifest: not valid JSON (nested too deeply)"),
    ('{"config": {"model_type": "qwen3", "num_hidden_layers": 1000000}}', 0, "layers=1000000"),
    ('{"config": null, "window_cache": true}', 0, "caches=every slot"),
    ('{"config": {"model_type": "gpt_oss", "sliding_window": {}}, "window_cache": true}', 0, "caches=every slot"),
    ('{"window_cache": "yes"}', 2, "mxport.json: field 'window_cache' must be bool"),
])
def test_a_broken_manifest_is_one_error_or_shown_as_found(export_dir, tmp_path, capsys, manifest, code, message):
    """A manifest that is not JSON, or not the manifest's types, is one error (exit 2); a recorded config its family
    refuses is shown as found (raw values, no window): inspect is the tool for looking at broken folders."""
    folder = tmp_path / "e"
    shutil.copytree(export_dir, folder)
    (folder / "mxport.json").write_text(manifest)
    assert cli_main(["inspect", str(folder)]) == code
    captured = capsys.readouterr()
    assert message in (captured.err if code else captured.out.splitlines()[0])
    assert "Traceback" not in captured.err and len(captured.err.splitlines()) == (1 if code else 0)


def test_model_without_external_data_and_meta(tmp_path):
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    onnx.save(onnx.helper.make_model(graph), tmp_path / "model.onnx")
    s = summarize(tmp_path)
    assert s.ops == {"ai.onnx::Relu": 1} and s.custom_ops == [] and s.meta is None and s.bytes_by_dtype == {}
    assert "custom ops: none" in format_summary(s)
