"""From a trained transformers GptOssForCausalLM to a Hugging Face gpt-oss checkpoint folder, and back.

    experts gate_up_proj [E, H, 2I] (input-major, as transformers holds them)
        -> transpose [E, 2I, H] -> mxport.ops.mxfp4.encode -> gate_up_proj_blocks [E, 2I, H/32, 16] + _scales
    experts down_proj    [E, I, H]  -> [E, H, I] -> down_proj_blocks [E, H, I/32, 16] + _scales
    everything else      -> bfloat16

Also the fake quantisers of the quantisation-aware fine-tune (straight-through: the forward sees the stored
values, the gradient passes as if unquantised): MXFP4 for the experts' weights, bfloat16 for the rest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from mxport.exporter.checkpoint import expected_tensors
from mxport.exporter.families.gpt_oss.config import GptOssConfig
from mxport.files import replace_dir, temp_dir_beside
from mxport.ops import mxfp4

EXPERT_WEIGHTS = ("gate_up_proj", "down_proj")
_E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_MIDPOINTS = (_E2M1[1:] + _E2M1[:-1]) / 2


def fake_mxfp4(w: torch.Tensor) -> torch.Tensor:
    """[E, K, N] with blocks of 32 along K -> the MXFP4-representable values (OCP scale rule, nearest E2M1)."""
    E, K, N = w.shape
    x = w.transpose(1, 2).reshape(E, N, K // mxfp4.BLOCK_SIZE, mxfp4.BLOCK_SIZE)
    amax = x.abs().amax(-1, keepdim=True).clamp_min(2.0**-120)
    scale = torch.exp2(torch.floor(torch.log2(amax)) - mxfp4.E2M1_EMAX)
    s = (x / scale).clamp(-mxfp4.E2M1_MAX, mxfp4.E2M1_MAX)
    q = _E2M1[torch.bucketize(s.abs().contiguous(), _MIDPOINTS)] * torch.sign(s)
    return (q * scale).reshape(E, N, K).transpose(1, 2)


class _STE(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            q = self.fn(w)
        return w + (q - w).detach()


def _bf16(w: torch.Tensor) -> torch.Tensor:
    return w.to(torch.bfloat16).to(w.dtype)


def add_fake_quant(model: nn.Module) -> None:
    """Every parameter's forward value becomes its stored value (MXFP4 experts, bf16 others)."""
    for name, _ in list(model.named_parameters()):
        module_name, _, pname = name.rpartition(".")
        module = model.get_submodule(module_name)
        fn = fake_mxfp4 if pname in EXPERT_WEIGHTS else _bf16
        parametrize.register_parametrization(module, pname, _STE(fn))


def remove_fake_quant(model: nn.Module) -> None:
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for pname in list(module.parametrizations):
                parametrize.remove_parametrizations(module, pname, leave_parametrized=False)


def checkpoint_tensors(model: nn.Module, cfg: GptOssConfig) -> dict[str, torch.Tensor]:
    """The stored tensors of the checkpoint, named and shaped as mxport's expected_tensors(cfg) says."""
    out = {}
    for name, p in model.state_dict().items():
        p = p.detach().float()
        base = name.rpartition(".")[2]
        if base in EXPERT_WEIGHTS:
            blocks, scales = mxfp4.encode(p.transpose(1, 2).contiguous().numpy())  # [E, R, C/32, 16], [E, R, C/32]
            out[name + "_blocks"] = torch.from_numpy(blocks)
            out[name + "_scales"] = torch.from_numpy(scales)
        else:
            out[name] = p.to(torch.bfloat16).contiguous()
    want = {e.name: tuple(e.shape) for e in expected_tensors(cfg)}
    got = {k: tuple(v.shape) for k, v in out.items()}
    if want != got:
        raise RuntimeError(f"checkpoint tensors differ from mxport's expected set: "
                           f"{sorted(set(want.items()) ^ set(got.items()))[:6]}")
    return out


def write_hf_checkpoint(model: nn.Module, cfg: GptOssConfig, tokenizer_dir: Path, out_dir: Path,
                        extra: dict | None = None) -> Path:
    """config.json (quantization_config mxfp4), model.safetensors, tokenizer files, training.json; atomic."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out_dir)
    try:
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
        gen = {"bos_token_id": None, "eos_token_id": list(cfg.eos_token_ids), "pad_token_id": cfg.pad_token_id,
               "do_sample": False}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        save_file(checkpoint_tensors(model, cfg), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for f in sorted(Path(tokenizer_dir).iterdir()):
            shutil.copy(f, tmp / f.name)
        if extra is not None:
            (tmp / "training.json").write_text(json.dumps(extra, indent=2) + "\n")
        for f in tmp.iterdir():  # safetensors writes 0600; the folder ships as package data, readable by all
            f.chmod(0o644)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_shipped(folder: Path, **kwargs) -> nn.Module:
    """The checkpoint as transformers reads it (MXFP4 dequantized), float32, eval mode."""
    from transformers import GptOssForCausalLM, Mxfp4Config

    model = GptOssForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu",
                                              quantization_config=Mxfp4Config(dequantize=True), **kwargs)
    return model.float().eval()
