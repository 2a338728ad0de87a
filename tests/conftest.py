"""Shared fixtures: the tiny preset and cached synthetic checkpoints (built once per test session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxport.exporter.families.gpt_oss.config import GptOssConfig
from mxport.exporter.synth import PRESETS, write_checkpoint


@pytest.fixture(scope="session")
def tiny_config() -> GptOssConfig:
    """PRESETS["tiny"]: 2 layers (sliding, full; window 8), hidden 64, 4/2 heads of 16, 8 experts top-2, vocab 512."""
    return PRESETS["tiny"]


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """make_checkpoint(cfg, layout="hf", seed=0, max_shard_bytes=None) -> Path of a synthetic checkpoint.

    Cached per (cfg, layout, seed, max_shard_bytes) for the whole session: treat the folder as read-only."""
    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("checkpoints")

    def make(cfg: GptOssConfig, layout: str = "hf", seed: int = 0, max_shard_bytes: int | None = None) -> Path:
        key = (cfg, layout, seed, max_shard_bytes)
        if key not in cache:
            cache[key] = write_checkpoint(
                root / f"ckpt{len(cache)}-{layout}-s{seed}", cfg, layout=layout, seed=seed,
                max_shard_bytes=max_shard_bytes,
            )
        return cache[key]

    return make
