"""Decode speed of several engines measured side by side in one process, rounds interleaved in random order.

    python examples/decode_ab.py EXPORT [EXPORT ...] [og:GENAI_FOLDER ...] [--rounds 8] [--steps 12]

`mxport bench` runs each engine in its own process, one after the other, which is what memory numbers need; on a
shared machine whose memory bandwidth drifts by 10-30 % within minutes, that ordering puts the drift into the
ratios. Here every engine is loaded once, then each round runs a 128-token prompt and `--steps` greedy decode
steps on every engine in a fresh random order; the median step time over all rounds (first two steps of a round
dropped) is compared. An mxport export runs through `runtime.execution.step_model.OrtStepModel` (the static cache where the
graph allows it, as the Generator does); `og:FOLDER` runs an onnxruntime-genai folder through its own Generator.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from mxport.contract.folder import GENAI_FILE, read_manifest


class Mxport:
    def __init__(self, folder: str, threads: int) -> None:
        import onnxruntime as ort

        from mxport.runtime.execution.step_model import OrtStepModel

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        # the other engines run in this process too: this pool's threads must not spin on the cores after a step
        so.add_session_config_entry("session.force_spinning_stop", "1")
        self.model = OrtStepModel(folder, "cpu", session_options=so)
        self.vocab = int(read_manifest(folder).config["vocab_size"])

    def run(self, ids: np.ndarray, steps: int) -> list[float]:
        n = ids.shape[1]
        mask = np.ones_like(ids)
        logits, cache = self.model.step(ids, mask, np.arange(n)[None], self.model.new_cache(1, capacity=n + steps))
        times = []
        for i in range(steps):
            token = logits[:, -1].argmax(-1)[:, None]
            mask = np.ones((1, n + i + 1), np.int64)
            t = time.perf_counter()
            logits, cache = self.model.step(token, mask, np.array([[n + i]]), cache)
            times.append(time.perf_counter() - t)
        return times


class Genai:
    def __init__(self, folder: str, threads: int) -> None:
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(folder)
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        self.vocab = int(json.loads((Path(folder) / GENAI_FILE).read_text())["model"]["vocab_size"])

    def run(self, ids: np.ndarray, steps: int) -> list[float]:
        params = self.og.GeneratorParams(self.model)
        total = ids.shape[1] + steps + 1
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(ids)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            generator.generate_next_token()
            times.append(time.perf_counter() - t)
        return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engines", nargs="+", help="export folders; og:FOLDER for an onnxruntime-genai folder")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    engines = {name: (Genai(name[3:], args.threads) if name.startswith("og:") else Mxport(name, args.threads))
               for name in args.engines}
    vocab = min(engine.vocab for engine in engines.values())
    ids = np.random.default_rng(0).integers(3, vocab, (1, args.prompt_len))
    times: dict[str, list[float]] = {name: [] for name in engines}
    order = list(engines)
    for _ in range(args.rounds):
        random.shuffle(order)
        for name in order:
            times[name] += engines[name].run(ids, args.steps)[2:]
    first = None
    for name in args.engines:
        ms = float(np.median(times[name])) * 1e3
        first = first or ms
        print(f"{name:40s} decode {ms:7.2f} ms/step  {1e3 / ms:7.2f} tok/s  {first / ms:5.2f}x the first")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
