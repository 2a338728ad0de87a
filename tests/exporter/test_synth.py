"""Synthetic checkpoints: determinism, presets, --list, atomic output, and loading in transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mxport import cli
from mxport.errors import MxportError
from mxport.exporter import synth
from mxport.exporter.checkpoint import open_checkpoint, read_header
from mxport.exporter.synth import PRESETS, SafetensorsWriter, stored_plan, write_checkpoint
from mxport.ops import mxfp4


def files_bytes(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_deterministic_from_seed(tiny_config, make_checkpoint, tmp_path):
    again = write_checkpoint(tmp_path / "again", tiny_config, seed=0)
    assert files_bytes(again) == files_bytes(make_checkpoint(tiny_config))
    other = write_checkpoint(tmp_path / "other", tiny_config, seed=1)
    with open_checkpoint(again) as a, open_checkpoint(other) as b:
        for name in a.names():  # every tensor depends on the seed
            assert a.get(name).tobytes() != b.get(name).tobytes(), name


def test_values_are_realistic(tiny_config, make_checkpoint):
    H = tiny_config.hidden_size
    with open_checkpoint(make_checkpoint(tiny_config)) as ckpt:
        norm = ckpt.get_f32("model.layers.0.input_layernorm.weight")
        assert 0.9 < norm.mean() < 1.1 and 0.05 < norm.std() < 0.2
        q = ckpt.get_f32("model.layers.1.self_attn.q_proj.weight")
        assert q.std() == pytest.approx(1 / np.sqrt(H), rel=0.1)
        assert abs(ckpt.get_f32("model.embed_tokens.weight").std() - 0.02) < 0.002
        assert np.abs(ckpt.get_f32("model.layers.0.self_attn.sinks")).max() < 3
        name = "model.layers.0.mlp.experts.gate_up_proj"
        w = mxfp4.decode(ckpt.get(name + "_blocks"), ckpt.get(name + "_scales"))
        assert np.isfinite(w).all() and w.std() == pytest.approx(1 / np.sqrt(H), rel=0.15)
        assert len(np.unique(np.abs(w))) > 8  # many scales in use, not a degenerate code book


def test_writer_output_is_valid_safetensors(tmp_path):
    from safetensors.numpy import load_file

    a = np.arange(6, dtype=np.float32).reshape(2, 3).astype(mxfp4.BFLOAT16)
    b = np.arange(40, dtype=np.uint8).reshape(5, 8)
    w = SafetensorsWriter(tmp_path / "x.safetensors", [("a", a.shape, a.dtype), ("b", b.shape, b.dtype)])
    w.put("b", b[2:], offset=16)  # any order, in pieces
    w.put("a", a)
    w.put("b", b[:2])
    w.close()
    loaded = load_file(str(tmp_path / "x.safetensors"))
    assert loaded["a"].tobytes() == a.tobytes() and loaded["a"].dtype == a.dtype
    np.testing.assert_array_equal(loaded["b"], b)
    assert (8 + struct_len(tmp_path / "x.safetensors")) % 8 == 0  # header padded to 8 bytes


def struct_len(path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


def test_writer_detects_incomplete_tensors(tmp_path):
    w = SafetensorsWriter(tmp_path / "x.safetensors", [("a", (4,), np.dtype(np.uint8))])
    w.put("a", np.zeros(2, np.uint8))
    with pytest.raises(RuntimeError, match=r"not completely written.*'a': \(2, 4\)"):
        w.close()


@pytest.mark.parametrize(
    "preset, total, tensors, files",
    [
        # the published repos' model.safetensors.index.json total_size: 13,761,264,768 and 65,248,815,744
        ("gpt-oss-20b", 13_761_264_768, 459, 3),
        ("gpt-oss-120b", 65_248_815_744, 687, 15),
        ("mini", 603_007_744, 155, 1),
    ],
)
def test_list_prints_the_table_without_writing(preset, total, tensors, files, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["synth", "--preset", preset, "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "shape", "dtype", "bytes"] and len(out) == tensors + 2
    assert f"total: {tensors} tensors, {total:,} bytes" in out[-1] and f"in {files} file(s)" in out[-1]
    row = next(line for line in out if line.startswith("model.layers.0.mlp.experts.gate_up_proj_blocks"))
    cfg = PRESETS[preset]
    E, H, I = cfg.num_experts, cfg.hidden_size, cfg.intermediate_size
    assert row.split()[-2:] == ["U8", f"{E * 2 * I * H // 2:,}"]
    assert list(tmp_path.iterdir()) == []


def test_list_original_layout_counts_fused_qkv(capsys):
    assert cli.main(["synth", "--preset", "tiny", "--layout", "original", "--list"]) == 0
    out = capsys.readouterr().out
    assert "block.0.attn.qkv.weight" in out and "q_proj" not in out and "total: 33 tensors" in out


def test_cli_writes_and_refuses_non_empty_output(tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert cli.main(["synth", "--preset", "tiny", "--layout", "original", "-o", str(out), "--seed", "3"]) == 0
    assert "wrote tiny (original layout, seed 3)" in capsys.readouterr().out
    before = files_bytes(out)
    assert cli.main(["synth", "--preset", "tiny", "-o", str(out)]) == 2
    assert "folder exists and is not empty" in capsys.readouterr().err
    assert files_bytes(out) == before
    assert cli.main(["synth", "--preset", "tiny", "-o", str(out), "--force"]) == 0
    assert open_checkpoint(out).layout == "hf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folders left behind


def test_failed_write_leaves_nothing(tiny_config, tmp_path, monkeypatch):
    def boom(put, cfg, layout, seed):
        put("model.embed_tokens.weight", np.zeros(4, mxfp4.BFLOAT16), 0)
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_fill", boom)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path / "ckpt", tiny_config)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_checkpoint(tiny_config, make_checkpoint, tmp_path, monkeypatch):
    import shutil

    out = shutil.copytree(make_checkpoint(tiny_config), tmp_path / "ckpt")
    before = files_bytes(out)
    monkeypatch.setattr(synth, "_fill", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(out, tiny_config, seed=5, overwrite=True)
    assert files_bytes(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_bad_options(tmp_path, capsys):
    assert cli.main(["synth", "--preset", "tiny", "--layout", "original", "--dense-experts", "--list"]) == 2
    assert "original layout stores MXFP4 experts only" in capsys.readouterr().err
    assert cli.main(["synth", "--preset", "tiny"]) == 2
    assert "-o/--output is required" in capsys.readouterr().err
    with pytest.raises(MxportError, match="layout 'gguf' is not supported"):
        stored_plan(PRESETS["tiny"], "gguf")


def test_hf_config_matches_published_keys(tiny_config, make_checkpoint):
    d = json.loads((make_checkpoint(tiny_config) / "config.json").read_text())
    assert d["architectures"] == ["GptOssForCausalLM"] and d["quantization_config"]["quant_method"] == "mxfp4"
    header = read_header(make_checkpoint(tiny_config) / "model.safetensors")
    assert header["model.layers.0.mlp.experts.down_proj_blocks"].shape == (8, 64, 2, 16)


# ---- the transformers oracle ----------------------------------------------------------------------------------------
@pytest.mark.oracle
def test_loads_in_transformers_with_our_expert_weights(tiny_config, make_checkpoint):
    torch = pytest.importorskip("torch")
    oracles = pytest.importorskip("oracles")
    path = make_checkpoint(tiny_config)
    model = oracles.load_transformers_gpt_oss(path)
    state = model.state_dict()
    with open_checkpoint(path) as ckpt:
        for i in range(tiny_config.num_hidden_layers):
            for proj in ("gate_up_proj", "down_proj"):
                name = f"model.layers.{i}.mlp.experts.{proj}"
                ours = mxfp4.decode(ckpt.get(name + "_blocks"), ckpt.get(name + "_scales"))  # [E, out, in]
                np.testing.assert_array_equal(state[name].numpy(), ours.transpose(0, 2, 1))
        for name in ("model.layers.1.self_attn.sinks", "model.layers.0.self_attn.k_proj.weight", "lm_head.weight"):
            np.testing.assert_array_equal(state[name].numpy(), ckpt.get_f32(name))
    with torch.no_grad():
        logits = model(torch.arange(1, 13)[None]).logits
    assert logits.shape == (1, 12, tiny_config.vocab_size) and torch.isfinite(logits).all()
    assert logits.std() > 0.05  # a non-degenerate model: tokens get different scores

    dense = oracles.load_transformers_gpt_oss(make_checkpoint(tiny_config.replace(experts_mxfp4=False)))
    with torch.no_grad():
        torch.testing.assert_close(dense(torch.arange(1, 13)[None]).logits, logits, rtol=0, atol=0)


@pytest.mark.oracle
@pytest.mark.parametrize("preset", ["tiny", "mini", "gpt-oss-20b", "gpt-oss-120b"])
def test_preset_shapes_match_transformers_model(preset):
    """transformers builds the preset's model on the meta device (no memory): same tensors, same shapes."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from mxport.exporter.checkpoint import expected_tensors

    cfg = PRESETS[preset]
    hf_config = transformers.GptOssConfig(**{k: v for k, v in cfg.to_hf_dict().items() if k != "quantization_config"})
    with torch.device("meta"):
        model = transformers.GptOssForCausalLM(hf_config)
    theirs = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    ours = {e.name: e.shape for e in expected_tensors(cfg.replace(experts_mxfp4=False))}
    assert theirs == ours
