"""Qwen3-MoE exports (portable, --target cpu float experts, --experts mxfp4) against transformers'
Qwen3MoeForCausalLM and the NumPy reference; both expert layouts give identical files. Cases: tests/qwen3_moe_cases.py."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

import qwen3_moe_cases
from decoding import cached_decoding_error, rel_err
from mxport.errors import MxportError
from mxport.exporter.checkpoint import open_checkpoint
from mxport.exporter.export import export
from mxport.runtime.oracle.model import ReferenceModel
from mxport.contract.io import make_feeds
from mxport.runtime.execution.runners import OrtRunner
from mxport.runtime.judge.verify import verify

_CACHE: dict = {}
TARGETS = {"portable": {}, "cpu": {"target": "cpu"}}
MORE_TARGETS = {**TARGETS, "cuda": {"target": "cuda"}}  # built, not run (no GPU here)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return lambda name: qwen3_moe_cases.make(tmp_path_factory, _CACHE, name)


@pytest.fixture(scope="module")
def exported(case, tmp_path_factory):
    cache: dict = {}

    def get(name: str, target: str, layout: str = "per_expert", **options):
        key = (name, target, layout, tuple(sorted(options.items())))
        if key not in cache:
            path, fused, _ = case(name)
            out = tmp_path_factory.mktemp(f"qwen3_moe_export_{name}_{target}_{layout}")
            cache[key] = export(path if layout == "per_expert" else fused, out / "x", progress=False,
                                **MORE_TARGETS[target], **options)
        return cache[key]

    return get


def digest(folder) -> str:
    h = hashlib.sha256()
    for name in ("model.onnx", "model.onnx.data"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("name", sorted(qwen3_moe_cases.CASES))
def test_export_matches_transformers(case, exported, name, target):
    path, _, oracle = case(name)
    cfg = open_checkpoint(path).config
    ids = np.random.default_rng(3).integers(4, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        want = oracle(torch.tensor(ids)).logits.numpy()
    got = OrtRunner(exported(name, target), "cpu").infer(make_feeds(ids, cfg=cfg))["logits"]
    err = rel_err(got, want)
    print(f"\n{name} {target}: max relative logits error vs transformers {err:.2e}")
    assert err <= 1e-4 and (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("name", ["norm", "step2_bf16"])
def test_both_expert_layouts_give_identical_files(exported, name, target):
    assert digest(exported(name, target)) == digest(exported(name, target, layout="fused"))


def test_portable_keeps_experts_as_stored_and_cpu_lowers_every_sparse_layer(case, exported):
    path, _, _ = case("step2_bf16")
    meta = json.loads((exported("step2_bf16", "portable") / "mxport.json").read_text())
    assert meta["family"] == "qwen3_moe" and meta["experts"] == "float32"
    model = onnx.load(exported("step2_bf16", "portable") / "model.onnx", load_external_data=False)
    moe = [n for n in model.graph.node if n.op_type == "MoE_2"]
    assert [n.name.split("/")[0] for n in moe] == ["layers.3"]  # layers 0-2 dense (step 2, mlp_only_layers [1])
    init = {t.name: t for t in model.graph.initializer}
    w1 = init["model.layers.3.mlp.experts.gate_up_proj"]
    assert list(w1.dims) == [7, 128, 96] and w1.data_type == onnx.TensorProto.BFLOAT16  # bf16 kept, gate rows first
    assert {f.name for f in model.functions} >= {"MoE_2", "SwiGLUExpertNoBias"}
    cpu = onnx.load(exported("step2_bf16", "cpu") / "model.onnx", load_external_data=False)
    ops = [(n.domain, n.op_type) for n in cpu.graph.node]
    assert ops.count(("com.microsoft", "MoE")) == 1 and not any(d == "ai.mxport" and "MoE" in t for d, t in ops)
    node = next(n for n in cpu.graph.node if n.op_type == "MoE")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["swiglu_fusion"] == 1 and attrs["activation_alpha"] == 1.0 and attrs["activation_beta"] == 0.0
    assert "swiglu_limit" not in attrs and attrs["k"] == 3 and attrs["normalize_routing_weights"] == 1


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_cached_decoding_equals_recomputation(case, exported, target):
    path, _, _ = case("sliding")
    cfg = open_checkpoint(path).config
    runner = OrtRunner(exported("sliding", target), "cpu")
    assert cached_decoding_error(runner, cfg) <= 1e-5


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_left_padded_batch_equals_each_row_alone(case, exported, target):
    path, _, _ = case("no_norm")
    cfg = open_checkpoint(path).config
    runner = OrtRunner(exported("no_norm", target), "cpu")
    rng = np.random.default_rng(6)
    a, b = rng.integers(4, cfg.vocab_size, (1, 9)), rng.integers(4, cfg.vocab_size, (1, 5))
    batch = np.concatenate([a, np.concatenate([np.zeros((1, 4), np.int64), b], axis=1)])
    mask = np.ones_like(batch)
    mask[1, :4] = 0
    got = runner.infer(make_feeds(batch, mask, cfg=cfg))["logits"]
    assert rel_err(got[0], runner.infer(make_feeds(a, cfg=cfg))["logits"][0]) <= 1e-5
    assert rel_err(got[1, 4:], runner.infer(make_feeds(b, cfg=cfg))["logits"][0]) <= 1e-5


@pytest.mark.parametrize("name", ["norm", "step2_bf16"])
def test_mxfp4_export_equals_the_reference_on_mxfp4_experts_and_verify_reports_its_error(case, exported, name):
    """--experts mxfp4: experts encoded at export; the export is exact against the NumPy reference run on the same
    MXFP4 weights, and `verify` reports (lossy mode) its error against the float checkpoint."""
    path, _, _ = case(name)
    out = exported(name, "portable", experts="mxfp4")
    assert digest(out) == digest(exported(name, "portable", layout="fused", experts="mxfp4"))
    meta = json.loads((out / "mxport.json").read_text())
    assert meta["experts"] == "mxfp4" and meta["lowering"]["applied"]["experts_mxfp4"] >= 1
    model = onnx.load(out / "model.onnx", load_external_data=False)
    assert not [n for n in model.graph.node if n.op_type == "MoE_2"]
    assert [n for n in model.graph.node if n.op_type == "MoEMXFP4_2"]
    cfg = open_checkpoint(path).config
    ids = np.random.default_rng(8).integers(4, cfg.vocab_size, (2, 8))
    got = OrtRunner(out, "cpu").infer(make_feeds(ids, cfg=cfg))["logits"]
    with ReferenceModel(path, experts="mxfp4") as packed, ReferenceModel(path) as exact:
        same, float_ref = packed.forward(ids).logits, exact.forward(ids).logits
    assert rel_err(got, same) <= 1e-4 and (got.argmax(-1) == same.argmax(-1)).all()
    # verify checks it against the reference on the same MXFP4 experts (float32 tolerances) and reports the
    # quantization error against the float checkpoint beside it
    report = verify(out, prompts=2, decode_steps=1)
    assert report and "float experts encoded to MXFP4 at export" in report.mode
    error = report.quantization
    err = rel_err(got, float_ref)
    print(f"\n{name} --experts mxfp4: rel {err:.3f} vs float reference here; verify's quantization error: rel "
          f"{error.rel:.3f} top1 {error.top1:.3f} kl_mean {error.kl_mean:.4f}")
    assert error.rel > 1e-3 and error.kl_mean > 0 and err > 1e-3  # packing is really lossy, and reported
    row = next(r for r in verify(out, prompts=2, decode_steps=1, reference="checkpoint").worst()
               if r["name"] == "logits")
    assert row["rel"] > 1e-3  # against the float checkpoint itself


def test_experts_float32_keeps_float_experts_and_reads_the_old_spellings(case, tiny_config, make_checkpoint, tmp_path):
    """--experts float32 is float32 math on float experts: portable keeps them as stored, cpu runs ORT's MoE on them;
    the older spellings `float` (as stored) and `fp32` (ORT's MoE) read as float32. Portable cannot hold MXFP4
    experts as float ones: refused."""
    with pytest.raises(MxportError, match="this checkpoint's experts are MXFP4"):
        export(make_checkpoint(tiny_config), tmp_path / "x", experts="float", progress=False)
    assert not (tmp_path / "x").exists()
    path, _, _ = case("norm")
    for spelling in ("float", "fp32"):
        out = export(path, tmp_path / spelling, target="cpu", experts=spelling, progress=False)
        assert json.loads((out / "mxport.json").read_text())["experts"] == "float32"
        ops = {(n.domain, n.op_type) for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node}
        assert ("com.microsoft", "MoE") in ops
    assert (tmp_path / "float" / "model.onnx").read_bytes() == (tmp_path / "fp32" / "model.onnx").read_bytes()


def test_cli_synth_export_verify_chat_offline(tmp_path, capsys, monkeypatch):
    """`mxport synth --preset qwen3-moe-tiny` writes Qwen3's tokenizer and chat template: export, verify, chat and
    run work offline, as for Qwen3."""
    import io
    import sys

    from mxport.cli import main

    assert main(["synth", "--preset", "qwen3-moe-tiny", "-o", str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "tokenizer.json").is_file()
    assert main(["export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "out"), "--target", "cpu"]) == 0
    assert main(["verify", str(tmp_path / "out"), "--prompts", "2", "--decode-steps", "2"]) == 0
    for reasoning in ("off", "on"):
        monkeypatch.setattr(sys, "stdin", io.StringIO("Hello!"))
        assert main(["chat", str(tmp_path / "out"), "--max-new-tokens", "4", "--reasoning", reasoning]) == 0
    assert main(["run", str(tmp_path / "out"), "--prompt", "Hi", "--max-new-tokens", "3"]) == 0
    from mxport.runtime.generation.generate import Generator
    from mxport.runtime.chat.session import chat_format
    from mxport.runtime.chat.template import TemplateFormat

    gen = Generator.from_folder(tmp_path / "out")  # what `mxport serve` builds on
    fmt = chat_format(gen.tokenizer, tmp_path / "out", gen.config.family.chat_format)
    assert isinstance(fmt, TemplateFormat) and gen.tokenizer.token_to_id("<|im_end|>") in fmt.stop_token_ids
    prompt = fmt.render([{"role": "user", "content": "Hi"}], reasoning_effort="none")
    assert gen.tokenizer.decode(prompt).endswith("<think>\n\n</think>\n\n")
    assert main(["synth", "--preset", "qwen3-30b-a3b", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "model.layers.47.mlp.experts.127.down_proj.weight" in listing and "[768, 2048]" in listing


@pytest.mark.parametrize("dense", ["int4", "q4"])
def test_dense_quantized_keeps_the_router_float_with_portable_mxfp4_experts(dense, exported):
    """--target cpu --experts mxfp4 --dense int4|q4: MoEMXFP4_2 stays portable (no ORT CPU kernel) and its router
    MatMul is not quantized (quantized routing flips expert choices)."""
    out = exported("norm", "cpu", experts="mxfp4", dense=dense)
    report = json.loads((out / "mxport.json").read_text())["lowering"]
    assert any("router: kept float32" in r["reason"] for r in report["refused"])
    model = onnx.load(out / "model.onnx", load_external_data=False)
    assert [n.op_type for n in model.graph.node].count("MoEMXFP4_2") == 3
    assert not any(n.op_type in ("MatMulNBits", "LinearQ4") and "router" in n.name for n in model.graph.node)
    assert any(n.op_type == {"int4": "MatMulNBits", "q4": "LinearQ4"}[dense] for n in model.graph.node)


def test_cuda_mxfp4_is_qmoe_fp4_per_sparse_layer(exported):
    """--target cuda --experts mxfp4 on float experts: encoded at export, then QMoE quant_type fp4 (the bytes kept,
    fc1 rows interleaved), no biases; structure only (no GPU here)."""
    out = exported("step2_bf16", "cuda", experts="mxfp4")
    model = onnx.load(out / "model.onnx", load_external_data=False)
    qmoe = [n for n in model.graph.node if n.op_type == "QMoE"]
    assert len(qmoe) == 1 and not [n for n in model.graph.node if n.domain == "ai.mxport" and "MoE" in n.op_type]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in qmoe[0].attribute}
    assert attrs["quant_type"] == b"fp4" and attrs["swiglu_fusion"] == 1 and attrs["k"] == 3
    assert attrs["activation_alpha"] == 1.0 and attrs["activation_beta"] == 0.0 and "swiglu_limit" not in attrs
    assert qmoe[0].input[4] == "" and qmoe[0].input[7] == ""  # no fc1 / fc2 biases
    init = {t.name: t for t in model.graph.initializer}
    assert list(init[qmoe[0].input[2]].dims) == [7, 128, 48] and init[qmoe[0].input[3]].data_type == onnx.TensorProto.FLOAT8E8M0
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location("_cuda_contract", pathlib.Path(__file__).parent / "lower" / "test_cuda.py")
    contract = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(contract)
    assert contract.check_against_ort(model) == []  # every contrib node against ORT 1.32's registered schema


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_onnxruntime_genai_runs_the_export_as_is(tmp_path, target):
    """genai_config.json: onnxruntime-genai's greedy search on a Qwen3-MoE export == the NumPy reference's (its own
    builder has no Qwen3MoeForCausalLM; the mxport folder runs as it is, MoE_2 through its function body on
    portable, com.microsoft.MoE on cpu)."""
    og = pytest.importorskip("onnxruntime_genai")
    from mxport.exporter.synth import PRESETS, write_checkpoint

    ckpt = write_checkpoint(tmp_path / "ckpt", PRESETS["qwen3-moe-tiny"])
    out = export(ckpt, tmp_path / "out", progress=False, **TARGETS[target])
    model = og.Model(str(out))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=14, do_sample=False)
    gen = og.Generator(model, params)
    prompt = np.array([[5, 6, 7, 8, 9]], np.int64)
    gen.append_tokens(prompt.astype(np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    with ReferenceModel(ckpt) as ref:
        want = ref.generate_greedy(prompt, 9)[0]
    assert [int(t) for t in gen.get_sequence(0)] == want.tolist()
