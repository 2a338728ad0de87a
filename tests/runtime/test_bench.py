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
    # a tiny model's step fits any last-level cache: no share of memory bandwidth, no probe ("cache" in the table)
    assert r.fits_cache == (r.bytes_per_token <= bench.last_level_cache())
    if r.fits_cache:
        assert np.isnan(r.read_bandwidth) and np.isnan(r.bandwidth_share())
    else:  # a machine reporting no cache: the share against memory bandwidth
        assert r.bandwidth_share() == pytest.approx(r.decode_tok_s * r.bytes_per_token / r.read_bandwidth)
    table = bench.format_results(results, bandwidth)
    header, columns, _, row = table.splitlines()
    assert "read" in header and "copy" in header and "GB/s" in header and "16 MiB" in header
    for name in ("load RSS MB", "peak RSS MB", "MB/token", "bw share"):
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
    bw = bench.Bandwidth(read=1e10, copy=2e10, threads=2, size=1 << 28)
    data = bench.to_json([bench.Result("genai int4", "", error="builder failed")], bw, threads=2)
    (r,) = json.loads(json.dumps(data, allow_nan=False))["results"]
    assert r["error"] == "builder failed" and r["decode_tok_s"] is None and r["runtime_per_weights"] is None
    assert r["read_bandwidth"] is None and r["bandwidth_share"] is None
    assert data["bandwidth"] == {"read": 1e10, "copy": 2e10, "threads": 2, "size": 1 << 28} and data["threads"] == 2


def test_memory_bandwidth_reports_read_and_copy():
    bw = bench.memory_bandwidth(8, repeats=2, threads=2)
    assert bw.threads == 2 and np.isfinite(bw.read) and bw.read > 0 and np.isfinite(bw.copy) and bw.copy > 0
    assert bw.size == 8 << 20 and bench.memory_bandwidth(1.5, repeats=1).size == 3 << 19  # MiB, fractions too


def test_cli_writes_json(tiny_export, tmp_path, capsys):
    _, out = tiny_export
    path = tmp_path / "bench.json"
    # --cache-mb 0: no cache to fit, so the tiny step gets a share of memory bandwidth (and its probe) in the JSON
    code = main(["bench", str(out), "--threads", "1", "--prompt-len", "3", "--new-tokens", "1", "--cache-mb", "0",
                 "--json", str(path)])
    assert code == 0
    data = json.loads(path.read_text())
    (r,) = data["results"]
    assert r["decode_tok_s"] > 0 and data["bandwidth"]["read"] > 0 and data["bandwidth"]["copy"] > 0
    assert all(r[name] > 0 for name in MEMORY)
    assert r["runtime_per_weights"] == pytest.approx((r["runtime_rss"] - r["baseline_rss"]) / r["weight_bytes"])
    assert r["peak_per_weights"] == pytest.approx(r["peak_rss"] / r["weight_bytes"])
    assert r["bandwidth_share"] == pytest.approx(r["decode_tok_s"] * r["bytes_per_token"] / r["read_bandwidth"])
    assert r["runtime_rss"] > 0 and r["read_bandwidth"] > 0  # the details the table leaves out
    out = capsys.readouterr().out
    assert "peak RSS MB" in out and max(len(line) for line in out.splitlines()) <= bench.TABLE_WIDTH
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


def test_default_modes_hold_each_familys_recommended_exact_and_compact_modes():
    """docs/LOWERING.md "Which mode to choose": the exact fast mode and the compact mode are always measured."""
    from mxport.contract.modes import parse_label
    from mxport.runtime.bench.speed import (DEFAULT_MODES, NO_EXPERTS_MODES, NO_EXPERTS_RECOMMENDED_MODES,
                                            RECOMMENDED_MODES)

    assert set(RECOMMENDED_MODES.values()) <= set(DEFAULT_MODES)
    assert set(NO_EXPERTS_RECOMMENDED_MODES.values()) <= set(NO_EXPERTS_MODES)
    exact = parse_label(RECOMMENDED_MODES["exact"])  # gpt-oss' exact fast mode: --experts mxfp4 --dense bfloat16
    assert (exact["target"], exact["experts"], exact["dense"]) == ("cpu", "mxfp4", "bfloat16")
    compact = parse_label(RECOMMENDED_MODES["compact"])
    assert (compact["experts"], compact["dense"]) == ("int4", "int4")
    assert parse_label(NO_EXPERTS_RECOMMENDED_MODES["exact"])["dense"] == "bfloat16"
    assert parse_label(NO_EXPERTS_RECOMMENDED_MODES["compact"])["dense"] == "q4"


def test_table_fits_120_columns_with_every_default_engine():
    """Every default mode (with +last), the peers and an error, with large numbers: no line past 120 columns."""
    from mxport.runtime.bench.speed import DEFAULT_MODES, NO_EXPERTS_MODES

    names = [f"mxport {m}+last" for m in (*DEFAULT_MODES, *NO_EXPERTS_MODES)]
    names += ["transformers fp32", "genai fp32", "genai int4"]
    results = [bench.Result(n, "p", file_bytes=123_456_789_012, weight_bytes=123_456_789_012,
                            bytes_per_token=12_345_678_901, prefill_tok_s=12345.6, decode_tok_s=1234.56,
                            load_rss=123_456_789_012, peak_rss=123_456_789_012, read_bandwidth=9.9e10)
               for n in names]
    results.append(bench.Result("genai int4", "", error="builder failed: " + "x" * 60))
    table = bench.format_results(results, bench.Bandwidth(read=3.5e10, copy=2.1e10, threads=2, size=256 << 20))
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= bench.TABLE_WIDTH, max(lines, key=len)
    assert len(lines) == 3 + len(results) and lines[-1].startswith("genai int4: error: builder failed")


