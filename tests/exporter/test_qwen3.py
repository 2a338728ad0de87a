"""Qwen3 exports (portable and --target cpu) against transformers' Qwen3ForCausalLM and the NumPy reference; the
tied head stored once; config and tensor errors named. Cases: tests/qwen3_cases.py."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import qwen3_cases
from decoding import cached_decoding_error, presents, rel_err
from mxport.errors import MxportError
from mxport.exporter import families
from mxport.exporter.checkpoint import open_checkpoint
from mxport.exporter.export import export
from mxport.exporter.families import qwen3
from mxport.contract.io import make_feeds
from mxport.runtime.execution.runners import OrtRunner

_CACHE: dict = {}
TARGETS = {"portable": {}, "cpu": {"target": "cpu", "experts": "float32"},
           "cpu_bf16": {"target": "cpu", "experts": "float32", "dense": "bfloat16"}}  # LinearBF16 where weights are bf16


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return lambda name: qwen3_cases.make(tmp_path_factory, _CACHE, name)


@pytest.fixture(scope="module")
def exported(case, tmp_path_factory):
    cache: dict = {}

    def get(name: str, target: str, **options):
        key = (name, target, tuple(sorted(options.items())))
        if key not in cache:
            path, _ = case(name)
            out = tmp_path_factory.mktemp(f"qwen3_export_{name}_{target}")
            cache[key] = export(path, out / "x", progress=False, **TARGETS[target], **options)
        return cache[key]

    return get


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("name", sorted(qwen3_cases.CASES))
def test_export_matches_transformers(case, exported, name, target):
    path, oracle = case(name)
    cfg = open_checkpoint(path).config
    ids = np.random.default_rng(3).integers(4, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        want = oracle(torch.tensor(ids)).logits.numpy()
    got = OrtRunner(exported(name, target), "cpu").infer(make_feeds(ids, cfg=cfg))["logits"]
    err = rel_err(got, want)
    print(f"\n{name} {target}: max relative logits error vs transformers {err:.2e}")
    assert err <= 1e-4 and (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.parametrize("name", ["tied", "sliding_bf16", "folded_rotary_yarn"])
def test_cpu_cached_decoding_equals_recomputation(case, exported, name):
    path, _ = case(name)
    cfg = open_checkpoint(path).config
    runner = OrtRunner(exported(name, "cpu"), "cpu")
    assert cached_decoding_error(runner, cfg) <= 1e-5


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_left_padded_batch_equals_each_row_alone(case, exported, target):
    path, _ = case("sliding_bf16")
    cfg = open_checkpoint(path).config
    runner = OrtRunner(exported("sliding_bf16", target), "cpu")
    rng = np.random.default_rng(6)
    a, b = rng.integers(4, cfg.vocab_size, (1, 9)), rng.integers(4, cfg.vocab_size, (1, 5))
    batch = np.concatenate([a, np.concatenate([np.zeros((1, 4), np.int64), b], axis=1)])
    mask = np.ones_like(batch)
    mask[1, :4] = 0
    got = runner.infer(make_feeds(batch, mask, cfg=cfg))["logits"]
    assert rel_err(got[0], runner.infer(make_feeds(a, cfg=cfg))["logits"][0]) <= 1e-5
    assert rel_err(got[1, 4:], runner.infer(make_feeds(b, cfg=cfg))["logits"][0]) <= 1e-5


def test_cpu_lowering_report(exported):
    """GQA without head_sink, SimplifiedLayerNormalization for the q/k norms, fused qkv and gate/up, tied head."""
    report = json.loads((exported("tied", "cpu") / "mxport.json").read_text())["lowering"]
    L = 3
    assert report["applied"]["attention"] == L and report["applied"]["tied_head"] == 1
    assert report["applied"]["fused_qkv"] == 2 * L  # q/k/v and gate/up per layer
    assert report["applied"]["simplified_layer_norm"] == 4 * L + 1  # input, q, k, post-attention norms; final
    model = onnx.load(exported("tied", "cpu") / "model.onnx", load_external_data=False)
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == L and all(len(n.input) < 12 or n.input[11] == "" for n in gqa)
    refused = json.loads((exported("untied_d20", "cpu") / "mxport.json").read_text())["lowering"]["refused"]
    assert any("head_size=20" in r["reason"] for r in refused)


def test_rotary_is_folded_into_gqa_where_head_size_allows(exported):
    """head_dim 32: no RotaryEmbedding left, GQA rotates (do_rotary=1, one cos/sin row per token); head_dim 24:
    refused with the reason, the RotaryEmbedding nodes stay."""
    folded = onnx.load(exported("folded_rotary_yarn", "cpu") / "model.onnx", load_external_data=False)
    ops = [n.op_type for n in folded.graph.node]
    gqa = [n for n in folded.graph.node if n.op_type == "GroupQueryAttention"]
    assert "RotaryEmbedding" not in ops and len(gqa) == 3
    assert all(next(a.i for a in n.attribute if a.name == "do_rotary") == 1 and n.input[7] and n.input[9] for n in gqa)
    kept = json.loads((exported("tied", "cpu") / "mxport.json").read_text())["lowering"]
    assert [r["reason"] for r in kept["refused"]] == ["head_size=24 is not a multiple of 16 (ORT's CPU rotary needs it)"] * 3
    model = onnx.load(exported("tied", "cpu") / "model.onnx", load_external_data=False)
    assert [n.op_type for n in model.graph.node].count("RotaryEmbedding") == 6


def test_folded_rotary_follows_the_given_positions(case, exported):
    """GQA's own position rule (right padding) is never used: arbitrary position_ids give the portable export's
    logits, and a row keeps its logits when its cache is shifted right by pad slots (serve's batch surgery)."""
    path, _ = case("folded_rotary_yarn")
    cfg = open_checkpoint(path).config
    ids = np.random.default_rng(8).integers(4, cfg.vocab_size, (2, 6))
    pos = np.array([[0, 1, 2, 9, 10, 30], [100, 101, 102, 103, 104, 105]])
    feeds = make_feeds(ids, cfg=cfg)
    feeds["position_ids"] = pos
    want = OrtRunner(exported("folded_rotary_yarn", "portable"), "cpu").infer(feeds)["logits"]
    cpu = OrtRunner(exported("folded_rotary_yarn", "cpu"), "cpu")
    assert rel_err(cpu.infer(feeds)["logits"], want) <= 1e-5
    out = cpu.infer(make_feeds(ids, cfg=cfg))
    step = ids[:, :1]
    plain = cpu.infer(make_feeds(step, np.ones((2, 7), np.int64), presents(cfg, out), cfg=cfg))["logits"]
    shifted_past = [tuple(np.pad(x, ((0, 0), (0, 0), (5, 0), (0, 0))) for x in kv) for kv in presents(cfg, out)]
    mask = np.concatenate([np.zeros((2, 5), np.int64), np.ones((2, 7), np.int64)], axis=1)
    shifted = cpu.infer(make_feeds(step, mask, shifted_past, cfg=cfg))["logits"]
    assert rel_err(shifted, plain) <= 1e-5


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_tied_head_is_stored_once(case, exported, target):
    path, _ = case("tied")
    cfg = open_checkpoint(path).config
    model = onnx.load(exported("tied", target) / "model.onnx", load_external_data=False)
    tables = [t.name for t in model.graph.initializer if sorted(t.dims) == sorted([cfg.vocab_size, cfg.hidden_size])]
    assert tables == ["model.embed_tokens.weight"]
    if target == "cpu":
        assert any(n.op_type == "FusedMatMul" for n in model.graph.node)


@pytest.mark.parametrize("dense, op_type", [("int4", "MatMulNBits"), ("q4", "LinearQ4")])
def test_dense_4bit_quantizes_every_matrix_and_the_tied_head(dense, op_type, case, exported):
    """--dense int4 (ORT's MatMulNBits) and q4 (ai.mxport.LinearQ4): every linear layer and the tied head (from the
    table's rows; the Gather keeps the float table) are 4-bit; lossy, and close."""
    path, oracle = case("tied")
    cfg = open_checkpoint(path).config
    out = exported("tied", "cpu", dense=dense)
    model = onnx.load(out / "model.onnx", load_external_data=False)
    quantized = [n.name for n in model.graph.node if n.op_type == op_type]
    refused = [r for r in json.loads((out / "mxport.json").read_text())["lowering"]["refused"]
               if r["rule"] in ("matmul_nbits", "linear_q4")]
    assert any(n.startswith("lm_head") for n in quantized)
    # MatMulNBits needs K % 32 == 0 (not this config's o_proj: heads x head_dim); LinearQ4 pads its last super-block
    assert all(r["reason"].endswith("is not a multiple of the block size 32") for r in refused), refused
    assert len(quantized) + len(refused) == 4 * cfg.num_hidden_layers + 1 and (dense == "int4" or not refused)
    ids = np.random.default_rng(3).integers(4, cfg.vocab_size, (1, 10))
    with torch.no_grad():
        want = oracle(torch.tensor(ids)).logits.numpy()
    got = OrtRunner(out, "cpu").infer(make_feeds(ids, cfg=cfg))["logits"]
    err, top1 = rel_err(got, want), float((got.argmax(-1) == want.argmax(-1)).mean())
    print(f"\nqwen3 tied cpu --dense {dense}: max relative logits error vs transformers {err:.2e}, top-1 {top1:.2f}")
    assert 1e-4 < err < 0.1 and top1 >= 0.8  # lossy (the weights really are 4-bit), and close


# ---- config and tensor errors -------------------------------------------------------------------------------------
def test_layer_types_follow_transformers():
    from transformers import Qwen3Config as HF

    for kw in (dict(), dict(use_sliding_window=True, max_window_layers=2, sliding_window=7),
               dict(use_sliding_window=False, max_window_layers=1),
               dict(use_sliding_window=True, sliding_window=5,
                    layer_types=["sliding_attention", "full_attention", "full_attention", "sliding_attention"])):
        d = dict(qwen3_cases.BASE, num_hidden_layers=4, **kw)
        ours, theirs = qwen3.config_from_dict(d), HF(**d)
        assert list(ours.layer_types) == theirs.layer_types, kw
        assert ours.sliding_window == (theirs.sliding_window or 0), kw
    with pytest.raises(MxportError, match="layer_types has sliding layers but no window"):  # transformers fails too
        qwen3.config_from_dict(dict(qwen3_cases.BASE, num_hidden_layers=2,
                                    layer_types=["sliding_attention", "full_attention"]))


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": None}, "missing required key 'hidden_size'"),
    ({"intermediate_size": "big"}, "'intermediate_size' should be int"),
    ({"head_dim": 7}, "head_dim=7 must be even"),
    ({"num_key_value_heads": 4}, "not a multiple of num_key_value_heads=4"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope type 'dynamic'"),
    ({"layer_types": ["full_attention"]}, "layer_types has 1 entries for 3 layers"),
    ({"num_hidden_layers": -1}, "num_hidden_layers=-1"),
])
def test_bad_config_keys_are_named(tmp_path, change, message):
    d = {"model_type": "qwen3", **qwen3_cases.BASE, **change}
    d = {k: v for k, v in d.items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(MxportError, match=message.replace("(", r"\(").replace("[", r"\[")) as exc:
        families.read_config(tmp_path / "config.json")
    assert "config.json" in str(exc.value)


def test_misshaped_and_unexpected_tensors_are_named(case, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    path, _ = case("untied_d20")
    for edit, message in ((lambda t: t.__setitem__("model.layers.0.self_attn.q_norm.weight", np.ones(8, np.float32)),
                           r"'model\.layers\.0\.self_attn\.q_norm\.weight' has shape \[8\], expected \[20\]"),
                          (lambda t: t.pop("lm_head.weight"), r"missing tensor 'lm_head\.weight'"),
                          (lambda t: t.__setitem__("model.layers.0.mlp.experts", np.ones(2, np.float32)),
                           r"unexpected tensor 'model\.layers\.0\.mlp\.experts'")):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        shutil.copytree(path, bad)
        tensors = load_file(bad / "model.safetensors")
        edit(tensors)
        save_file(tensors, bad / "model.safetensors")
        with pytest.raises(MxportError, match=message):
            open_checkpoint(bad)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_graph_follows_ort_contrib_schemas(case, dtype):
    """No GPU here: the --target cuda graph is checked against ORT's registered schemas (tests/exporter/lower/
    test_cuda.py's checker): GQA without head_sink, SimplifiedLayerNormalization, FusedMatMul for the tied head."""
    import importlib.util
    from pathlib import Path

    import onnx_ir as ir

    from mxport.exporter import decoder_graph
    from mxport.exporter import lower as lowering

    spec = importlib.util.spec_from_file_location("cuda_checks", Path(__file__).parent / "lower" / "test_cuda.py")
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    path, _ = case("sliding_bf16")
    with open_checkpoint(path) as ckpt:
        b, inputs, outputs = decoder_graph.build(ckpt)
        model = lowering.lower(b.model(inputs, outputs), target="cuda", experts="float32", dtype=dtype)
        proto = ir.serde.serialize_model(model)
    assert lowering.report(model)["refused"] == []
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("GroupQueryAttention") == 3 and ops.count("FusedMatMul") == 1
    assert ops.count("SimplifiedLayerNormalization") + ops.count("SkipSimplifiedLayerNormalization") == 13
    assert {n.domain for n in proto.graph.node} <= {"", "com.microsoft"}
    assert checks.check_against_ort(proto) == []
