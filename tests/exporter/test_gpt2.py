"""GPT-2 (family `gpt2`) against transformers' GPT2LMHeadModel: config spellings, stored names, and logits of the
NumPy reference, the portable export and the cpu export (<= 1e-4 relative, identical top-1)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mxport.errors import MxportError
from mxport.exporter import families
from mxport.exporter.checkpoint import open_checkpoint
from mxport.exporter.export import export
from mxport.exporter.families.gpt2 import PRESETS
from mxport.exporter.families.gpt2.config import ACTIVATIONS, GPT2Config, config_from_dict
from mxport.runtime.oracle.model import ReferenceModel
from mxport.contract.io import make_feeds
from mxport.runtime.execution.runners import OrtRunner
from tests.oracles import save_transformers_gpt2

torch = pytest.importorskip("torch")


def hf_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        m = None if mask is None else torch.tensor(mask)
        return model(torch.tensor(ids), attention_mask=m).logits.numpy()


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel <= 1e-4, f"{what}: relative error {rel:.2e}"
    assert (got.argmax(-1) == want.argmax(-1)).all(), f"{what}: top-1 differs"


def ort_logits(folder, ids: np.ndarray, cfg) -> np.ndarray:
    return OrtRunner(folder).infer(make_feeds(ids, cfg=cfg))["logits"]


# ---- config --------------------------------------------------------------------------------------------------------
def test_gpt2_is_registered_and_its_config_round_trips():
    fam = families.get("gpt2")
    cfg = PRESETS["gpt2"]
    assert families.detect({"architectures": ["GPT2LMHeadModel"]}) is fam
    assert families.config_from_dict(cfg.to_hf_dict()) == cfg
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim, cfg.intermediate_size) == (768, 12, 64, 3072)
    assert (cfg.num_key_value_heads, cfg.max_position_embeddings, cfg.eos_token_ids) == (12, 1024, (50256,))
    xl = PRESETS["gpt2-xl"]
    assert (xl.hidden_size, xl.num_hidden_layers, xl.num_attention_heads, xl.head_dim) == (1600, 48, 25, 64)
    assert fam.chat_format is None and cfg.position_limit == 1024
    assert config_from_dict({"vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2, "n_inner": 20}).intermediate_size == 20
    aliases = config_from_dict({"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2})
    assert (aliases.hidden_size, aliases.num_hidden_layers, aliases.head_dim, aliases.intermediate_size) == (8, 1, 4, 32)


def test_transformers_config_spellings(tmp_path):
    save_transformers_gpt2(tmp_path, n_inner=40, scale_attn_by_inverse_layer_idx=True, activation_function="relu",
                           layer_norm_epsilon=1e-3, tie_word_embeddings=False)
    cfg = families.read_config(tmp_path / "config.json")
    assert isinstance(cfg, GPT2Config)
    assert (cfg.intermediate_size, cfg.scale_attn_by_inverse_layer_idx, cfg.activation_function) == (40, True, "relu")
    assert (cfg.layer_norm_epsilon, cfg.tie_word_embeddings, cfg.head_dim) == (1e-3, False, 16)
    assert cfg.attention_scale(1) == pytest.approx(16**-0.5 / 2)


BASE = {"model_type": "gpt2", "vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2}


@pytest.mark.parametrize("change, message", [
    ({"n_head": 3}, "n_embd=8 is not divisible by n_head=3"),
    ({"activation_function": "prelu"}, "activation_function='prelu' is not supported: it has a learned slope"),
    ({"activation_function": "gelu_fancy"}, "activation_function='gelu_fancy' is unknown .*gelu_new"),
    ({"n_positions": 0}, "n_positions=0 must be a positive integer"),
    ({"n_inner": -4}, "n_inner=-4 must be null or a positive integer"),
    ({"layer_norm_epsilon": "tiny"}, "'layer_norm_epsilon' should be float"),
    ({"scale_attn_weights": "yes"}, "'scale_attn_weights' should be true or false"),
    ({"add_cross_attention": True}, "add_cross_attention=true"),
    ({"n_embd": None}, "'n_embd' should be int"),
    ({"vocab_size": 1.5}, "'vocab_size' should be int"),
    ({"n_layer": 3278593376.0}, "n_layer=3278593376 must be in 1..1024"),  # found by the reader fuzzer
    ({"n_layer": 0}, "n_layer=0 must be in 1..1024"),
])
def test_bad_config_values_are_named(change, message):
    with pytest.raises(MxportError, match=f"cfg.json: .*{message}"):
        families.config_from_dict({**BASE, **change}, "cfg.json")


def test_missing_key_is_named():
    with pytest.raises(MxportError, match="cfg.json: missing required key 'n_layer'"):
        families.config_from_dict({k: v for k, v in BASE.items() if k != "n_layer"}, "cfg.json")


# ---- against transformers ---------------------------------------------------------------------------------------
CASES = {
    # odd widths, head_dim 12 (GroupQueryAttention refuses head sizes that are not multiples of 8: stays portable)
    "odd": dict(n_embd=36, n_head=3, n_inner=52, n_layer=3, scale_attn_by_inverse_layer_idx=True),
    "gelu_erf": dict(activation_function="gelu", n_inner=72),
    "relu_untied": dict(activation_function="relu", tie_word_embeddings=False),
    "silu_unscaled": dict(activation_function="silu", scale_attn_weights=False),
    "quick_gelu": dict(activation_function="quick_gelu", reorder_and_upcast_attn=True),
    "mish": dict(activation_function="mish", n_head=6),
    "wide": dict(n_embd=64, n_head=4, vocab_size=300, bos_token_id=299, eos_token_id=299),  # K % 32 == 0
}


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    cache = {}

    def make(case: str):
        if case not in cache:
            path = tmp_path_factory.mktemp(f"gpt2-{case}")
            cache[case] = (path, save_transformers_gpt2(path, **CASES[case]))
        return cache[case]

    return make


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_and_exports_match_transformers(case, oracle, tmp_path):
    path, model = oracle(case)
    ids = np.random.default_rng(1).integers(0, 101, (2, 11))
    want = hf_logits(model, ids)
    ref = ReferenceModel(path)
    assert_close(ref.forward(ids).logits, want, "reference")
    for target in ("portable", "cpu"):
        out = export(path, tmp_path / target, target=target, progress=False)
        assert_close(ort_logits(out, ids, ref.cfg), want, target)
        manifest = json.loads((out / "mxport.json").read_text())
        assert manifest["family"] == "gpt2"
    refused = {r["rule"]: r["reason"] for r in manifest["lowering"]["refused"]}
    if case == "odd":
        assert "head_size=12 is not a multiple of 8" in refused["attention"]
    else:
        assert manifest["lowering"]["applied"]["attention"] == ref.cfg.num_hidden_layers
    assert manifest["lowering"]["applied"]["skip_layer_norm"] == 2 * ref.cfg.num_hidden_layers + 1


@pytest.mark.parametrize("dense, max_rel, min_top1", [("int8", 0.1, 0.8), ("int4", 0.5, 0.5)])
def test_dense_nbits_quantizes_every_matrix_and_the_tied_head(dense, max_rel, min_top1, oracle, tmp_path):
    path, model = oracle("wide")
    ids = np.random.default_rng(3).integers(0, 300, (2, 13))
    want = hf_logits(model, ids)
    out = export(path, tmp_path / dense, target="cpu", dense=dense, progress=False)
    got = ort_logits(out, ids, ReferenceModel(path).cfg)
    lowering = json.loads((out / "mxport.json").read_text())["lowering"]
    assert lowering["applied"]["matmul_nbits"] == 4 * 2 + 1 and lowering["refused"] == []
    assert np.abs(got - want).max() / np.abs(want).max() <= max_rel
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= min_top1


@pytest.mark.parametrize("case", ["wide", "relu_untied"])
def test_dense_q4_quantizes_every_matrix_and_the_head(case, oracle, tmp_path):
    """--dense q4: every Conv1D matrix and the head (the tied table's rows, or lm_head) is an ai.mxport.LinearQ4
    (K = 48 or 96: one zero-padded super-block); lossy like --dense int4, within the same bounds."""
    import onnx

    path, model = oracle(case)
    ids = np.random.default_rng(3).integers(0, model.config.vocab_size, (2, 13))
    want = hf_logits(model, ids)
    out = export(path, tmp_path / "q4", target="cpu", dense="q4", progress=False)
    lowering = json.loads((out / "mxport.json").read_text())["lowering"]
    L = model.config.n_layer
    assert lowering["applied"]["linear_q4"] == 4 * L + 1 and lowering["refused"] == []
    graph = onnx.load(out / "model.onnx", load_external_data=False).graph
    assert not [n for n in graph.node if n.op_type in ("MatMul", "FusedMatMul", "Gemm")]
    got = ort_logits(out, ids, ReferenceModel(path).cfg)
    err, top1 = np.abs(got - want).max() / np.abs(want).max(), (got.argmax(-1) == want.argmax(-1)).mean()
    print(f"\ngpt2 {case} --dense q4: max relative logits error vs transformers {err:.3g}, top-1 {top1:.2f}")
    assert 1e-4 < err <= 0.5 and top1 >= 0.5


@pytest.mark.parametrize("case", ["wide", "relu_untied"])
def test_dense_bf16_reads_every_stored_matrix_as_bf16_and_stays_exact(case, tmp_path):
    """bf16 safetensors, --dense bfloat16: every Conv1D matrix (stored [in, out], written [out, in]) and the head (the
    tied table itself, or lm_head) is an ai.mxport.LinearBF16; logits as close to transformers as float32."""
    import onnx

    path = tmp_path / "ckpt"
    model = save_transformers_gpt2(path, dtype="bfloat16", **CASES[case])
    ids = np.random.default_rng(4).integers(0, model.config.vocab_size, (2, 9))
    out = export(path, tmp_path / "bf16", target="cpu", dense="bfloat16", progress=False)
    lowering = json.loads((out / "mxport.json").read_text())["lowering"]
    L = model.config.n_layer
    assert lowering["applied"]["linear_bf16"] == 4 * L + 1 and lowering["refused"] == []
    graph = onnx.load(out / "model.onnx", load_external_data=False).graph
    assert not [n for n in graph.node if n.op_type in ("MatMul", "FusedMatMul")]
    if model.config.tie_word_embeddings:
        head = [n for n in graph.node if n.op_type == "LinearBF16"][-1]
        assert head.input[1] == "transformer.wte.weight"  # the embedding table as stored, no copy
    assert_close(ort_logits(out, ids, ReferenceModel(path).cfg), hf_logits(model, ids), f"{case} --dense bfloat16")


def test_tied_head_is_stored_once_and_a_stored_lm_head_is_used(oracle, tmp_path):
    import onnx

    path, _ = oracle("gelu_erf")
    out = export(path, tmp_path / "tied", progress=False)
    names = [t.name for t in onnx.load(out / "model.onnx", load_external_data=False).graph.initializer]
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names
    path, _ = oracle("relu_untied")
    assert open_checkpoint(path).output_name == "lm_head.weight"


def test_old_names_without_prefix_and_attn_bias_buffers_read(oracle, tmp_path):
    from safetensors.numpy import load_file, save_file

    path, model = oracle("odd")
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(path / "model.safetensors").items()}
    for i in range(3):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((40, 40), np.float32))[None, None]
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    old = tmp_path / "old"
    old.mkdir()
    save_file(tensors, old / "model.safetensors")
    (old / "config.json").write_text((path / "config.json").read_text())
    ids = np.arange(7)[None] * 13 % 101
    want = hf_logits(model, ids)
    assert open_checkpoint(old).spec("transformer.h.0.attn.c_attn.weight").shape == (36, 108)
    assert_close(ReferenceModel(old).forward(ids).logits, want, "reference")
    assert_close(ort_logits(export(old, tmp_path / "ex", progress=False), ids, ReferenceModel(old).cfg), want, "ort")


def test_unknown_tensor_is_still_refused(oracle, tmp_path):
    from safetensors.numpy import load_file, save_file

    path, _ = oracle("odd")
    tensors = load_file(path / "model.safetensors")
    tensors["transformer.h.0.attn.q_attn.weight"] = np.zeros((36, 36), np.float32)
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(MxportError, match="unexpected tensor 'transformer.h.0.attn.q_attn.weight'"):
        open_checkpoint(tmp_path)


# ---- cache, padding, positions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["odd", "gelu_erf"])  # attention kept portable / lowered to GQA
def test_cached_decoding_equals_recomputation(case, oracle, tmp_path):
    path, model = oracle(case)
    ref = ReferenceModel(path)
    out = export(path, tmp_path / "cpu", target="cpu", progress=False)
    runner = OrtRunner(out)
    ids = np.random.default_rng(2).integers(0, 101, (1, 6))
    logits: list = []
    full = ref.generate_greedy(ids, 5, logits_out=logits)  # prefill + 4 cached steps
    want = hf_logits(model, full[:, :-1])
    assert_close(np.concatenate(logits, axis=1), want, "reference cached")
    feeds = make_feeds(full[:, :6], cfg=ref.cfg)
    result = runner.infer(feeds)
    steps = [result["logits"]]
    for t in range(6, full.shape[1] - 1):
        past = {f"past_key_values.{k.split('.', 1)[1]}": v for k, v in result.items() if k.startswith("present.")}
        feeds = make_feeds(full[:, t : t + 1], np.ones((1, t + 1), np.int64), past, cfg=ref.cfg)
        result = runner.infer(feeds)
        steps.append(result["logits"])
    assert_close(np.concatenate(steps, axis=1), want, "cpu cached")


def test_left_padded_batch_equals_each_row_alone(oracle, tmp_path):
    path, model = oracle("gelu_erf")
    ref = ReferenceModel(path)
    out = export(path, tmp_path / "cpu", target="cpu", progress=False)
    rows = [np.array([5, 17, 42, 8, 99, 3]), np.array([61, 2, 7])]
    ids = np.zeros((2, 6), np.int64)
    mask = np.zeros((2, 6), np.int64)
    for b, r in enumerate(rows):
        ids[b, 6 - len(r):], mask[b, 6 - len(r):] = r, 1
    batch_ref = ref.forward(ids, mask).logits
    batch_ort = OrtRunner(out).infer(make_feeds(ids, mask, cfg=ref.cfg))["logits"]
    for b, r in enumerate(rows):
        alone = hf_logits(model, r[None])[0]
        assert_close(batch_ref[b, 6 - len(r):], alone, f"reference row {b}")
        assert_close(batch_ort[b, 6 - len(r):], alone, f"cpu row {b}")


def test_prompt_past_n_positions_is_a_clear_error(oracle):
    path, _ = oracle("gelu_erf")  # n_positions 40
    ref = ReferenceModel(path)
    ref.forward(np.zeros((1, 40), np.int64))  # positions 0..39: fine
    with pytest.raises(MxportError, match=r"position 40 is past .* n_positions=40"):
        ref.forward(np.zeros((1, 41), np.int64))
    with pytest.raises(MxportError, match=r"n_positions=40"):
        ref.generate_greedy(np.zeros((1, 38), np.int64), 5)


def test_numpy_activations_match_transformers():
    from transformers.activations import ACT2FN

    from mxport.runtime.oracle.layers import activation

    x = np.linspace(-12, 12, 2001, dtype=np.float64)
    for name in ACTIVATIONS:
        want = ACT2FN[name](torch.tensor(x)).numpy()
        np.testing.assert_allclose(activation(x, name), want, rtol=1e-9, atol=1e-9, err_msg=name)


def test_float64_reference_and_hidden_states(oracle):
    path, model = oracle("odd")
    ids = np.random.default_rng(4).integers(0, 101, (1, 9))
    with torch.no_grad():
        out = model(torch.tensor(ids), output_hidden_states=True)
    ref = ReferenceModel(path, dtype=np.float64).forward(ids, return_hidden_states=True)
    assert ref.logits.dtype == np.float64
    assert_close(ref.logits, out.logits.numpy(), "float64 reference")
    # transformers' hidden_states: embeddings, then after each block (the last one after ln_f instead)
    for i, h in enumerate(ref.hidden_states[:-1]):
        want = out.hidden_states[i + 1].numpy()
        assert np.abs(h - want).max() / np.abs(want).max() <= 1e-5, f"hidden state {i}"
