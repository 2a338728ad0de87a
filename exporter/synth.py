"""Synthetic checkpoints of any family: deterministic random weights in the published layouts, written tensor by tensor.

    write_checkpoint("ckpt", PRESETS["tiny"], layout="hf", seed=0)       # config.json + model.safetensors
    tensor_table(PRESETS["mini"], "original", None)                      # what it would hold, as text
    (`mxport synth`, mxport/commands/synth.py, is the command line over these)

Every canonical tensor draws from its own generator, seeded by (seed, canonical name), in row chunks whose size
depends only on the tensor's shape. So the HF and original layouts (and any sharding) hold the same weights for
the same seed, and no more than one chunk (~4M values; one expert for float experts) of float data is alive:

    Gaussian float32 chunk --(bf16)--------------------------------> dense tensor bytes at their offset
                           --(ops.mxfp4.encode)--> blocks, scales -> both tensors' bytes at their offsets
                           --(encode, decode, transpose)-----------> float experts (bf16, input-major)

The safetensors files are written by `SafetensorsWriter`: header first (offsets known from the config), then
each tensor's bytes written at its offset, so nothing needs the whole checkpoint (or a whole tensor) in memory.
Output is atomic: everything goes to a temporary sibling folder that is renamed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Iterator

import numpy as np

from mxport.contract.progress import Progress, report
from mxport.errors import MxportError
from mxport.files import remove_stale, replace_dir, temp_dir_beside
from mxport.exporter.checkpoint import INDEX_FILE, expected_tensors, layout_sources, stored_tensors
from mxport.exporter import families
from mxport.exporter.families.base import CHUNK_VALUES, DecoderConfig, rng_for
from mxport.ops import mxfp4

DEFAULT_SHARD_BYTES = 5 * 10**9  # the published gpt-oss repos use ~5 GB shards

PRESETS: dict[str, DecoderConfig] = families.presets()  # every family's, by name (tiny, mini, qwen3-tiny, ...)


# ---- how each tensor is initialised ------------------------------------------------------------------------------
def init_std_mean(name: str, cfg: DecoderConfig) -> tuple[float, float]:
    """(std, mean) of the Gaussian a canonical tensor is drawn from: the family's choice, else fan-in scaled."""
    if cfg.family.init is not None:
        return cfg.family.init(name, cfg)
    if name.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight")):
        return 0.1, 1.0
    return 0.02, 0.0  # weights and biases alike


