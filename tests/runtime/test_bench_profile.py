"""`mxport bench --profile` (runtime/bench/profile.py): node times split by phase and kind from ORT's profiler."""

from __future__ import annotations

import pytest

from mxport.exporter.export import export
from mxport.runtime.bench import profile, speed


def _run(ts: int, dur: int) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def _node(op: str, ts: int, dur: int) -> dict:
    return {"cat": "Node", "name": f"{op}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_split_trace_skips_the_warm_up_and_splits_prefill_from_decode():
    events = [_run(0, 10), _node("MatMul", 1, 5),  # warm-up: left out
              _run(100, 50), _node("MoEMXFP4", 101, 30), _node("LinearBF16", 140, 10), _node("Add", 145, 2),
              _run(200, 20), _node("GroupQueryAttention", 201, 4), _node("LinearQ4", 206, 6),
              _run(300, 20), _node("MatMulNBits", 301, 6), _node("Reshape", 310, 1),
              _node("MatMul", 500, 99)]  # outside every run: left out
    split = profile.split_trace(events, skip_runs=1)
    assert split["decode_steps"] == 2
    assert split["prefill"] == {"MoE": 30, "matmul": 10, "attention": 0, "other": 2}
    assert split["decode"] == {"MoE": 0, "matmul": 12, "attention": 4, "other": 1}
    assert split["ops"] == {"GroupQueryAttention": 4, "LinearQ4": 6, "MatMulNBits": 6, "Reshape": 1}
    assert profile.shares(split["decode"])["matmul"] == pytest.approx(12 / 17)


def test_bench_profile_reports_each_mxport_engine(tiny_config, make_checkpoint, tmp_path):
    out = export(make_checkpoint(tiny_config), tmp_path / "mx", target="cpu", experts="mxfp4", dense="bfloat16",
                 progress=False)
    (r,), bandwidth = speed.bench(out, prompt_len=6, new_tokens=3, bandwidth_mb=1, profile=True)
    assert not r.error and r.profile["decode_steps"] == 3, (r.error, r.notes)
    assert {"MoEMXFP4", "LinearBF16", "GroupQueryAttention"} <= set(r.profile["ops"])  # native kernels profiled
    assert r.profile["prefill"]["MoE"] > 0 and r.profile["decode"]["matmul"] > 0
    lines = speed.format_results([r], bandwidth).splitlines()
    at = lines.index("where the time goes (ORT profiler, node time; MoE / matmul / attention / other nodes)")
    prefill, decode = lines[at + 3], lines[at + 4]
    assert prefill.split()[:2] == ["cpu/mxfp4/bfloat16", "prefill"] and decode.split()[1] == "decode"
    shares = [int(cell.rstrip("%")) for cell in decode.split()[3:7]]
    assert 97 <= sum(shares) <= 103  # rounded shares of one whole
    assert decode.split()[7] == f"{r.bytes_per_token / 1e6:.1f}"
    assert max(len(line) for line in lines) <= speed.TABLE_WIDTH
