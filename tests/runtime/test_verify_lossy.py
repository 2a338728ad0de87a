"""`mxport verify` means one thing: the export computes what it claims.

A lossy export (`--experts mxfp4` on float experts, `--experts int4|int8`, `--dense int4|q4`) PASSes against the
NumPy reference on its own quantized numbers with the float32 tolerances and prints its quantization error beside
it; a flipped weight byte in model.onnx.data FAILs; the error fails only against a budget the user gives; a NaN
weight (in the export and the checkpoint alike) FAILs, naming the non-finite output and the first layer.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest

from mxport.cli import main
from mxport.contract import io
from mxport.exporter.export import export
from mxport.exporter.synth import PRESETS
from mxport.runtime.oracle.model import ReferenceModel
from mxport.runtime.oracle.quantized import Quantization, Rounding, int8_blocks

QUICK = ["--prompts", "2", "--decode-steps", "2"]
OWN_NUMBERS = "against the NumPy reference on the export's own quantized numbers"


@pytest.fixture(scope="module")
def checkpoints(make_checkpoint):
    return {name: make_checkpoint(PRESETS[preset]) for name, preset in
            (("gpt_oss", "tiny"), ("qwen3", "qwen3-tiny"), ("qwen3_moe", "qwen3-moe-tiny"), ("gpt2", "gpt2-tiny"))}


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("lossy")
    made: dict[str, Path] = {}

    def make(family: str, **options) -> Path:
        key = family + "-" + "-".join(f"{k}={v}" for k, v in sorted(options.items()))
        if key not in made:
            made[key] = export(checkpoints[family], root / key.replace("=", "_"), progress=False, **options)
        return made[key]

    return make


LOSSY = [
    ("qwen3_moe", {"experts": "mxfp4"}, "experts MXFP4-encoded as at export"),
    ("qwen3_moe", {"target": "cpu", "experts": "int4"}, "experts quantized to int4"),
    ("qwen3_moe", {"target": "cpu", "experts": "int8"}, "experts quantized to int8"),
    ("gpt_oss", {"target": "cpu", "experts": "int4"}, "experts quantized to int4"),
    ("gpt_oss", {"target": "cpu", "experts": "int8"}, "experts in QMoE's 8 bits, exactly the stored MXFP4 values"),
    ("qwen3", {"target": "cpu", "dense": "int8"}, "dense matrices quantized to int8"),
    ("gpt_oss", {"target": "cpu", "experts": "mxfp4", "dense": "int4"}, "dense matrices quantized to int4"),
    ("qwen3", {"target": "cpu", "dense": "int4"}, "dense matrices quantized to int4"),
    ("qwen3", {"target": "cpu", "dense": "int4", "accuracy_level": 0}, "float32 activations (accuracy_level 0)"),
    ("qwen3", {"target": "cpu", "dense": "q4"}, "LinearQ4's 4-bit super-blocks"),
    ("gpt_oss", {"target": "cpu", "experts": "mxfp4", "dense": "q4"}, "LinearQ4's 4-bit super-blocks"),
    ("gpt2", {"target": "cpu", "dense": "int4"}, "dense matrices quantized to int4"),  # Conv1D [in, out], tied head
    ("gpt2", {"target": "cpu", "dense": "q4"}, "LinearQ4's 4-bit super-blocks"),
]


@pytest.mark.parametrize("family,options,what", LOSSY,
                         ids=[f"{f}-{'-'.join(map(str, o.values()))}" for f, o, _ in LOSSY])
def test_verify_passes_lossy_exports_on_their_own_numbers(exports, family, options, what, tmp_path, capsys):
    out = exports(family, **options)
    assert main(["verify", str(out), *QUICK, "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    checked = next(line for line in text.splitlines() if line.startswith("checked "))
    assert OWN_NUMBERS in checked and what in checked and "float32 tolerances" in checked, checked
    assert "rel<=0.0001 top1>=1" in text  # the exact exports' tolerance, not a looser one
    assert "quantization error (lossy, against the checkpoint as stored" in text, text
    report = json.loads((tmp_path / "r.json").read_text())
    error = report["quantization_error"]
    assert report["passed"] and error["passed"] and error["budget"] is None
    assert error["kl_mean"] > 0 and error["rel"] > 1e-3  # really lossy: the quantization shows against the checkpoint
    logits = next(r for r in report["summary"] if r["name"] == "logits")
    assert logits["rel"] < 1e-5, logits  # the kernels compute the export's numbers to float32 rounding


def _flip_byte(folder: Path, initializer_suffix: str, at: int = 8) -> str:
    """XOR a byte of the first initializer whose name ends with `initializer_suffix`; returns its name."""
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for init in model.graph.initializer:
        if init.name.endswith(initializer_suffix):
            info = {e.key: e.value for e in init.external_data}
            with open(folder / info["location"], "r+b") as f:
                f.seek(int(info["offset"]) + at)
                byte = f.read(1)[0]
                f.seek(int(info["offset"]) + at)
                f.write(bytes([byte ^ 0x5A]))
            return init.name
    raise AssertionError(f"no initializer *{initializer_suffix} in {folder}")


# one flipped byte per lossy mode: (family, export options, initializer name suffix, byte offset in it)
FLIPS = [
    ("qwen3", {"target": "cpu", "dense": "q4"}, ".q4", 8),  # a LinearQ4 row's first nibble byte (values 0 and 32)
    ("qwen3", {"target": "cpu", "dense": "int4"}, ".q4", 8),  # a MatMulNBits row's values 16 and 17
    ("qwen3", {"target": "cpu", "dense": "int8"}, ".q8", 8),
    ("gpt_oss", {"target": "cpu", "experts": "int4"}, ".fc1_q4", 8),  # expert 0's first fc1 row
    ("gpt_oss", {"target": "cpu", "experts": "int8"}, ".fc1_q8", 8),
    ("qwen3_moe", {"experts": "mxfp4"}, "gate_up_proj_blocks", 8),  # float experts encoded to MXFP4 at export
    ("gpt_oss", {"target": "cpu", "experts": "float32", "dtype": "float16"}, "qkv.weight", 9),  # a float16's top byte
]


@pytest.mark.parametrize("family,options,suffix,at", FLIPS,
                         ids=[f"{f}-{'-'.join(map(str, o.values()))}" for f, o, _, _ in FLIPS])
def test_verify_fails_a_flipped_byte_in_a_lossy_export(exports, family, options, suffix, at, tmp_path, capsys):
    good = exports(family, **options)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    name = _flip_byte(bad, suffix, at)
    assert main(["verify", str(bad), *QUICK]) == 1, name
    text = capsys.readouterr().out
    assert OWN_NUMBERS in text and "first failing layer: " in text and text.rstrip().endswith("FAIL"), text


# The inputs of the matrix products each family's graph names as the contract does (io.LAYER_TAPS): verify reads
# them from an export that quantizes activations and judges each product on them.
TAPS = {
    "gpt_oss": (io.INPUT_NORM, io.ATTENTION_OUT, io.POST_ATTN_NORM),
    "qwen3": (io.INPUT_NORM, io.ATTENTION_OUT, io.POST_ATTN_NORM, io.MLP_GATED),
    "gpt2": (io.INPUT_NORM, io.ATTENTION_OUT, io.POST_ATTN_NORM, io.MLP_ACT),
}
TAPPED = [("gpt_oss", {"target": "cpu", "experts": "int4"}), ("qwen3", {"target": "cpu", "dense": "q4"}),
          ("gpt2", {"target": "cpu", "dense": "int4"})]


@pytest.mark.parametrize("family,options", TAPPED, ids=[f for f, _ in TAPPED])
def test_int8_activations_judge_each_product_on_the_exports_own_input(checkpoints, exports, family, options,
                                                                      tmp_path, capsys):
    out = exports(family, **options)
    assert main(["verify", str(out), *QUICK, "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    names = {r["name"]: r for r in report["summary"]}
    layers = ReferenceModel(checkpoints[family]).cfg.num_hidden_layers
    want = [io.tap_name(io.tap_value(i, role)) for i in range(layers) for role in TAPS[family]]
    want.append(io.tap_name(io.FINAL_NORM))
    assert set(want) <= set(names), sorted(set(want) - set(names))
    assert all(names[n]["rel"] < 1e-5 for n in want), {n: names[n]["rel"] for n in want}
    assert all(row["inputs_rel"] is not None for row in report["layers"]), report["layers"]
    assert "inputs_rel" in capsys.readouterr().out


def test_a_wrong_norm_fails_at_its_tap_although_the_products_run_on_the_exports_input(exports, tmp_path, capsys):
    # The reference's q/k/v products take the export's own norm output; only comparing that output with the
    # reference's own catches a wrong norm weight (the products after it agree on the wrong input).
    good = exports("qwen3", target="cpu", dense="q4")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    _flip_byte(bad, "layers.0.input_layernorm.weight", 11)  # the second weight's exponent byte
    assert main(["verify", str(bad), *QUICK, "--json", str(tmp_path / "r.json")]) == 1
    report = json.loads((tmp_path / "r.json").read_text())
    failed = {r["name"] for r in report["summary"] if r["failed_in"]}
    assert io.tap_name(io.tap_value(0, io.INPUT_NORM)) in failed, failed
    assert report["first_failing_layer"] == 0


def test_float16_export_is_judged_on_its_float16_numbers(exports, tmp_path, capsys):
    out = exports("gpt_oss", target="cpu", experts="float32", dtype="float16")
    assert main(["verify", str(out), *QUICK, "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "rounded to float16 as the export holds it; its float16 math is not reproduced" in text
    assert "float16 tolerances" in text and "rel<=0.01" in text
    report = json.loads((tmp_path / "r.json").read_text())
    logits = next(r for r in report["summary"] if r["name"] == "logits")
    assert 1e-5 < logits["rel"] < 1e-2, logits  # float16 math shows; the weights are the export's


def test_quantization_error_fails_only_against_a_budget(exports, tmp_path, capsys):
    out = exports("qwen3", target="cpu", dense="int4")
    assert main(["verify", str(out), *QUICK, "--min-top1", "0", "--max-kl", "10"]) == 0
    assert "within budget --max-kl 10, --min-top1 0" in capsys.readouterr().out
    assert main(["verify", str(out), *QUICK, "--max-kl", "1e-9", "--json", str(tmp_path / "r.json")]) == 1
    text = capsys.readouterr().out
    assert "over budget --max-kl 1e-09" in text and "quantization error: kl_mean" in text
    error = json.loads((tmp_path / "r.json").read_text())["quantization_error"]
    assert error["budget"] == {"max_kl": 1e-9} and not error["passed"]
    assert main(["verify", str(out), *QUICK, "--min-top1", "1.5"]) == 2
    assert "--min-top1 must lie in [0, 1]" in capsys.readouterr().err
    assert main(["verify", str(out), *QUICK, "--max-kl", "nan"]) == 2


def test_reference_checkpoint_judges_a_lossy_export_with_the_lossy_tolerances(exports, capsys):
    out = exports("qwen3_moe", target="cpu", experts="int4")
    main(["verify", str(out), *QUICK, "--reference", "checkpoint"])
    text = capsys.readouterr().out
    assert "against the NumPy reference on the checkpoint as stored, lossy tolerances (--reference checkpoint)" in text
    assert "rel<=0.05" in text and "quantization error" not in text


def test_an_exact_export_says_so(exports, capsys):
    assert main(["verify", str(exports("gpt_oss", target="cpu", experts="mxfp4")), *QUICK]) == 0
    text = capsys.readouterr().out
    assert "checked    ONNX Runtime on this export against the NumPy reference on the checkpoint, float32 " \
           "tolerances (exact export)" in text and "quantization error" not in text


# ---- non-finite numbers ---------------------------------------------------------------------------------------------
def _poison_safetensors(folder: Path, tensor: str) -> None:
    """Write NaN into element 0 of `tensor` in the checkpoint's safetensors file that holds it."""
    for path in sorted(folder.glob("*.safetensors")):
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        if tensor in header:
            start = 8 + n + header[tensor]["data_offsets"][0]
            nan = {"BF16": b"\xc0\x7f", "F32": struct.pack("<f", float("nan")), "F16": b"\x00\x7e"}
            value = nan[header[tensor]["dtype"]]
            path.write_bytes(raw[:start] + value + raw[start + len(value) :])
            return
    raise AssertionError(f"{tensor} not in {folder}")


