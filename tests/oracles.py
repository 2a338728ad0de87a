"""Oracles shared by tests: reference implementations outside mxport (transformers on CPU)."""

from __future__ import annotations

import json
from pathlib import Path


def load_transformers_gpt_oss(path):
    """transformers' GptOssForCausalLM from a checkpoint folder (HF layout), float32, eval mode, CPU.

    MXFP4 experts are dequantized on load (Mxfp4Config(dequantize=True)); dense-expert checkpoints load as is.
    """
    import torch
    from transformers import GptOssForCausalLM, Mxfp4Config

    path = Path(path)
    kwargs = {}
    if "quantization_config" in json.loads((path / "config.json").read_text()):
        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    model = GptOssForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu", **kwargs)
    model = model.float()  # dequantized experts come out in the checkpoint's dtype on some versions
    return model.eval()
