"""Export refuses what it cannot make a sound model of, with one error naming the file, tensor or option (exit 2
from the CLI, nothing left behind): non-finite weights (unless --allow-non-finite), config sizes past the caps or
past the layers the files hold (refused before anything per-layer is built: bounded memory), safetensors headers
and JSON files that are hostile in shape, a dangling-symlink output, a full disk, a broken tokenizer.json. Scratch
folders a killed export left are removed by the next export of that output.

Checkpoints are the families' tiny presets, written here (exporter/synth.py) and damaged with safetensors' own
writer or by hand.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from mxport.cli import main as cli_main
from mxport.contract.folder import read_manifest
from mxport.errors import MxportError
from mxport.exporter import checkpoint as ckpt_mod
from mxport.exporter.checkpoint import finite_problem, open_checkpoint, read_header
from mxport.exporter.export import export
from mxport.exporter.families.base import CAPS
from mxport.exporter.synth import PRESETS, write_checkpoint
from mxport.files import temp_dir_beside

TINY = ("tiny", "gpt2-tiny", "qwen3-tiny", "qwen3-moe-tiny")
LAYERS_KEY = {"gpt2-tiny": "n_layer"}  # config.json's spelling of the layer count where it is not HF's


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refusals")
    return {name: write_checkpoint(root / name, PRESETS[name]) for name in TINY}


def copy(src: Path, tmp_path: Path, name: str = "ckpt") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def cli(args: list[str], capsys) -> tuple[int, list[str]]:
    """mxport ARGS in this process: exit code and stderr lines (a traceback would raise out of it)."""
    code = cli_main([*args])
    return code, capsys.readouterr().err.strip().splitlines()


def change_tensor(ckpt: Path, name: str, change) -> None:
    """Rewrite the safetensors file holding `name` with change(array) in its place (safetensors' own writer)."""
    file = next(f for f in sorted(ckpt.glob("*.safetensors")) if name in read_header(f))
    tensors = load_file(str(file))
    tensors[name] = change(tensors[name].copy())
    save_file(tensors, str(file), metadata={"format": "pt"})


def set_value(index: tuple, value: float):
    def change(a: np.ndarray) -> np.ndarray:
        a[index] = value
        return a
    return change


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- non-finite weights ------------------------------------------------------------------------------------------
def test_a_nan_weight_is_refused_naming_the_tensor(pristine, tmp_path, capsys):
    ckpt = copy(pristine["qwen3-tiny"], tmp_path)
    change_tensor(ckpt, "model.layers.1.mlp.down_proj.weight", set_value((3, 7), np.nan))
    out = tmp_path / "out"
    code, err = cli(["export", str(ckpt), "-o", str(out), "--no-progress"], capsys)
    assert code == 2 and len(err) == 1, err
    assert "model.safetensors: tensor 'model.layers.1.mlp.down_proj.weight' holds 1 non-finite value " \
           "(first: NaN at [3, 7])" in err[0] and "--allow-non-finite" in err[0]
    assert leftovers(tmp_path) == ["ckpt"]  # no output, no temporary folder

    code, err = cli(["export", str(ckpt), "-o", str(out), "--no-progress", "--allow-non-finite"], capsys)
    assert code == 0, err
    assert read_manifest(out).allow_non_finite is True
    model = onnx.load(str(out / "model.onnx"))  # the NaN was exported as asked: in the data file, where it was
    weight = next(t for t in model.graph.initializer if t.name == "model.layers.1.mlp.down_proj.weight")
    values = onnx.numpy_helper.to_array(weight, base_dir=str(out))
    assert np.isnan(values.astype(np.float32)).sum() == 1  # stored [in, out]: transposed

    # ... and verify, which a NaN never satisfies, fails naming the non-finite output (end to end)
    assert cli_main(["verify", str(out), "--checkpoint", str(ckpt)]) == 1
    report = capsys.readouterr().out
    assert any(line.startswith("non-finite outputs") and "logits" in line for line in report.splitlines()), report
    assert report.rstrip().endswith("FAIL")
    assert np.isnan(float(values.astype(np.float32)[7, 3]))


@pytest.mark.parametrize("preset, stored, canonical, index, value, want", [
    ("gpt2-tiny", "transformer.wte.weight", "transformer.wte.weight", (5, 1), np.inf, "inf at [5, 1]"),
    ("tiny", "model.layers.0.self_attn.sinks", "model.layers.0.self_attn.sinks", (2,), -np.inf, "-inf at [2]"),
    # a per-expert file of Qwen3-MoE: the error names the canonical stacked tensor and the expert's row
    ("qwen3-moe-tiny", "model.layers.2.mlp.experts.5.down_proj.weight", "model.layers.2.mlp.experts.down_proj",
     (4, 9), np.nan, "NaN at [5, 4, 9]"),
])
def test_every_family_refuses_non_finite_values(pristine, tmp_path, preset, stored, canonical, index, value, want):
    ckpt = copy(pristine[preset], tmp_path)
    change_tensor(ckpt, stored, set_value(index, value))
    with pytest.raises(MxportError, match=re.escape(f"tensor '{canonical}' holds 1 non-finite value (first: {want})")):
        export(ckpt, tmp_path / "out", progress=False)
    assert leftovers(tmp_path) == ["ckpt"]


def test_allowed_non_finite_experts_that_mxfp4_cannot_encode_are_one_error(pristine, tmp_path):
    """--allow-non-finite keeps NaN as stored; encoding float experts to MXFP4 (E2M1 has no NaN) cannot."""
    ckpt = copy(pristine["qwen3-moe-tiny"], tmp_path)
    change_tensor(ckpt, "model.layers.0.mlp.experts.3.up_proj.weight", set_value((2, 2), np.nan))
    with pytest.raises(MxportError, match=r"experts.gate_up_proj: cannot encode to MXFP4 \(encode: values must be "
                                          r"finite .*use --experts float32"):
        export(ckpt, tmp_path / "out", progress=False, experts="mxfp4", allow_non_finite=True)
    assert leftovers(tmp_path) == ["ckpt"]
    export(ckpt, tmp_path / "out", progress=False, allow_non_finite=True)  # float experts as stored: exported


def test_a_nan_mxfp4_scale_byte_is_refused(pristine, tmp_path):
    ckpt = copy(pristine["tiny"], tmp_path)
    change_tensor(ckpt, "model.layers.1.mlp.experts.down_proj_scales", set_value((3, 2, 0), 0xFF))
    with pytest.raises(MxportError, match=r"'model.layers.1.mlp.experts.down_proj_scales' holds 1 non-finite "
                                          r"value \(first: NaN scale byte 0xFF at \[3, 2, 0\]\)"):
        export(ckpt, tmp_path / "out", progress=False)
    # the original/ layout spells its scales `.scales`
    orig = write_checkpoint(tmp_path / "orig", PRESETS["tiny"], layout="original")
    change_tensor(orig, "block.0.mlp.mlp1_weight.scales", set_value((0, 0, 1), 0xFF))
    with pytest.raises(MxportError, match=r"non-finite value \(first: NaN scale byte 0xFF"):
        export(orig, tmp_path / "out2", progress=False)


def test_the_check_reads_nothing_twice(pristine, tmp_path, monkeypatch):
    """The check rides on the reads the export makes anyway: the same reads with and without it (no second pass
    over the model), and a refusal comes mid-save, after tensors were already written."""
    reads: list[str] = []
    real_get, real_rows = ckpt_mod.Checkpoint.get, ckpt_mod.Checkpoint.get_rows
    monkeypatch.setattr(ckpt_mod.Checkpoint, "get", lambda self, n: reads.append(n) or real_get(self, n))
    monkeypatch.setattr(ckpt_mod.Checkpoint, "get_rows",
                        lambda self, n, a, b: reads.append(n) or real_rows(self, n, a, b))
    ckpt = pristine["qwen3-tiny"]
    export(ckpt, tmp_path / "checked", progress=False)
    checked, reads[:] = list(reads), []
    export(ckpt, tmp_path / "unchecked", progress=False, allow_non_finite=True)
    assert checked == reads and len(checked) > 10

    bad = copy(ckpt, tmp_path, "bad")
    change_tensor(bad, "model.norm.weight", set_value((0,), np.nan))
    written = []
    with pytest.raises(MxportError, match="model.norm.weight"):
        export(bad, tmp_path / "out", progress=lambda done, total, i, n: written.append(i))
    assert written and max(written) > 1  # tensors before it were streamed out already


def test_finite_check_works_a_chunk_at_a_time(monkeypatch):
    monkeypatch.setattr(ckpt_mod, "CHECK_CHUNK", 1000)
    a = np.zeros((70, 64), ml_dtypes.bfloat16)
    a[69, 63], a[40, 2] = np.inf, np.nan  # in different chunks
    assert finite_problem(a, "w") == "holds 2 non-finite values (first: NaN at [40, 2])"
    assert finite_problem(a[60:], "w", row=60) == "holds 1 non-finite value (first: inf at [69, 63])"
    for dtype in (np.float16, np.float32, np.float64):
        b = np.full((3, 5), 65504, dtype)
        assert finite_problem(b, "w") is None  # float16's largest finite value is finite
        b[1, 1] = -np.inf
        assert finite_problem(b, "w") == "holds 1 non-finite value (first: -inf at [1, 1])"
    scales = np.full((4, 4), 0xFE, np.uint8)
    assert finite_problem(scales, "x_scales") is None
    assert finite_problem(np.full(8, 0xFF, np.uint8), "x_blocks") is None  # E2M1 codes are all finite


# ---- config sizes -------------------------------------------------------------------------------------------------
def _with_config(ckpt: Path, **changes) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        config.pop(key)
    (ckpt / "config.json").write_text(json.dumps(config))


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("preset", TINY)
@pytest.mark.parametrize("layers", [10**5, 10**6])
def test_a_huge_layer_count_is_refused_before_tables_are_built(pristine, tmp_path, preset, layers):
    ckpt = copy(pristine[preset], tmp_path)
    key = LAYERS_KEY.get(preset, "num_hidden_layers")
    _with_config(ckpt, **{key: layers, "layer_types": None})

    def open_it():
        with pytest.raises(MxportError, match=rf"config.json: .*{key}={layers} must be .*1,?024"):
            open_checkpoint(ckpt)

    assert _peak_bytes(open_it) < 20 << 20  # (before: gigabytes of per-layer tables, minutes)


@pytest.mark.parametrize("preset", TINY)
def test_a_layer_count_the_files_do_not_hold_is_refused_first(pristine, tmp_path, preset):
    ckpt = copy(pristine[preset], tmp_path)
    key = LAYERS_KEY.get(preset, "num_hidden_layers")
    held = PRESETS[preset].num_hidden_layers
    _with_config(ckpt, **{key: CAPS["num_hidden_layers"], "layer_types": None})
    built = []
    real = ckpt_mod.Checkpoint.__init__
    ckpt_mod.Checkpoint.__init__ = lambda self, *a: built.append(1) or real(self, *a)
    try:
        with pytest.raises(MxportError, match=rf"config.json: num_hidden_layers=1024, but the checkpoint's "
                                              rf"tensors \(model.safetensors\) hold {held} layers"):
            open_checkpoint(ckpt)
    finally:
        ckpt_mod.Checkpoint.__init__ = real
    assert built == []  # no Checkpoint, no per-layer tables


@pytest.mark.parametrize("preset, changes, message", [
    ("qwen3-tiny", {"vocab_size": 1 << 23}, "vocab_size=8388608 must be a positive integer (at most 4,194,304)"),
    ("qwen3-tiny", {"hidden_size": 1 << 20}, "hidden_size=1048576 must be"),
    ("qwen3-tiny", {"intermediate_size": 1 << 30}, "intermediate_size=1073741824 must be"),
    ("qwen3-tiny", {"eos_token_id": list(range(2000))}, "'eos_token_id' lists 2000 token ids (at most 1024)"),
    ("tiny", {"num_local_experts": 5000}, "num_experts=5000 must be a positive integer (at most 4,096)"),
    ("qwen3-moe-tiny", {"num_experts": 4096, "num_hidden_layers": 100},
     "num_hidden_layers x num_experts = 100 x 4096 = 409,600 experts (at most 65,536)"),
    ("qwen3-moe-tiny", {"mlp_only_layers": list(range(2000))}, "'mlp_only_layers' should be a list of at most 1024"),
    ("gpt2-tiny", {"n_positions": 1 << 30}, "n_positions=1073741824 must be an integer >= 0 (at most 16,777,216)"),
])
def test_sizes_past_the_caps_are_named(pristine, tmp_path, preset, changes, message):
    ckpt = copy(pristine[preset], tmp_path)
    _with_config(ckpt, **changes)
    with pytest.raises(MxportError, match="config.json: ") as info:
        open_checkpoint(ckpt)
    assert message in str(info.value)


def test_every_preset_is_within_the_caps():
    """The caps are realistic: the published shapes (gpt-oss-120b, Qwen3-30B-A3B, ...) sit well inside them."""
    for name, cfg in PRESETS.items():
        assert cfg.size_problems() == [], name
        assert cfg.num_hidden_layers * 4 <= CAPS["num_hidden_layers"] and cfg.vocab_size * 4 <= CAPS["vocab_size"]


def test_a_config_file_past_its_size_limit_is_refused(pristine, tmp_path, capsys):
    ckpt = copy(pristine["qwen3-tiny"], tmp_path)
    (ckpt / "config.json").write_text(" " * (5 << 20) + "{}")
    code, err = cli(["export", str(ckpt), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1 and "config.json: config file of 5,242,882 bytes is larger than" in err[0]


# ---- JSON nested too deeply and hostile safetensors headers --------------------------------------------------------
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("where", ["whole", "inside"])
def test_a_deeply_nested_config_is_one_error(pristine, tmp_path, capsys, where):
    ckpt = copy(pristine["qwen3-tiny"], tmp_path)
    text = (ckpt / "config.json").read_text()
    (ckpt / "config.json").write_text(DEEP if where == "whole" else text.rstrip()[:-1] + f', "x": {DEEP}}}')
    code, err = cli(["export", str(ckpt), "-o", str(tmp_path / "out")], capsys)
    assert (code, err) == (2, [f"mxport export: error: {ckpt}/config.json: not valid JSON (nested too deeply)"])


def _write_header(file: Path, header: bytes | dict, data: bytes) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _split(file: Path) -> tuple[dict, bytes]:
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


@pytest.mark.parametrize("damage, message", [
    (lambda h, k: DEEP.encode(), "corrupt safetensors header: not valid JSON (nested too deeply)"),
    (lambda h, k: h[k].update(data_offsets=["0", "12"]), "data_offsets should be two non-negative integers, "
                                                         "found ['0', '12']"),
    (lambda h, k: h[k].update(data_offsets=[0]), "data_offsets should be two non-negative integers"),
    (lambda h, k: h[k].update(shape=[True, 2]), "shape should be a list of at most 8 non-negative integers"),
    (lambda h, k: h[k].update(shape=[2**62, 2**62]), "needs"),  # Python ints: no overflow into a small size
    (lambda h, k: h[k].update(dtype=["F32"]), "dtype should be a string"),
    (lambda h, k: h.update({k: [1, 2]}), "expected an object with dtype, shape and data_offsets"),
    (lambda h, k: h.update(__metadata__={"format": 1}), "__metadata__ should map strings to strings"),
])
def test_hostile_header_entries_are_one_error(pristine, tmp_path, capsys, damage, message):
    ckpt = copy(pristine["qwen3-tiny"], tmp_path)
    file = ckpt / "model.safetensors"
    header, data = _split(file)
    key = sorted(k for k in header if k != "__metadata__")[0]
    header = damage(header, key) or header
    _write_header(file, header, data)
    code, err = cli(["export", str(ckpt), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1 and f"{file}: " in err[0] and message in err[0], err


def test_header_data_must_be_contiguous_as_safetensors_requires(pristine, tmp_path):
    ckpt = copy(pristine["qwen3-tiny"], tmp_path)
    file = ckpt / "model.safetensors"
    header, data = _split(file)
    second = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")[1][1]
    begin, end = header[second]["data_offsets"]
    header[second]["data_offsets"] = [0, end - begin]
    _write_header(file, header, data)  # two tensors at byte 0: overlapping
    with pytest.raises(MxportError, match=r"starts at byte \d+ of the data, expected \d+ \(tensors must follow"):
        open_checkpoint(ckpt)
    header, _ = _split(pristine["qwen3-tiny"] / "model.safetensors")
    _write_header(file, header, data + b"extra")
    with pytest.raises(MxportError, match="corrupt: 5 bytes after the last tensor's data"):
        open_checkpoint(ckpt)


def test_a_header_past_the_format_limit_is_refused_unread(pristine, tmp_path):
    ckpt = copy(pristine["qwen3-tiny"], tmp_path)
    file = ckpt / "model.safetensors"
    with open(file, "wb") as f:  # a sparse file: the claimed header length fits in it
        f.write(struct.pack("<Q", 150_000_000))
        f.truncate(8 + 150_000_000)
    with pytest.raises(MxportError, match="150,000,000 bytes long, more than the format's limit of 100,000,000"):
        read_header(file)


ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=4),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                    max_size=3), max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_header_fields_are_read_or_refused(pristine, tmp_path, data):
    """Any JSON value in any field of any entry: the reader opens the checkpoint or raises MxportError."""
    file = tmp_path / "model.safetensors"
    header, body = _split(pristine["qwen3-tiny"] / "model.safetensors")
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(header)))
        if key == "__metadata__" or data.draw(st.booleans()):
            header[key] = data.draw(ANY_JSON)
        elif isinstance(header[key], dict):
            header[key][data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = data.draw(ANY_JSON)
    _write_header(file, header, body)
    try:
        read_header(file)
    except MxportError as exc:
        assert str(exc).startswith(str(file))


# ---- outputs: symbolic links, a full disk, stale scratch folders ----------------------------------------------
def test_a_dangling_symlink_output_is_one_error(pristine, tmp_path, capsys):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere" / "deeper")
    code, err = cli(["export", str(pristine["qwen3-tiny"]), "-o", str(link), "--no-progress"], capsys)
    assert code == 2 and len(err) == 1 and "is a symbolic link to" in err[0] and "which does not exist" in err[0]
    assert link.is_symlink() and leftovers(tmp_path) == ["out"]
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    code, err = cli(["export", str(pristine["qwen3-tiny"]), "-o", str(loop), "--no-progress"], capsys)
    assert code == 2 and len(err) == 1 and "(or loops)" in err[0]


def test_a_full_disk_is_one_line_and_leaves_nothing(pristine, tmp_path, capsys, monkeypatch):
    """The writer fails with ENOSPC after some tensors reached the data file: exit 2, one line, no temporary
    folder, the previous output untouched."""
    import onnx_ir

    real_save = onnx_ir.save

    def full_disk_save(model, path, **kwargs):
        def callback(tensor, info):
            if info.index == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) + ".data")
        return real_save(model, path, **{**kwargs, "callback": callback})

    out = tmp_path / "out"
    export(pristine["qwen3-tiny"], out, progress=False)
    before = leftovers(out)
    monkeypatch.setattr(onnx_ir, "save", full_disk_save)
    code, err = cli(["export", str(pristine["qwen3-tiny"]), "-o", str(out), "--no-progress", "--force"], capsys)
    assert code == 2 and len(err) == 1, err
    assert "no space left on the device of" in err[0] and "the partial export was removed" in err[0]
    assert leftovers(tmp_path) == ["out"] and leftovers(out) == before


