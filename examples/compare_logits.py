"""Prompt logits of several exports against a reference export, on the same random prompts: relative error,
top-1 agreement and KL (runtime.judge.compare), e.g. a lossy mode and onnxruntime-genai's build against the exact one.

    python examples/compare_logits.py REFERENCE_EXPORT OTHER [OTHER ...] [--prompts 4] [--len 64]

Every folder is run by a plain ONNX Runtime session (mxport's native kernels registered) with an empty cache;
a graph without a `position_ids` input (onnxruntime-genai's) gets none. Prompts are uniform random token ids.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mxport.contract import io
from mxport.contract.folder import GENAI_FILE, manifest_file, model_path, read_manifest


def vocab_size(folder: Path) -> int:
    if manifest_file(folder).is_file():
        return int(read_manifest(folder).config["vocab_size"])
    return int(json.loads((folder / GENAI_FILE).read_text())["model"]["vocab_size"])


def prompt_logits(folder: Path, ids: np.ndarray, threads: int) -> np.ndarray:
    import onnxruntime as ort

    from mxport.runtime.execution.step_model import mxport_options

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path(folder)), mxport_options(so), providers=["CPUExecutionProvider"])
    batch, length = ids.shape
    mask = np.ones_like(ids)
    feeds = {io.INPUT_IDS: ids, io.ATTENTION_MASK: mask}
    for i in session.get_inputs():
        if i.name == io.POSITION_IDS:
            feeds[i.name] = io.position_ids(mask, length)
        elif i.name.startswith(io.PAST):
            heads, dim = i.shape[1], i.shape[3]
            if not isinstance(dim, int):  # onnxruntime-genai's graphs leave the head size symbolic
                decoder = json.loads((folder / GENAI_FILE).read_text())["model"]["decoder"]
                heads, dim = decoder["num_key_value_heads"], decoder["head_size"]
            feeds[i.name] = io.empty_cache(batch, heads, dim)
    return session.run([io.LOGITS], feeds)[0]


def main(argv: list[str] | None = None) -> int:
    from mxport.runtime.judge.compare import Tolerance, compare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("others", type=Path, nargs="+")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    vocab = min(vocab_size(f) for f in [args.reference, *args.others])
    ids = np.random.default_rng(args.seed).integers(3, vocab, (args.prompts, args.len))
    want = prompt_logits(args.reference, ids, args.threads)
    for folder in args.others:
        got = prompt_logits(folder, ids, args.threads)
        report = compare({io.LOGITS: got}, {io.LOGITS: want}, {io.LOGITS: Tolerance(rel=float("inf"))})
        print(f"{folder}\n{report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