def gaussian_rows(name: str, shape: tuple[int, ...], cfg: DecoderConfig, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first row, float32 chunk [rows, *shape[1:]]) covering the tensor; deterministic per (seed, name)."""
    std, mean = init_std_mean(name, cfg)
    rng = rng_for(seed, name)
    row_values = int(np.prod(shape[1:], dtype=np.int64))
    step = max(1, CHUNK_VALUES // max(row_values, 1))
    for start in range(0, shape[0], step):
        rows = min(step, shape[0] - start)
        chunk = rng.standard_normal((rows,) + tuple(shape[1:]), dtype=np.float32)
        chunk *= np.float32(std)
        chunk += np.float32(mean)
        yield start, chunk


# ---- streaming safetensors writer ---------------------------------------------------------------------------------
_ST_NAME = {np.dtype(mxfp4.BFLOAT16): "BF16", np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32"}


class SafetensorsWriter:
    """Write one .safetensors file without holding its tensors: header first, then bytes at known offsets.

    Format (safetensors spec): 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape,
    data_offsets [begin, end)}} (padded with spaces to a multiple of 8), then the tensors' bytes back to back.
    `put` may be called in any order and in pieces; `close` checks that every byte of every tensor was written.
    """

    def __init__(self, path: Path, tensors: list[tuple[str, tuple[int, ...], np.dtype]], metadata: dict | None = None):
        self.path = path
        header: dict = {"__metadata__": metadata or {"format": "np"}}
        self._offsets: dict[str, tuple[int, int]] = {}
        pos = 0
        for name, shape, dtype in tensors:
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            header[name] = {"dtype": _ST_NAME[np.dtype(dtype)], "shape": list(shape), "data_offsets": [pos, pos + size]}
            self._offsets[name] = (pos, pos + size)
            pos += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._base = 8 + len(raw)
        self._written = dict.fromkeys(self._offsets, 0)
        self._file = open(path, "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._file.truncate(self._base + pos)

    def put(self, name: str, array: np.ndarray, offset: int = 0) -> None:
        """Write `array`'s bytes (C order) into tensor `name`, `offset` bytes from the tensor's start."""
        begin, end = self._offsets[name]
        data = np.ascontiguousarray(array)
        if begin + offset + data.nbytes > end:
            raise ValueError(f"{self.path}: {name}: write of {data.nbytes} bytes at {offset} overruns {end - begin}")
        self._file.seek(self._base + begin + offset)
        self._file.write(data.view(np.uint8).data if data.ndim else data.tobytes())
        self._written[name] += data.nbytes

    def close(self) -> None:
        """Close the file (idempotent) and check that every tensor was completely written."""
        self._file.close()
        short = {n: (w, e - b) for n, w in self._written.items() for b, e in [self._offsets[n]] if w != e - b}
        if short:
            raise RuntimeError(f"{self.path}: tensors not completely written (written, size): {short}")


# ---- planning: stored tensors, dtypes, shards ---------------------------------------------------------------------
def stored_plan(cfg: DecoderConfig, layout: str) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """(stored name, shape, dtype) of every tensor the layout stores: bf16 dense, uint8 MXFP4 halves."""
    if layout not in cfg.family.layouts:
        raise MxportError(f"layout {layout!r} is not supported for {cfg.family.name} "
                          f"(expected {' or '.join(repr(x) for x in cfg.family.layouts)})")
    bf16, u8 = np.dtype(mxfp4.BFLOAT16), np.dtype(np.uint8)
    return [(e.name, e.shape, u8 if e.packed else bf16) for e in stored_tensors(cfg, layout)]


def shard_plan(plan: list, max_shard_bytes: int | None) -> list[list]:
    """Split the plan greedily, in order, into shards of at most max_shard_bytes (a bigger tensor gets its own)."""
    if not max_shard_bytes:
        return [plan]
    shards: list[list] = [[]]
    size = 0
    for item in plan:
        nbytes = int(np.prod(item[1], dtype=np.int64)) * item[2].itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    return shards


def plan_bytes(plan: list) -> int:
    return sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for _, s, d in plan)


# ---- writing -------------------------------------------------------------------------------------------------------
def _fill(put, cfg: DecoderConfig, layout: str, seed: int) -> None:
    """Generate every canonical tensor and hand its bytes to put(stored name, array, byte offset)."""
    sources = {k: v for k, v in layout_sources(cfg, layout).items() if v.stored != k}
    bf16 = mxfp4.BFLOAT16
    done_experts: set[str] = set()
    for e in expected_tensors(cfg):
        src = sources.get(e.name)
        stored = src.stored if src else e.name
        base = 0
        if src and src.rows:  # a q/k/v slice of the fused qkv tensor
            base = src.rows[0] * int(np.prod(e.shape[1:], dtype=np.int64)) * np.dtype(bf16).itemsize
        special = cfg.family.synth
        if special is not None and special(put, cfg, seed, e, sources, done_experts):  # e.g. gpt-oss's experts
            continue
        if src and src.parts:  # stacked from per-slice tensors (Qwen3-MoE's per-expert files): same values
            for start, chunk in gaussian_rows(e.name, e.shape, cfg, seed):
                for j, piece in enumerate(chunk.astype(bf16), start):
                    for name, part in zip(src.parts[j], np.split(piece, len(src.parts[j]))):
                        put(name, part, 0)
            continue
        row_bytes = int(np.prod(e.shape[1:], dtype=np.int64)) * np.dtype(bf16).itemsize
        for start, chunk in gaussian_rows(e.name, e.shape, cfg, seed):
            put(stored, chunk.astype(bf16), base + start * row_bytes)


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise MxportError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise MxportError(f"{out_dir}: folder exists and is not empty (use --force / overwrite=True to replace it)")


def write_checkpoint(
    out_dir: str | os.PathLike,
    cfg: DecoderConfig,
    *,
    layout: str = "hf",
    seed: int = 0,
    max_shard_bytes: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write a synthetic checkpoint (config.json + safetensors [+ index]) atomically; returns out_dir.

    layout "hf": Hugging Face names, MXFP4 or float experts as cfg.experts_mxfp4 says; sharded with
    model.safetensors.index.json when max_shard_bytes is given. layout "original": the openai original/ names
    and config keys, one model.safetensors (or shards) - MXFP4 experts only.
    """
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    plan = stored_plan(cfg, layout)
    shards = shard_plan(plan, max_shard_bytes)
    remove_stale(out_dir)  # scratch folders a killed run of this output left (a 120b preset writes 65 GB)
    tmp = temp_dir_beside(out_dir)
    try:
        config = cfg.family.config_to_dict(cfg) if layout == "hf" else cfg.to_original_dict()
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        writers, where = [], {}
        for k, shard in enumerate(shards):
            fname = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            writers.append(SafetensorsWriter(tmp / fname, shard))
            where.update({name: writers[-1] for name, _, _ in shard})
        total, done = plan_bytes(plan), 0

        def put(name: str, arr: np.ndarray, off: int) -> None:
            nonlocal done
            where[name].put(name, arr, off)
            done += arr.nbytes
            report(progress, "write tensors", min(done, total), total, "B")

        try:
            _fill(put, cfg, layout, seed)
        finally:
            for w in writers:
                w._file.close()
        for w in writers:
            w.close()
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": plan_bytes(plan)},
                "weight_map": {name: where[name].path.name for name, _, _ in plan},
            }
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        if cfg.family.synth_files is not None:  # e.g. a tokenizer of the family's shape
            cfg.family.synth_files(cfg, tmp)
        replace_dir(tmp, out_dir)  # overwrite: the old folder goes only after the new one is in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ---- what a checkpoint will hold ----------------------------------------------------------------------------------
