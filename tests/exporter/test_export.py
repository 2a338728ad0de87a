"""export(): the exported graph against the NumPy reference model and transformers, KV cache, padding,
onnx.reference with function bodies only, storage, determinism, atomicity, options and CLI.

One tiny synthetic checkpoint per layout (the session-wide make_checkpoint fixture), exported once per module
with the float32 defaults; most tests run on those.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mxport.cli import main as cli_main
from mxport.errors import MxportError
from mxport.exporter import export as export_mod
from mxport.exporter.export import export
from mxport.exporter.synth import PRESETS, write_checkpoint
from mxport.runtime.judge.compare import FLOAT32_TOLERANCES, compare
from mxport.runtime.oracle.model import ReferenceModel

CFG = PRESETS["tiny"]  # layers (sliding, full), window 8
SEQ = 19  # > 2 * window: the window matters in prefill and in cached decoding


@pytest.fixture(scope="module")
def checkpoints(make_checkpoint) -> dict[str, Path]:
    return {layout: make_checkpoint(CFG, layout=layout) for layout in ("hf", "original")}


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    return {
        layout: export(ckpt, root / layout, progress=False, hidden_states=True) for layout, ckpt in checkpoints.items()
    }


def session(export_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feeds: dict) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def feeds_for(ids: np.ndarray, mask: np.ndarray | None = None, past: list | None = None) -> dict[str, np.ndarray]:
    """Model feeds for new tokens `ids` [B,S] after `past` (per layer (k, v)), left padding from `mask`."""
    B, S = ids.shape
    P = 0 if past is None else max(k.shape[2] for k, _ in past)  # sliding layers may hold fewer (window cache)
    mask = np.ones((B, P + S), np.int64) if mask is None else mask
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)[:, P:]
    feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64), "position_ids": positions}
    for i in range(CFG.num_hidden_layers):
        empty = np.zeros((B, CFG.num_key_value_heads, 0, CFG.head_dim), np.float32)
        k, v = (empty, empty) if past is None else past[i]
        feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = k, v
    return feeds


def presents(out: dict) -> list:
    return [(out[f"present.{i}.key"], out[f"present.{i}.value"]) for i in range(CFG.num_hidden_layers)]


def random_ids(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, shape)


# ---- numbers ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["hf", "original"])
def test_ort_matches_reference_model(exported, checkpoints, layout):
    feeds = feeds_for(random_ids((2, SEQ)))
    ours = run(session(exported[layout]), feeds)
    ref = ReferenceModel(checkpoints[layout], window_cache=True).infer(feeds, hidden_states=True)
    report = compare(ours, ref, FLOAT32_TOLERANCES)
    assert report, str(report)
    assert set(ref) <= set(ours) and "hidden_states.1" in report


@pytest.mark.oracle
@pytest.mark.parametrize("layout", ["hf", "original"])
def test_ort_matches_transformers(exported, checkpoints, layout):
    oracles = pytest.importorskip("oracles")
    torch = pytest.importorskip("torch")
    model = oracles.load_transformers_gpt_oss(checkpoints["hf"])  # the original layout holds the same weights
    ids = random_ids((2, SEQ), seed=1)
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)).logits.float().numpy()
    ours = run(session(exported[layout]), feeds_for(ids))
    report = compare({"logits": ours["logits"]}, {"logits": expected}, FLOAT32_TOLERANCES)
    assert report, str(report)


def test_dense_expert_checkpoint_exports_float_experts_exactly(tmp_path):
    """A dense checkpoint (transformers' own save of a randomly initialised model, whose expert values are not
    MXFP4 values) exports through the float ai.mxport.MoE op: nothing is re-quantized, logits match transformers."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_cfg = {k: v for k, v in CFG.to_hf_dict().items() if k != "quantization_config"}
    torch.manual_seed(0)
    model = transformers.GptOssForCausalLM(transformers.GptOssConfig(**hf_cfg)).eval()
    with torch.no_grad():  # make every parameter matter (transformers zero-initialises biases and sinks)
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(tmp_path / "dense")
    out = export(tmp_path / "dense", tmp_path / "out", progress=False)
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert {n.op_type for n in graph.node if n.domain == "ai.mxport"} == {"Attention", "MoE"}
    assert not [t.name for t in graph.initializer if t.name.endswith(("_blocks", "_scales"))]
    assert json.loads((out / "mxport.json").read_text())["checkpoint_experts"].startswith("float")
    ids = random_ids((2, SEQ), seed=7)
    with torch.no_grad():
        expected = model.float()(torch.from_numpy(ids)).logits.numpy()
    report = compare({"logits": run(session(out), feeds_for(ids))["logits"]}, {"logits": expected}, FLOAT32_TOLERANCES)
    assert report, str(report)


