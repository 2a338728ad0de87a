"""`mxport bench` plumbing on the tiny preset (speed itself is not tested: benchmarks are not timed tests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mxport.cli import main
from mxport.errors import MxportError
from mxport.exporter.export import export
from mxport.runtime import bench


@pytest.fixture(scope="module")
def tiny_export(tiny_config, make_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "cpu-fp32"
    export(make_checkpoint(tiny_config), out, target="cpu", experts="fp32", progress=False)
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


def test_bench_an_export_folder(tiny_export, tmp_path):
    cfg, out = tiny_export
    results, bandwidth = bench.bench(out, threads=1, prompt_len=4, new_tokens=2, bandwidth_mb=16, rounds=2,
                                      log=lambda _: None)
    (r,) = results
    assert not r.error, r.error
    assert r.name == "mxport cpu/fp32"
    assert r.prefill_tok_s > 0 and r.decode_tok_s > 0 and r.peak_rss > 0 and bandwidth > 0
    assert r.file_bytes == sum(f.stat().st_size for f in out.iterdir() if f.name.startswith("model.onnx"))
    table = bench.format_results(results, bandwidth)
    assert "mxport cpu/fp32" in table and "GB/s" in table


def test_cli_writes_json(tiny_export, tmp_path, capsys):
    _, out = tiny_export
    path = tmp_path / "bench.json"
    code = main(["bench", str(out), "--threads", "1", "--prompt-len", "3", "--new-tokens", "1", "--json", str(path)])
    assert code == 0
    data = json.loads(path.read_text())
    assert data["results"][0]["decode_tok_s"] > 0 and np.isfinite(data["bandwidth"])


def test_bad_path_is_an_mxport_error(tmp_path):
    with pytest.raises(MxportError, match="neither a checkpoint"):
        bench.bench(tmp_path, log=lambda _: None)
    with pytest.raises(MxportError, match="--rounds must be >= 1"):
        bench.bench(tmp_path, rounds=0, log=lambda _: None)
    with pytest.raises(MxportError, match="is not a folder"):
        bench.bench(tmp_path / "missing", log=lambda _: None)