def _poison_initializer(folder: Path, name: str) -> None:
    """Write NaN into element 0 of initializer `name` (external data) of an export."""
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    init = next(i for i in model.graph.initializer if i.name == name)
    info = {e.key: e.value for e in init.external_data}
    nan = {onnx.TensorProto.FLOAT: struct.pack("<f", float("nan")), onnx.TensorProto.BFLOAT16: b"\xc0\x7f",
           onnx.TensorProto.FLOAT16: b"\x00\x7e"}[init.data_type]
    with open(folder / info["location"], "r+b") as f:
        f.seek(int(info["offset"]))
        f.write(nan)


def test_a_nan_weight_fails_verify_naming_the_non_finite_output(checkpoints, tmp_path, capsys):
    """One NaN in an MLP weight, in the checkpoint and in its export alike (written here, not exported: export may
    refuse non-finite weights): NaN against NaN is not agreement, so verify exits 1 and names what went non-finite."""
    weight = "model.layers.0.mlp.down_proj.weight"
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoints["qwen3"], ckpt)
    out = export(checkpoints["qwen3"], tmp_path / "out", progress=False)
    _poison_safetensors(ckpt, weight)
    _poison_initializer(out, weight)
    assert main(["verify", str(out), "--checkpoint", str(ckpt), *QUICK, "--json", str(tmp_path / "r.json")]) == 1
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.startswith("non-finite outputs"))
    assert "logits (test " in line and "reference " in line and "hidden_states.0" in line, line
    assert "first layer with non-finite values: 0" in text and text.rstrip().endswith("FAIL")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["first_non_finite_layer"] == 0 and not report["passed"]
    assert {r["name"] for r in report["non_finite"]} >= {"logits", "hidden_states.0", "hidden_states.1"}