def test_stale_scratch_folders_of_a_killed_export_are_removed(pristine, tmp_path):
    out = tmp_path / "out"
    # a killed export: a process that made its scratch folder, wrote into it and died without cleaning up
    code = ("import os, sys; from pathlib import Path; from mxport.files import temp_dir_beside; "
            "t = temp_dir_beside(Path(sys.argv[1])); (t / 'model.onnx.data').write_bytes(b'x' * 1000); os._exit(9)")
    for _ in range(2):
        assert subprocess.run([sys.executable, "-c", code, str(out)]).returncode == 9
    stale = sorted(p.name for p in tmp_path.glob(".out.tmp-*"))
    assert len(stale) == 2
    live = temp_dir_beside(out)  # this process's own (a concurrent export) stays
    (tmp_path / ".out.tmp-nopid").mkdir()  # not named by a process: not ours to judge
    (tmp_path / ".other.tmp-1-x").mkdir()  # another output's
    export(pristine["qwen3-tiny"], out, progress=False)
    assert leftovers(tmp_path) == sorted([".other.tmp-1-x", ".out.tmp-nopid", live.name, "out"])


# ---- tokenizer files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    ("not json", "tokenizer.json: broken tokenizer file: not valid JSON"),
    ("[1, 2]", "tokenizer.json: broken tokenizer file: expected a JSON object, found list"),
    ('{"model": 3}', "tokenizer.json: the tokenizers library cannot load it"),
    (DEEP, "tokenizer.json: broken tokenizer file: not valid JSON (nested too deeply)"),
])
def test_a_broken_tokenizer_is_refused_at_export(pristine, tmp_path, capsys, content, message):
    ckpt = copy(pristine["qwen3-tiny"], tmp_path)
    (ckpt / "tokenizer.json").write_text(content)
    code, err = cli(["export", str(ckpt), "-o", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert leftovers(tmp_path) == ["ckpt"]


def test_a_broken_tokenizer_config_is_refused_too(pristine, tmp_path):
    ckpt = copy(pristine["qwen3-tiny"], tmp_path)
    (ckpt / "tokenizer_config.json").write_text("{")
    with pytest.raises(MxportError, match="tokenizer_config.json: broken tokenizer file: not valid JSON"):
        export(ckpt, tmp_path / "out", progress=False)


def test_the_command_line_gives_exit_2_and_one_line(pristine, tmp_path):
    """The real `python -m mxport` process, as a user runs it."""
    ckpt = copy(pristine["qwen3-tiny"], tmp_path)
    (ckpt / "config.json").write_text(DEEP)
    r = subprocess.run([sys.executable, "-m", "mxport", "export", str(ckpt), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