def test_bw_share_is_of_memory_bandwidth_measured_beyond_the_cache(tiny_export, monkeypatch):
    """bw share divides a step's bytes per second by a read bandwidth measured over an array no cache holds
    (4 x the last-level cache, or the step's own bytes if larger), with the bench's threads, after each of the
    engine's runs (best kept); a step that fits the cache gets no share ("cache"): from cache it may read faster
    than memory, which let the share read 170 % when it was measured against one fixed 256 MB probe."""
    _, out = tiny_export
    calls = []

    def fake(megabytes, repeats=10, threads=1):
        calls.append((megabytes, threads))
        read = 1e9 * len(calls)  # each probe reads faster: the best one must be kept
        return bench.Bandwidth(read=read, copy=read, threads=threads, size=int(megabytes * (1 << 20)))

    monkeypatch.setattr(bench, "memory_bandwidth", fake)
    monkeypatch.setattr(bench, "last_level_cache", lambda: 100)  # 100 bytes: the tiny step goes beyond it
    heard = []
    (r,), header = bench.bench(out, threads=2, prompt_len=3, new_tokens=2, bandwidth_mb=16, rounds=2,
                                log=lambda _: None, progress=lambda *call: heard.append(call))
    assert heard == [("measure", 0, 2, "it"), ("measure", 1, 2, "it"), ("measure", 2, 2, "it")]  # engine runs
    assert not r.error, r.error
    assert calls == [(16, 2), (256, 2), (256, 2)]  # at least 256 MiB, whatever the step's size
    assert header.read == 1e9 and r.read_bandwidth == 3e9 and not r.fits_cache
    assert r.bandwidth_share() == pytest.approx(r.decode_tok_s * r.bytes_per_token / 3e9)
    monkeypatch.setattr(bench, "last_level_cache", lambda: 100 << 20)  # now the step fits the cache
    (r,), header = bench.bench(out, threads=2, prompt_len=3, new_tokens=2, bandwidth_mb=16, log=lambda _: None)
    assert len(calls) == 4  # the header's probe only: a step in cache is not compared with memory
    assert r.fits_cache and np.isnan(r.bandwidth_share())
    assert bench.format_results([r], header).splitlines()[-1].endswith("cache")
    # --cache-mb: the cache the machine really gives (a VM may report more): here none, so the step gets a share
    (r,), _ = bench.bench(out, threads=2, prompt_len=3, new_tokens=2, bandwidth_mb=16, cache_bytes=0)
    assert not r.fits_cache and calls[-1] == (256, 2) and r.bandwidth_share() > 0
    with pytest.raises(MxportError, match="--cache-mb must be >= 0"):
        bench.bench(out, cache_bytes=-1)
    assert np.isnan(bench.Result("x", "p", bytes_per_token=10, decode_tok_s=5.0).bandwidth_share())  # unmeasured


def test_probe_size_is_beyond_the_cache_and_bounded(monkeypatch):
    """A step beyond the cache is probed over 4 x the cache (at least 256 MiB) or its own bytes if more, at most
    MAX_PROBE_BYTES and a quarter of the available memory; one that fits the cache is not probed."""
    sizes = []

    def fake(megabytes, repeats=10, threads=1):
        sizes.append(megabytes * (1 << 20))
        return bench.Bandwidth(read=1e9, copy=1e9, threads=threads)

    monkeypatch.setattr(bench, "memory_bandwidth", fake)
    small, mid, big = (bench.Result(n, "p", bytes_per_token=b) for n, b in
                       (("small", 1000), ("mid", 3 << 30), ("big", 1 << 40)))
    for r in (small, mid, big):
        bench._measure_read_bandwidth(r, 2, cache=48 << 20)
    bench._measure_read_bandwidth(bench.Result("no cache", "p", bytes_per_token=1000), 2, cache=0)
    bench._measure_read_bandwidth(bench.Result("beside", "p", bytes_per_token=100 << 20), 2, cache=96 << 20)
    assert sizes == [3 << 30, bench.MAX_PROBE_BYTES, 256 << 20, 384 << 20]  # small fits: not probed
    assert [r.fits_cache for r in (small, mid, big)] == [True, False, False]
    monkeypatch.setattr(bench, "available_memory", lambda: 1 << 30)
    bench._measure_read_bandwidth(big, 2, cache=48 << 20)
    assert sizes[-1] == 256 << 20


def test_last_level_cache_reads_the_largest_reported_cache(tmp_path):
    from mxport.runtime.bench.engines import last_level_cache

    for name, size in (("index0", "48K"), ("index2", "2048K"), ("index3", "491520K")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "size").write_text(size + "\n")
    assert last_level_cache(str(tmp_path)) == 480 << 20
    assert last_level_cache(str(tmp_path / "none")) == 0