# ---- the pieces ----------------------------------------------------------------------------------------------------
def test_int8_blocks_and_near_tie_rounding():
    x = np.array([[127.0, 0.5, 1.5, -2.5] + [0.0] * 28], np.float32)  # scale 1: ties round half to even
    assert int8_blocks(x)[0, :4].tolist() == [127.0, 0.0, 2.0, -2.0]
    rounding = Rounding()
    rounding.start()
    int8_blocks(x, rounding)
    assert [n for _, n in rounding.ties] == [0, 1, 2]  # 0.5, 1.5, -2.5 sit on ties
    rounding.start(flip={1})
    assert int8_blocks(x, rounding)[0, :4].tolist() == [127.0, 0.0, 1.0, -2.0]  # the second tie rounded down
    y = np.full((1, 40), np.nan, np.float32)
    assert np.isnan(int8_blocks(y)).all()  # a NaN is never quantized away


def test_reference_quantization_reads_the_mode_table(checkpoints):
    from mxport.contract.folder import Manifest

    assert Quantization.of(Manifest(experts="mxfp4"), checkpoint_mxfp4=True) is None  # stored MXFP4: exact
    assert Quantization.of(Manifest(experts="mxfp4"), checkpoint_mxfp4=False).experts_lossy  # encoded at export
    assert Quantization.of(Manifest(experts="int4", dtype="float16"), checkpoint_mxfp4=True).half  # weights float16
    assert Quantization.of(Manifest(experts="int4", dtype="bfloat16"), checkpoint_mxfp4=True) is None  # not reproduced
    assert not Quantization.of(Manifest(experts="int8"), checkpoint_mxfp4=True).experts_lossy  # exact weights ...
    assert Quantization.of(Manifest(experts="int8"), checkpoint_mxfp4=True).int8_activations_experts  # ... int8 input
    q = Quantization.of(Manifest(experts="none", dense="int4", accuracy_level=0), checkpoint_mxfp4=False)
    assert not q.quantizes_activations and "float32 activations" in q.describe()
    with ReferenceModel(checkpoints["qwen3"], quantization=Quantization("none", "int4")) as quantized, \
            ReferenceModel(checkpoints["qwen3"]) as stored:
        ids = np.arange(6, dtype=np.int64)[None]
        a, b = quantized.forward(ids).logits, stored.forward(ids).logits
        assert np.isfinite(a).all() and 1e-3 < np.abs(a - b).max() / np.abs(b).max() < 1