def default_shard_bytes(cfg: DecoderConfig, layout: str) -> int | None:
    """DEFAULT_SHARD_BYTES for an hf-layout checkpoint larger than that (gpt-oss-20b/120b, qwen3-8b: the published
    repos shard their HF weights), else None (one model.safetensors; gpt-oss' original/ folder is one file too)."""
    return DEFAULT_SHARD_BYTES if layout == "hf" and plan_bytes(stored_plan(cfg, layout)) > DEFAULT_SHARD_BYTES else None


def tensor_table(cfg: DecoderConfig, layout: str, max_shard_bytes: int | None) -> str:
    """The stored tensors (name, shape, dtype, bytes) one a line, then the totals by dtype and the file count."""
    plan = stored_plan(cfg, layout)
    shards = shard_plan(plan, max_shard_bytes)
    width = max(len(n) for n, _, _ in plan)
    lines = [f"{'name':<{width}}  {'shape':<22} {'dtype':<5} {'bytes':>14}"]
    for name, shape, dtype in plan:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        lines.append(f"{name:<{width}}  {str(list(shape)):<22} {_ST_NAME[dtype]:<5} {nbytes:>14,}")
    by_dtype: dict[str, int] = {}
    for _, shape, dtype in plan:
        by_dtype[_ST_NAME[dtype]] = by_dtype.get(_ST_NAME[dtype], 0) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    total = plan_bytes(plan)
    lines.append(f"total: {len(plan)} tensors, {total:,} bytes ({total / 1e9:.3f} GB) in {len(shards)} file(s); "
                 + ", ".join(f"{k} {v:,}" for k, v in sorted(by_dtype.items())))
    return "\n".join(lines)