def test_cached_decoding_equals_prefill(exported):
    """Prefill 4 tokens, then one token per call past the sliding window: every step's logits = full prefill."""
    sess = session(exported["hf"])
    ids = random_ids((1, SEQ), seed=2)
    full = run(sess, feeds_for(ids))
    out = run(sess, feeds_for(ids[:, :4]))
    steps = [out["logits"]]
    for s in range(4, SEQ):
        out = run(sess, feeds_for(ids[:, s : s + 1], past=presents(out)))
        steps.append(out["logits"])
    decoded = np.concatenate(steps, axis=1)
    assert decoded.shape == full["logits"].shape
    assert compare({"logits": decoded}, {"logits": full["logits"]}, FLOAT32_TOLERANCES)
    for i in range(CFG.num_hidden_layers):
        for kv in ("key", "value"):
            np.testing.assert_allclose(out[f"present.{i}.{kv}"], full[f"present.{i}.{kv}"], rtol=1e-4, atol=1e-5)


def test_left_padded_batch_equals_rows_alone(exported):
    sess = session(exported["hf"])
    long_ids, short_ids = random_ids((1, SEQ), seed=3), random_ids((1, SEQ - 6), seed=4)
    pad = SEQ - short_ids.shape[1]
    batch = np.concatenate([long_ids, np.pad(short_ids, ((0, 0), (pad, 0)), constant_values=CFG.pad_token_id or 0)])
    mask = np.ones_like(batch)
    mask[1, :pad] = 0
    out = run(sess, feeds_for(batch, mask))
    alone = [run(sess, feeds_for(long_ids))["logits"][0], run(sess, feeds_for(short_ids))["logits"][0]]
    assert compare({"logits": out["logits"][0]}, {"logits": alone[0]}, FLOAT32_TOLERANCES)
    assert compare({"logits": out["logits"][1, pad:]}, {"logits": alone[1]}, FLOAT32_TOLERANCES)
    # one decode step on the padded batch = each row's own next step
    step = random_ids((2, 1), seed=5)
    nxt = run(sess, feeds_for(step, np.concatenate([mask, np.ones((2, 1), np.int64)], 1), presents(out)))
    for row, ids in enumerate((long_ids, short_ids)):
        own = run(sess, feeds_for(np.concatenate([ids, step[row : row + 1]], 1)))["logits"][0, -1]
        assert compare({"logits": nxt["logits"][row, -1]}, {"logits": own}, FLOAT32_TOLERANCES)


