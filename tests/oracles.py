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


def save_transformers_gpt2(path, *, seed: int = 0, std: float = 0.3, dtype: str = "float32", **config):
    """A random GPT2LMHeadModel (eval) saved with save_pretrained to `path` (float32 or bfloat16 safetensors);
    returns the float32 model of what was saved (the oracle).

    Weights are redrawn N(0, std) (norm scales around 1) so that every layer matters to the logits."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = {"vocab_size": 101, "n_positions": 40, "n_embd": 48, "n_layer": 2, "n_head": 3,
              "bos_token_id": 100, "eos_token_id": 100, **config}
    model = GPT2LMHeadModel(GPT2Config(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0, std)
    if dtype == "bfloat16":  # round the weights, then the oracle runs on exactly what was saved
        model = model.to(torch.bfloat16)
        model.save_pretrained(path)
        return model.float().eval()
    model.save_pretrained(path)
    return model


def make_transformers_qwen3(path, *, seed: int = 0, dtype: str = "float32", **config):
    """A random tiny Qwen3ForCausalLM saved with save_pretrained into `path` (float32 or bfloat16 safetensors);
    returns the float32 eval-mode model that was saved (the oracle). Norm weights are drawn around 1 (transformers
    initialises them to exactly 1, which would hide a missing or misplaced norm)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "embed_tokens" in name and model.config.tie_word_embeddings:
                p.mul_(20.0)  # a tied table is also the head: give the logits some spread
    if dtype == "bfloat16":  # round the weights, then the oracle runs on exactly what was saved
        model = model.to(torch.bfloat16)
        model.save_pretrained(path)
        return model.float().eval()
    model.save_pretrained(path)
    return model
