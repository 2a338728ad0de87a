"""`--engine genai`: an onnxruntime-genai model folder (its builder's output or any mxport export folder), run by
genai's own generator: `append_tokens` of the prompt, then one appended token per decode step, logits read with
`get_output("logits")` after each call (every prompt position when the graph returns them all, which the builder's
and mxport's graphs do; else the last position only, said in the report). Hidden states: genai returns only the
outputs its config names, so logits only. Tokenizer: genai's own (og.Tokenizer over the folder's tokenizer files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mxport.contract import io
from mxport.contract.folder import GENAI_FILE, MODEL_FILE
from mxport.errors import MxportError
from mxport.runtime.judge.engines import Engine, Step
from mxport.runtime.judge.engines.onnx_hf import folder_lossy


class GenaiEngine(Engine):
    def __init__(self, folder: Path, cfg: Any, *, threads: int | None = None, max_tokens: int = 256) -> None:
        super().__init__(name="genai", target=str(folder))
        try:
            import onnxruntime_genai as og
        except ImportError as exc:
            raise MxportError("--engine genai needs onnxruntime-genai (pip install -e \".[bench]\")") from exc
        config_file = folder / GENAI_FILE
        if not config_file.is_file():
            raise MxportError(f"{folder}: no {GENAI_FILE} (not an onnxruntime-genai model folder)")
        try:
            genai_cfg = json.loads(config_file.read_text())
            decoder = genai_cfg["model"]["decoder"]
            vocab = int(genai_cfg["model"]["vocab_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise MxportError(f"{config_file}: not a genai config ({exc})") from exc
        if vocab != cfg.vocab_size:
            raise MxportError(f"{config_file}: vocab_size {vocab}, but the checkpoint's is {cfg.vocab_size}")
        window = int((decoder.get("sliding_window") or {}).get("window_size", 0) or 0)
        self._max_length = max(max_tokens + 1, window + 2)
        self._og = og
        try:
            config = og.Config(str(folder))
            if threads is not None:
                config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                    "intra_op_num_threads": int(threads), "inter_op_num_threads": 1}}}}))
            self.model = og.Model(config)
        except Exception as exc:  # genai raises RuntimeError / its own errors
            raise MxportError(f"{folder}: onnxruntime-genai cannot load the model: {exc}") from exc
        model_file = folder / str(decoder.get("filename", MODEL_FILE))
        self.lossy = folder_lossy(model_file)
        self.describe = f"onnxruntime-genai {og.__version__} on {model_file}"
        self.notes.append("per-layer hidden states: genai returns only the outputs its config names (logits only)")
        try:
            tokenizer = og.Tokenizer(self.model)
            self.encode = lambda text: [int(t) for t in tokenizer.encode(text)]
        except Exception as exc:  # a folder without tokenizer files: no tokenizer to compare
            self.notes.append(f"genai has no tokenizer for this folder ({exc})")
        self._gen = None

    def _logits(self) -> np.ndarray:
        try:
            out = np.asarray(self._gen.get_output(io.LOGITS), np.float32)
        except Exception as exc:
            raise MxportError(f"{self.target}: genai gives no {io.LOGITS!r} output: {exc}") from exc
        return out.reshape(-1, out.shape[-1])

    def _append(self, ids: np.ndarray) -> None:
        try:
            self._gen.append_tokens(ids)
        except Exception as exc:  # ORT / genai errors: the model does not run on this engine
            raise MxportError(f"{self.target}: onnxruntime-genai fails to run the model: {exc}") from exc

    def prefill(self, ids: np.ndarray) -> Step:
        self.reset()
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=self._max_length, do_sample=False)
        self._gen = self._og.Generator(self.model, params)
        self._append(np.asarray(ids, np.int32)[None])
        logits = self._logits()
        if logits.shape[0] != len(ids):
            if logits.shape[0] != 1:
                raise MxportError(f"{self.target}: genai returned logits for {logits.shape[0]} of {len(ids)} positions")
            self.logits_source = "last position of each call (the graph returns only those)"
        return Step(logits)

    def decode(self, token: int) -> Step:
        self._append(np.array([[token]], np.int32))
        return Step(self._logits()[-1:])

    def reset(self) -> None:
        self._gen = None

    def close(self) -> None:
        self._gen = None
        self.model = None