def test_window_cache_keeps_the_last_window_minus_one_slots(exported, checkpoints, tmp_path):
    """Sliding layers keep W-1 slots, full layers every slot; a left-padded batch decoded one token at a time past
    the window (pads fall off the sliding caches) gives the same logits as the full-cache export and as the
    reference model (window cache on and off)."""
    full_cache = export(checkpoints["hf"], tmp_path / "full", progress=False, window_cache=False)
    assert json.loads((full_cache / "mxport.json").read_text())["window_cache"] is False
    W = CFG.sliding_window
    ids = random_ids((2, SEQ), seed=11)
    mask = np.ones_like(ids)
    mask[1, :5] = 0  # row 1 is left-padded by 5
    ref = ReferenceModel(checkpoints["hf"], window_cache=True)
    ref_full = ReferenceModel(checkpoints["hf"])
    results = {}
    for name, runner in (("windowed", session(exported["hf"])), ("full", session(full_cache)), ("ref", ref),
                         ("ref_full", ref_full)):
        def call(feeds, runner=runner):
            return runner.infer(feeds) if isinstance(runner, ReferenceModel) else run(runner, feeds)

        out = call(feeds_for(ids[:, :3], mask[:, :3]))
        logits, lengths = [out["logits"]], []
        for s in range(3, SEQ):
            out = call(feeds_for(ids[:, s : s + 1], mask[:, : s + 1], presents(out)))
            logits.append(out["logits"])
            lengths.append([out[f"present.{i}.key"].shape[2] for i in range(CFG.num_hidden_layers)])
        results[name] = (np.concatenate(logits, axis=1), lengths)
    for i in range(CFG.num_hidden_layers):  # after the step that saw s+1 tokens
        windowed = [lengths[i] for lengths in results["windowed"][1]]
        want = [min(s + 1, W - 1) if CFG.window(i) else s + 1 for s in range(3, SEQ)]
        assert windowed == want, (i, windowed)
        assert [lengths[i] for lengths in results["full"][1]] == list(range(4, SEQ + 1))
        assert results["ref"][1] == results["windowed"][1]
    real = mask.astype(bool)[:, 2:]  # positions of the decoded logits (prefill's last + every step)
    got = results["windowed"][0][:, 2:]
    for other in ("full", "ref", "ref_full"):
        report = compare({"logits": got}, {"logits": results[other][0][:, 2:]}, FLOAT32_TOLERANCES,
                         masks={"logits": real})
        assert report, (other, str(report))


_REFERENCE_SCRIPT = """
import sys, numpy as np, onnx
from onnx.reference import ReferenceEvaluator
feeds = dict(np.load(sys.argv[2]))
model = onnx.load(sys.argv[1])
names = [o.name for o in model.graph.output]
out = ReferenceEvaluator(model).run(names, feeds)
assert not any(m.startswith("mxport") for m in sys.modules), "mxport was imported"
np.savez(sys.argv[3], **dict(zip(names, out)))
"""


def test_onnx_reference_runs_function_bodies_only(exported, tmp_path):
    """The model alone (ai.mxport function bodies, no mxport import) runs under onnx.reference and agrees with ORT."""
    export_dir = exported["hf"]
    feeds = feeds_for(random_ids((2, 6), seed=6))
    np.savez(tmp_path / "feeds.npz", **feeds)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-c", _REFERENCE_SCRIPT, str(export_dir / "model.onnx"), str(tmp_path / "feeds.npz"),
         str(tmp_path / "out.npz")],
        check=True, cwd=tmp_path, env=env, timeout=300,
    )
    theirs = dict(np.load(tmp_path / "out.npz"))
    ours = run(session(export_dir), feeds)
    report = compare(theirs, ours, FLOAT32_TOLERANCES)
    assert report, str(report)


