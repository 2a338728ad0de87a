"""Where the time of an mxport engine goes: ONNX Runtime's profiler over one prefill and its cached decode steps.

    profile_mxport(FOLDER, threads, prompt_len, new_tokens) -> {"prefill": {kind: µs}, "decode": {kind: µs},
                                                                "decode_steps": n, "ops": {op: µs of decode}}
    shares(times) -> {kind: fraction}                       # of the node time of that phase

`mxport bench --profile` runs it as a bench child for each mxport engine after the timed runs (profiling slows a
run down, so its times are not the table's) and prints the share of node time in each KIND (MoE, matmuls,
attention, other nodes) for prefill and decode, the decode node time per step and the bytes a step reads.
Node times are ORT's kernel times (its "Node" events, `op_name`); the phases are told apart by the session's
"model_run" events: after a warm-up (a short prefill and 2 steps, left out), the first is the prefill, the rest
the decode steps.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

KINDS = {
    "MoE": ("MoE", "QMoE", "MoE_2", "MoEMXFP4", "MoEMXFP4_2", "SparseMoE"),
    "matmul": ("MatMul", "MatMulNBits", "FusedMatMul", "Gemm", "LinearBF16", "LinearQ4", "MatMulInteger"),
    "attention": ("GroupQueryAttention", "Attention", "MultiHeadAttention", "RotaryEmbedding", "Softmax"),
}
ORDER = ("MoE", "matmul", "attention", "other")


def kind_of(op: str) -> str:
    return next((kind for kind, ops in KINDS.items() if op in ops), "other")


def split_trace(events: list[dict[str, Any]], skip_runs: int = 0) -> dict[str, Any]:
    """ORT profile events -> node µs per kind for the first model_run after `skip_runs` (the prefill) and the
    later ones (decode steps); nodes of the skipped runs (a warm-up) are left out."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")[skip_runs:]
    phases = {"prefill": dict.fromkeys(ORDER, 0.0), "decode": dict.fromkeys(ORDER, 0.0)}
    ops: dict[str, float] = {}
    for e in events:
        op = (e.get("args") or {}).get("op_name")
        if e.get("cat") != "Node" or not op or not runs:
            continue
        index = next((i for i, (start, end) in enumerate(runs) if start <= e["ts"] <= end), None)
        if index is None:
            continue
        phase = "prefill" if index == 0 else "decode"
        phases[phase][kind_of(op)] += e["dur"]
        if phase == "decode":
            ops[op] = ops.get(op, 0.0) + e["dur"]
    return {**phases, "decode_steps": max(len(runs) - 1, 0), "ops": ops}


def shares(times: dict[str, float]) -> dict[str, float]:
    total = sum(times.values())
    return {k: (v / total if total else float("nan")) for k, v in times.items()}


def profile_mxport(folder: str, threads: int, prompt_len: int, new_tokens: int) -> dict[str, Any]:
    """One profiled prefill of `prompt_len` random ids and `new_tokens` cached greedy steps on mxport's runner
    (native kernels registered), after an unprofiled warm-up in the same session."""
    import onnxruntime as ort

    from mxport.contract.folder import read_manifest
    from mxport.runtime.execution.step_model import OrtStepModel

    vocab = int(read_manifest(folder).config["vocab_size"])
    with tempfile.TemporaryDirectory(prefix="mxport-profile-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        model = OrtStepModel(folder, "cpu", session_options=so)
        ids = np.random.default_rng(0).integers(3, vocab, size=(1, prompt_len), dtype=np.int64)

        def run(n_prompt: int, n_new: int) -> None:
            mask = np.ones((1, n_prompt), np.int64)
            logits, cache = model.step(ids[:, :n_prompt], mask, np.arange(n_prompt, dtype=np.int64)[None],
                                       model.new_cache(1, capacity=n_prompt + n_new))
            for i in range(n_new):
                nxt = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
                mask = np.ones((1, mask.shape[1] + 1), np.int64)
                logits, cache = model.step(nxt, mask, np.array([[n_prompt + i]], np.int64), cache)

        run(min(prompt_len, 8), 2)  # warm-up: 3 runs (prefill, 2 steps), left out of the split below
        run(prompt_len, new_tokens)
        events = json.loads(Path(model.session.end_profiling()).read_text())
    return split_trace(events, skip_runs=3)


COLUMNS = ("engine", "phase", "ms/call", *ORDER, "MB/token", "GB/s")


def format_profile(rows: list[tuple[str, int, dict[str, Any]]]) -> list[str]:
    """Lines of the profile table: per engine (name, bytes per token, profile_mxport's dict) its prefill and decode
    rows: node ms per call (a decode call is one step), the share of each kind, and for decode the bytes a step
    reads and those bytes over the step's node time."""
    table = []
    for name, per_token, prof in rows:
        for phase, calls in (("prefill", 1), ("decode", prof.get("decode_steps") or 0)):
            times = prof.get(phase) or {}
            ms = sum(times.values()) / 1e3 / calls if calls else float("nan")
            share = shares(times)
            gbs = (f"{per_token / (ms / 1e3) / 1e9:.1f}" if phase == "decode" and ms == ms and ms > 0 and per_token
                   else "")
            table.append((name.removeprefix("mxport "), phase, f"{ms:.2f}",
                          *(f"{share[k]:.0%}" if share.get(k) == share.get(k) else "-" for k in ORDER),
                          f"{per_token / 1e6:.1f}" if phase == "decode" else "", gbs))
    if not table:
        return []
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(c.rjust(w) if i > 1 else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return ["", "where the time goes (ORT profiler, node time; MoE / matmul / attention / other nodes)",
            line(COLUMNS), line(tuple("-" * w for w in widths))] + [line(row) for row in table]
