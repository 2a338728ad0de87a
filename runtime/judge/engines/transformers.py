"""`--engine transformers`: AutoModelForCausalLM from the checkpoint folder itself, float32 (MXFP4 experts
dequantized), eager attention, its DynamicCache kept between calls. Hidden states: transformers' own
`output_hidden_states`, whose entry i+1 is the residual stream after layer i for every layer but the last (the last
has the final norm applied, so it is not compared). Tokenizer: AutoTokenizer from the same folder.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mxport.errors import MxportError
from mxport.runtime.judge.engines import Engine, Step


class TransformersEngine(Engine):
    def __init__(self, checkpoint: Path, cfg: Any, *, threads: int | None = None) -> None:
        super().__init__(name="transformers", target=str(checkpoint))
        try:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM
        except ImportError as exc:
            raise MxportError("--engine transformers needs torch and transformers (pip install -e \".[bench]\")") from exc
        if threads is not None:
            torch.set_num_threads(int(threads))
        kwargs: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": "eager"}
        try:
            config = json.loads((checkpoint / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise MxportError(f"{checkpoint / 'config.json'}: cannot read it: {exc}") from exc
        if (config.get("quantization_config") or {}).get("quant_method") == "mxfp4":
            from transformers import Mxfp4Config

            kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(str(checkpoint), **kwargs).eval()
        except Exception as exc:  # transformers raises many types for a folder it cannot read
            raise MxportError(f"{checkpoint}: transformers cannot load the model: {exc}") from exc
        self._torch = torch
        self.cfg = cfg
        self.describe = f"transformers {transformers.__version__} (torch {torch.__version__}), float32, eager attention"
        self.per_layer = f"transformers' output_hidden_states (layers 0..{cfg.num_hidden_layers - 2}; the last is normed)"
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(checkpoint))
            self.encode = lambda text: list(tok.encode(text, add_special_tokens=False))
        except Exception as exc:  # no tokenizer files: nothing to compare
            self.notes.append(f"transformers has no tokenizer for this checkpoint ({exc})")
        self._past = None

    def _call(self, ids: np.ndarray) -> Step:
        torch = self._torch
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # newer transformers rename past_key_values
            out = self.model(input_ids=torch.from_numpy(np.asarray(ids, np.int64)[None]), past_key_values=self._past,
                             use_cache=True, output_hidden_states=True)
        self._past = out.past_key_values
        hidden = {i: out.hidden_states[i + 1][0].float().numpy() for i in range(self.cfg.num_hidden_layers - 1)}
        return Step(out.logits[0].float().numpy(), hidden)

    def reset(self) -> None:
        self._past = None

    def close(self) -> None:
        self._past = self.model = None
