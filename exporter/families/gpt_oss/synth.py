"""gpt-oss's synthetic experts: MXFP4 halves from one encode, or dense bf16 experts holding the same values.

    init_std_mean(name, cfg)                          the Family.init hook: (std, mean) of each canonical tensor
    synth_tensor(put, cfg, seed, e, sources, done)   the Family.synth hook (exporter/synth.py calls it per tensor)
    expert_rows(name, cfg, seed)                      out-major expert rows [E, R, C] as (expert, first row, chunk)

Both expert forms are drawn from the same rows (generic synth's generator, seeded by (seed, canonical name)), so an
MXFP4 and a float-experts checkpoint of one seed hold the same numbers.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from mxport.exporter.families.base import CHUNK_VALUES, Expected, rng_for
from mxport.exporter.families.gpt_oss.config import GptOssConfig
from mxport.ops import mxfp4


def init_std_mean(name: str, cfg: GptOssConfig) -> tuple[float, float]:
    """(std, mean) of the Gaussian a canonical tensor is drawn from: sensible magnitudes, norms around 1."""
    H, I = cfg.hidden_size, cfg.intermediate_size
    attn = cfg.num_attention_heads * cfg.head_dim
    if name.endswith("norm.weight"):
        return 0.1, 1.0
    if name.endswith("sinks"):
        return 0.5, 0.0
    if name.endswith("bias"):
        return 0.02, 0.0
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        return 0.02, 0.0
    if "o_proj" in name:
        return 1.0 / np.sqrt(attn), 0.0
    if "down_proj" in name:
        return 1.0 / np.sqrt(I), 0.0
    return 1.0 / np.sqrt(H), 0.0  # q, k, v, router, gate_up: fan_in H


def expert_weight_name(name: str) -> str:
    """Canonical experts weight a stored tensor comes from: '...gate_up_proj' for '_blocks', '_scales' or dense."""
    for suffix in mxfp4.HF_SUFFIXES:
        name = name.removesuffix(suffix)
    return name



def expert_rows(name: str, cfg: GptOssConfig, seed: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Out-major expert weight [E, R, C] (gate_up: R = 2I, C = H; down: R = H, C = I) as (expert, first row, chunk).

    Both the MXFP4 and the dense variant are made from these values, so they hold the same numbers."""
    E, H, I = cfg.num_experts, cfg.hidden_size, cfg.intermediate_size
    R, C = (2 * I, H) if name.endswith("gate_up_proj") else (H, I)
    std, _ = init_std_mean(name, cfg)
    rng = rng_for(seed, name)
    step = max(1, CHUNK_VALUES // C)
    for e in range(E):
        for start in range(0, R, step):
            rows = min(step, R - start)
            chunk = rng.standard_normal((rows, C), dtype=np.float32)
            chunk *= np.float32(std)
            yield e, start, chunk


def write_experts(put, cfg: GptOssConfig, seed: int, weight: str, sources: dict) -> None:
    """One experts weight (…gate_up_proj or …down_proj): MXFP4 halves, or dense bf16 input-major [E, C, R]."""
    H, I = cfg.hidden_size, cfg.intermediate_size
    R, C = (2 * I, H) if weight.endswith("gate_up_proj") else (H, I)
    if cfg.experts_mxfp4:
        names = [weight + s for s in mxfp4.HF_SUFFIXES]
        blocks_name, scales_name = (sources[n].stored if sources else n for n in names)
        nb = C // mxfp4.BLOCK_SIZE
        for e, start, chunk in expert_rows(weight, cfg, seed):
            blocks, scales = mxfp4.encode(chunk)  # [rows, nb, 16], [rows, nb]
            put(blocks_name, blocks, (e * R + start) * nb * mxfp4.BYTES_PER_BLOCK)
            put(scales_name, scales, (e * R + start) * nb)
        return
    # Dense: the MXFP4-representable values (so dense and MXFP4 checkpoints of one seed agree), input-major.
    current, rows = -1, None
    for e, start, chunk in expert_rows(weight, cfg, seed):
        if e != current:
            current, rows = e, np.empty((R, C), dtype=np.float32)
        rows[start : start + len(chunk)] = mxfp4.decode(*mxfp4.encode(chunk))
        if start + len(chunk) == R:
            put(weight, rows.T.astype(mxfp4.BFLOAT16), e * R * C * np.dtype(mxfp4.BFLOAT16).itemsize)


def synth_tensor(put, cfg: GptOssConfig, seed: int, e: Expected, sources: dict, done: set[str]) -> bool:
    """Experts for synthetic checkpoints: MXFP4 halves from one encode, or dense bf16 experts (input-major)."""
    if e.packed:  # blocks and scales come out of one encode: write both halves on the first of them
        weight = expert_weight_name(e.name)
        if weight not in done:
            done.add(weight)
            write_experts(put, cfg, seed, weight, sources)
        return True
    if e.name.endswith(("experts.gate_up_proj", "experts.down_proj")):  # float (bf16) experts
        write_experts(put, cfg, seed, e.name, sources)
        return True
    return False
