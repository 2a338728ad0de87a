"""Prefill and decode of an mxport export on one ONNX Runtime thread, in CPU time, for A/B runs of kernel builds.

    python examples/kernels_cpu_time.py EXPORT [--library SO] [--prompt-len 128] [--new-tokens 32] [--repeats 3]

On a loaded machine wall time mostly measures the other processes; with one intra-op thread the process's CPU
time is the model's own work (memory stalls included, time spent descheduled not). `--library` runs another build
of mxport's kernel library instead of the installed one (a copy of main's, say), so two builds compare on the same
export in alternating runs; MXPORT_KERNELS_ISA=avx512|avx2|c picks a path of either. Prints the best of
`--repeats` runs: prompt tokens and decode steps per CPU second, wall-time rates beside them, the load average.
The "Kernels" section of docs/BENCHMARKS.md comes from this script.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def measure(folder: str, library: str | None, prompt_len: int, new_tokens: int, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` rates: prefill / decode tokens per CPU second and per wall second."""
    import onnxruntime as ort

    from mxport.contract.folder import read_manifest
    from mxport.ops import native
    from mxport.runtime.execution.step_model import OrtStepModel

    vocab = int(read_manifest(folder).config["vocab_size"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    installed = native.library_path
    if library:
        native.library_path = lambda: Path(library)  # for this session only: restored below
    try:
        model = OrtStepModel(folder, "cpu", session_options=so)
    finally:
        native.library_path = installed
    rng = np.random.default_rng(0)

    def run(n_prompt: int, n_new: int) -> tuple[float, float, float, float]:
        ids = rng.integers(0, vocab, (1, n_prompt)).astype(np.int64)
        mask = np.ones_like(ids)
        c0, w0 = time.process_time(), time.perf_counter()
        logits, cache = model.step(ids, mask, np.arange(n_prompt, dtype=np.int64)[None],
                                   model.new_cache(1, capacity=n_prompt + n_new))
        c1, w1 = time.process_time(), time.perf_counter()
        for i in range(n_new):
            nxt = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
            mask = np.ones((1, mask.shape[1] + 1), np.int64)
            logits, cache = model.step(nxt, mask, np.array([[n_prompt + i]], np.int64), cache)
        c2, w2 = time.process_time(), time.perf_counter()
        return c1 - c0, c2 - c1, w1 - w0, w2 - w1

    run(min(8, prompt_len), 2)  # warm-up
    times = [run(prompt_len, new_tokens) for _ in range(repeats)]
    best = [max(min(t[i] for t in times), 1e-9) for i in range(4)]
    return {"prefill_cpu": prompt_len / best[0], "decode_cpu": new_tokens / best[1],
            "prefill_wall": prompt_len / best[2], "decode_wall": new_tokens / best[3]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--library", help="a kernel library to register instead of the installed one")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    r = measure(args.export, args.library, args.prompt_len, args.new_tokens, args.repeats)
    print(f"prefill {r['prefill_cpu']:8.1f} tok/s cpu ({r['prefill_wall']:8.1f} wall)  decode {r['decode_cpu']:7.2f} "
          f"tok/s cpu ({r['decode_wall']:7.2f} wall)  load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
