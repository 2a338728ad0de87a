"""`mxport bench` plumbing on the tiny preset (speed itself is not tested: benchmarks are not timed tests)."""

from __future__ import annotations

import json
import tempfile

import numpy as np
import pytest

from mxport.cli import main
from mxport.errors import MxportError
from mxport.exporter.export import export
from mxport.runtime.bench import speed as bench


@pytest.fixture(scope="module")
def tiny_export(tiny_config, make_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "cpu-float32"
    export(make_checkpoint(tiny_config), out, target="cpu", experts="float32", progress=False)
    return tiny_config, out


def test_traffic_counts_k_of_e_experts_and_one_embedding_row(tiny_export):
    cfg, out = tiny_export
    total, per_token = bench.onnx_traffic(out / "model.onnx")
    H, I, E, k, V, L = (cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.experts_per_token,
                        cfg.vocab_size, cfg.num_hidden_layers)
    experts = L * E * (2 * I * H + H * I) * 4  # fp32 expert matrices
    embed = V * H * 2  # bf16 table, read by Gather
    assert total > experts + embed
    # per token: everything except (1 - k/E) of the expert matrices and all embedding rows but one; bf16 dense
    # matrices behind a Cast to float32 count twice (ORT folds the Cast at load and reads the float32 copy)
    expert_biases = L * E * (2 * I + H) * 4
    skipped = (experts + expert_biases) * (1 - k / E) + embed * (1 - 1 / V)
    import onnx

    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    cast_bf16 = sum(bench._tensor_bytes(inits[n.input[0]]) for n in model.graph.node
                    if n.op_type == "Cast" and n.input[0] in inits)
    assert cast_bf16 > 0
    assert per_token == pytest.approx(total - skipped + cast_bf16, rel=1e-6)


MEMORY = ("baseline_rss", "load_rss", "load_anon_rss", "load_file_rss", "runtime_rss", "peak_rss")


def test_bench_an_export_folder(tiny_export, tmp_path):
    cfg, out = tiny_export
    results, bandwidth = bench.bench(out, threads=1, prompt_len=4, new_tokens=2, bandwidth_mb=16, rounds=2,
                                      log=lambda _: None)
    (r,) = results
    assert not r.error, r.error
    assert r.name == "mxport cpu/float32"
    assert r.prefill_tok_s > 0 and r.decode_tok_s > 0
    assert bandwidth.read > 0 and bandwidth.copy > 0 and bandwidth.threads == 1
    assert r.file_bytes == sum(f.stat().st_size for f in out.iterdir() if f.name.startswith("model.onnx"))
    # one process's memory, in the order it happens: imports, then the session on top, and no VmRSS above VmHWM
    assert all(getattr(r, name) > 0 for name in MEMORY), {name: getattr(r, name) for name in MEMORY}
    assert r.baseline_rss <= r.load_rss <= r.peak_rss and r.runtime_rss <= r.peak_rss
    assert r.load_anon_rss + r.load_file_rss <= r.load_rss  # VmRSS = RssAnon + RssFile + RssShmem
    assert r.runtime_per_weights() == pytest.approx((r.runtime_rss - r.baseline_rss) / r.weight_bytes)
    assert r.peak_per_weights() == pytest.approx(r.peak_rss / r.weight_bytes)
    table = bench.format_results(results, bandwidth)
    header, columns, _, row = table.splitlines()
    assert "read" in header and "copy" in header and "GB/s" in header
    for name in ("load RSS MB", "runtime RSS MB", "peak RSS MB", "runtime/weights", "peak/weights", "bw share"):
        assert name in columns
    assert row.startswith("mxport cpu/float32") and f"{r.peak_rss / 1e6:.0f}" in row


def test_child_reports_memory_of_each_phase(tiny_export):
    _, out = tiny_export
    measured = bench._child("mxport", str(out), 1, 3, 1, timeout=120)
    assert "error" not in measured, measured
    assert set(MEMORY) <= set(measured)
    assert 0 < measured["baseline_rss"] <= measured["load_rss"] <= measured["peak_rss"]
    assert 0 < measured["runtime_rss"] <= measured["peak_rss"]


def test_keep_best_takes_memory_from_one_measurement():
    r = bench.Result("x", "p", weight_bytes=100)
    one = dict(load_s=1.0, prefill_s=1.0, decode_s=1.0, baseline_rss=10, load_rss=50, load_anon_rss=30,
               load_file_rss=20, runtime_rss=60, peak_rss=90)
    two = {**one, "baseline_rss": 12, "load_rss": 40, "runtime_rss": 70, "peak_rss": 80}
    bench._keep_best(r, one, 4, 2)
    bench._keep_best(r, two, 4, 2)  # lower peak: its memory numbers are not mixed in
    assert [getattr(r, name) for name in MEMORY] == [10, 50, 30, 20, 60, 90]
    assert r.runtime_per_weights() == pytest.approx(0.5) and r.peak_per_weights() == pytest.approx(0.9)


def test_json_of_a_failed_engine_is_strict_json():
    bw = bench.Bandwidth(read=1e10, copy=2e10, threads=2)
    data = bench.to_json([bench.Result("genai int4", "", error="builder failed")], bw, threads=2)
    (r,) = json.loads(json.dumps(data, allow_nan=False))["results"]
    assert r["error"] == "builder failed" and r["decode_tok_s"] is None and r["runtime_per_weights"] is None
    assert data["bandwidth"] == {"read": 1e10, "copy": 2e10, "threads": 2} and data["threads"] == 2


def test_memory_bandwidth_reports_read_and_copy():
    bw = bench.memory_bandwidth(8, repeats=2, threads=2)
    assert bw.threads == 2 and np.isfinite(bw.read) and bw.read > 0 and np.isfinite(bw.copy) and bw.copy > 0


def test_cli_writes_json(tiny_export, tmp_path, capsys):
    _, out = tiny_export
    path = tmp_path / "bench.json"
    code = main(["bench", str(out), "--threads", "1", "--prompt-len", "3", "--new-tokens", "1", "--json", str(path)])
    assert code == 0
    data = json.loads(path.read_text())
    (r,) = data["results"]
    assert r["decode_tok_s"] > 0 and data["bandwidth"]["read"] > 0 and data["bandwidth"]["copy"] > 0
    assert all(r[name] > 0 for name in MEMORY)
    assert r["runtime_per_weights"] == pytest.approx((r["runtime_rss"] - r["baseline_rss"]) / r["weight_bytes"])
    assert r["peak_per_weights"] == pytest.approx(r["peak_rss"] / r["weight_bytes"])
    assert r["bandwidth_share"] == pytest.approx(r["decode_tok_s"] * r["bytes_per_token"] / data["bandwidth"]["read"])
    assert "runtime RSS MB" in capsys.readouterr().out
    assert [f.name for f in tmp_path.iterdir()] == ["bench.json"]  # written atomically, no temporary left


def test_bad_path_is_an_mxport_error(tmp_path):
    with pytest.raises(MxportError, match="neither a checkpoint"):
        bench.bench(tmp_path, log=lambda _: None)
    with pytest.raises(MxportError, match="--rounds must be >= 1"):
        bench.bench(tmp_path, rounds=0, log=lambda _: None)
    with pytest.raises(MxportError, match="is not a folder"):
        bench.bench(tmp_path / "missing", log=lambda _: None)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """tempfile's default folder, here: every mkdtemp bench makes lands in it."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_failing_bench_leaves_no_work_folder(tiny_config, make_checkpoint, scratch, tmp_path):
    neither = tmp_path / "neither"
    neither.mkdir()
    with pytest.raises(MxportError, match="neither a checkpoint"):
        bench.bench(neither, log=lambda _: None)
    ckpt = make_checkpoint(tiny_config)
    with pytest.raises(MxportError, match=r"expected TARGET\[/EXPERTS\[/DENSE\]\]"):
        bench.bench(ckpt, modes=["cpu/float32/float32/x"], log=lambda _: None)
    with pytest.raises(MxportError, match="nope"):  # fails inside export, after bench made its work folder
        bench.bench(ckpt, modes=["nope/float32"], log=lambda _: None)
    assert list(scratch.iterdir()) == []


def test_given_work_folder_is_kept_on_failure(tiny_config, make_checkpoint, scratch, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(MxportError, match="nope"):
        bench.bench(make_checkpoint(tiny_config), modes=["nope/float32"], work=work, log=lambda _: None)
    assert work.is_dir() and list(scratch.iterdir()) == []


def test_drop_page_cache_evicts_every_file_of_a_folder(tmp_path, monkeypatch):
    """Each engine starts from the same page-cache state: its files are fsynced and evicted before its child runs."""
    import os

    from mxport.runtime.bench import speed as bench_mod

    (tmp_path / "model.onnx").write_bytes(b"x" * 10)
    (tmp_path / "model.onnx.data").write_bytes(b"y" * 10)
    (tmp_path / "sub").mkdir()
    advised = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: advised.append(advice) or real(fd, off, n, advice))
    bench_mod.drop_page_cache(tmp_path)
    assert advised == [os.POSIX_FADV_DONTNEED] * 2
    bench_mod.drop_page_cache(tmp_path / "model.onnx")
    bench_mod.drop_page_cache(tmp_path / "missing")  # nothing to do, no error
    assert len(advised) == 3


def test_default_modes_follow_whether_the_model_has_experts(tiny_config, make_checkpoint, tmp_path):
    from mxport.exporter.synth import PRESETS, write_checkpoint
    from mxport.contract.modes import label
    from mxport.runtime.bench.speed import DEFAULT_MODES, NO_EXPERTS_MODES, default_modes

    assert default_modes(make_checkpoint(tiny_config)) == DEFAULT_MODES
    assert default_modes(write_checkpoint(tmp_path / "q3", PRESETS["qwen3-tiny"])) == NO_EXPERTS_MODES
    assert label(target="cpu", experts="none", dense="int4") == "cpu dense-int4"
    assert label(target="cpu", experts="int4", dense="int4") == "cpu/int4/int4"