# ---- what is stored -----------------------------------------------------------------------------------------
def test_experts_stored_as_uint8_blocks_and_graph_is_portable(exported):
    model = onnx.load(str(exported["hf"] / "model.onnx"), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    experts = [n for n in inits if ".mlp.experts." in n and not n.endswith("_bias")]
    assert len(experts) == 4 * CFG.num_hidden_layers
    assert {inits[n].data_type for n in experts} == {onnx.TensorProto.UINT8}
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    assert ("ai.mxport", "MoEMXFP4") in ops and ("ai.mxport", "Attention") in ops
    assert {d for d, _ in ops} == {"", "ai.mxport"}
    assert {o.domain: o.version for o in model.opset_import}[""] == 23
    assert {f.name for f in model.functions} >= {"MoEMXFP4", "Attention"}
    assert (exported["hf"] / "model.onnx.data").stat().st_size > 0
    onnx.checker.check_model(str(exported["hf"] / "model.onnx"))


def test_io_names_shapes_and_metadata(exported, checkpoints):
    model = onnx.load(str(exported["hf"] / "model.onnx"), load_external_data=False)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in
            [*model.graph.input, *model.graph.output]}
    L, Hkv, D = CFG.num_hidden_layers, CFG.num_key_value_heads, CFG.head_dim
    assert [v.name for v in model.graph.input][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert dims["input_ids"] == ["batch", "seq"] and dims["attention_mask"] == ["batch", "total_seq"]
    assert dims[f"past_key_values.{L - 1}.value"] == ["batch", Hkv, "past_seq", D]
    assert dims["logits"] == ["batch", "seq", CFG.vocab_size]
    assert dims[f"present.{L - 1}.key"] == ["batch", Hkv, "total_seq", D]  # full attention: every slot
    # layer 0 slides: a window-sized cache (the last W-1 slots), with its own dims
    assert dims["past_key_values.0.key"] == ["batch", Hkv, "past_seq_window", D]
    assert dims["present.0.key"] == ["batch", Hkv, "present_seq_window", D]
    assert dims[f"hidden_states.{L - 1}"] == ["batch", "seq", CFG.hidden_size]
    meta = json.loads((exported["hf"] / "mxport.json").read_text())
    assert meta["target"] == "portable" and meta["experts"] == "mxfp4" and meta["dtype"] == "float32"
    assert meta["window_cache"] is True
    assert meta["checkpoint"] == str(checkpoints["hf"].resolve())
    assert meta["config"]["num_hidden_layers"] == L and meta["eos_token_ids"] == list(CFG.eos_token_ids)
    assert meta["inputs"][0] == "input_ids" and meta["outputs"][0] == "logits"
    names = [n.name for n in model.graph.node]
    assert "layers.0/attn/q_proj" in names and f"layers.{L - 1}/moe/experts" in names


def test_tokenizer_files_are_copied(checkpoints, tmp_path):
    ckpt = tmp_path / "ckpt"
    write_checkpoint(ckpt, CFG, layout="hf")
    (ckpt / "tokenizer_config.json").write_text('{"x": 1}')
    (ckpt / "chat_template.jinja").write_text("{{ messages }}")
    out = export(ckpt, tmp_path / "out", progress=False)
    assert (out / "tokenizer_config.json").read_text() == '{"x": 1}'
    assert (out / "chat_template.jinja").read_text() == "{{ messages }}"
    assert not (out / "special_tokens_map.json").exists() or (ckpt / "special_tokens_map.json").exists()


# ---- determinism, atomicity, options ---------------------------------------------------------------------------
def _hashes(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_same_input_gives_identical_bytes(checkpoints, tmp_path):
    a = export(checkpoints["hf"], tmp_path / "a", progress=False)
    b = export(checkpoints["hf"], tmp_path / "b", progress=False)
    assert _hashes(a) == _hashes(b)
    assert {"model.onnx", "model.onnx.data", "mxport.json"} <= set(_hashes(a))
    umask = os.umask(0)
    os.umask(umask)
    assert a.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700


def test_failure_leaves_nothing_behind(checkpoints, tmp_path, monkeypatch):
    from mxport.exporter import checkpoint as ckpt_mod

    real_get = ckpt_mod.Checkpoint.get

    def failing_get(self, name):
        if name.endswith("mlp.router.weight"):
            raise MxportError(f"{name}: simulated read failure")
        return real_get(self, name)

    real_get_rows = ckpt_mod.Checkpoint.get_rows

    def failing_get_rows(self, name, start, stop):
        if name.endswith("mlp.router.weight"):
            failing_get(self, name)
        return real_get_rows(self, name, start, stop)

    monkeypatch.setattr(ckpt_mod.Checkpoint, "get", failing_get)
    monkeypatch.setattr(ckpt_mod.Checkpoint, "get_rows", failing_get_rows)
    monkeypatch.setattr(ckpt_mod.Checkpoint, "get_f32", lambda self, n: failing_get(self, n).astype(np.float32))
    with pytest.raises(MxportError, match="simulated read failure"):
        export(checkpoints["hf"], tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(MxportError, match="not empty"):
        export(checkpoints["hf"], out, progress=False)
    assert (out / "keep.txt").read_text() == "old"
    export(checkpoints["hf"], out, progress=False, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(MxportError, match="not a directory"):
        export(checkpoints["hf"], tmp_path / "file", progress=False, force=True)
    with pytest.raises(MxportError, match="would replace the checkpoint"):
        export(checkpoints["hf"], checkpoints["hf"].parent, progress=False, force=True)


@pytest.mark.parametrize("option", ["target", "experts", "dtype"])
def test_unknown_option_is_named(checkpoints, tmp_path, option):
    with pytest.raises(MxportError, match=f"unknown {option} 'bogus'"):
        export(checkpoints["hf"], tmp_path / "out", progress=False, **{option: "bogus"})
    assert not (tmp_path / "out").exists()


def test_bad_checkpoint_is_an_error(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(MxportError, match="config"):
        export(tmp_path / "ckpt", tmp_path / "out", progress=False)


def test_cli_export_and_exit_codes(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["export", str(checkpoints["hf"]), "-o", str(out), "--no-progress"]) == 0
    assert "exported" in capsys.readouterr().out
    assert cli_main(["export", str(checkpoints["hf"]), "-o", str(out), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli_main(["export", str(checkpoints["hf"]), "-o", str(out), "--force"]) == 0
    assert "%|" not in capsys.readouterr().err  # not a terminal: no progress bar (tests/test_progress.py)
    assert json.loads((out / "mxport.json").read_text())["window_cache"] is True
    assert cli_main(["export", str(checkpoints["hf"]), "-o", str(out), "--force", "--full-cache", "--no-progress"]) == 0
    assert json.loads((out / "mxport.json").read_text())["window_cache"] is False
    assert cli_main(["export", str(checkpoints["hf"]), "-o", str(tmp_path / "x"), "--target", "nope"]) == 2
    assert "unknown target 'nope'" in capsys.readouterr().err


def test_lower_seam_is_identity_for_portable(checkpoints):
    from mxport.exporter.checkpoint import open_checkpoint

    with open_checkpoint(checkpoints["hf"]) as ckpt:
        model = export_mod.build_portable(ckpt)
        assert export_mod.lower(model, target="portable", experts="mxfp4", dtype="float32") is model


@pytest.mark.parametrize("target, moe_op", [("portable", "ai.mxport::MoEMXFP4"), ("cpu", "com.microsoft::MoE")])
def test_experts_default_to_the_targets_exact_kernel(checkpoints, tmp_path, target, moe_op):
    """Without --experts, each target gets the fastest exact expert form its kernels run: MXFP4 bodies
    (portable), float32 com.microsoft.MoE (CPU, which has no MXFP4 kernel)."""
    out = export(checkpoints["hf"], tmp_path / target, target=target, progress=False)
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert moe_op in {f"{n.domain}::{n.op_type}" for n in graph.node}
    meta = json.loads((out / "mxport.json").read_text())
    assert meta["experts"] == ("mxfp4" if target == "portable" else "float32")


def test_tied_embeddings_without_lm_head(make_checkpoint, tmp_path):
    """A tied config stores no lm_head: the reader, the reference model and the export all use the embedding
    matrix as the output projection, and agree with transformers (which ties the weights itself)."""
    torch = pytest.importorskip("torch")
    oracles = pytest.importorskip("oracles")
    from mxport.exporter.checkpoint import open_checkpoint

    ckpt = make_checkpoint(CFG.replace(tie_word_embeddings=True))
    with open_checkpoint(ckpt) as c:
        assert "lm_head.weight" not in c.names()
    out = export(ckpt, tmp_path / "out", progress=False)
    ids = random_ids((2, SEQ), seed=3)
    with torch.no_grad():
        expected = oracles.load_transformers_gpt_oss(ckpt)(torch.from_numpy(ids)).logits.float().numpy()
    feeds = feeds_for(ids)
    ours = run(session(out), feeds)["logits"]
    assert compare({"logits": ours}, {"logits": expected}, FLOAT32_TOLERANCES)
    assert compare({"logits": ReferenceModel(ckpt).infer(feeds)["logits"]}, {"logits": expected}, FLOAT32_TOLERANCES)
