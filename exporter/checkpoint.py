"""Checkpoint readers: a gpt-oss checkpoint folder -> lazy, memory-mapped tensors under canonical HF names.

    ckpt = open_checkpoint("ckpt_dir")       # config.json + *.safetensors [+ model.safetensors.index.json]
    ckpt.layout                              # "hf" | "original"
    ckpt.names(); ckpt.spec(name)            # canonical names, (name, shape, dtype) without reading data
    ckpt.get(name); ckpt.get_f32(name)       # one tensor as stored / as float32

Two layouts map onto one set of names (docs/ARCHITECTURE.md, "Checkpoints"):

    Hugging Face                                   openai original/
    model.embed_tokens.weight                      embedding.weight
    model.layers.N.input_layernorm.weight          block.N.attn.norm.scale
    model.layers.N.self_attn.{q,k,v}_proj.{w,b}    block.N.attn.qkv.{weight,bias}  rows: q (heads*D), k, v (kv*D each)
    model.layers.N.self_attn.sinks                 block.N.attn.sinks
    model.layers.N.self_attn.o_proj.{w,b}          block.N.attn.out.{weight,bias}
    model.layers.N.post_attention_layernorm.weight block.N.mlp.norm.scale
    model.layers.N.mlp.router.{weight,bias}        block.N.mlp.gate.{weight,bias}
    ...mlp.experts.gate_up_proj_{blocks,scales}    block.N.mlp.mlp1_weight.{blocks,scales}
    ...mlp.experts.gate_up_proj_bias               block.N.mlp.mlp1_bias
    ...mlp.experts.down_proj_{blocks,scales}       block.N.mlp.mlp2_weight.{blocks,scales}
    ...mlp.experts.down_proj_bias                  block.N.mlp.mlp2_bias
    model.norm.weight                              norm.scale
    lm_head.weight                                 unembedding.weight

Everything is validated when the checkpoint is opened, from the safetensors headers alone (no tensor data is read):
every expected tensor present, nothing unexpected, shapes and dtypes as the config implies, headers well formed
and files long enough. Data is read one tensor (or one row range) at a time through safetensors' mmap reader.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ml_dtypes  # noqa: F401  (registers bfloat16 so safetensors' numpy reader can return it)
import numpy as np

from mxport.errors import MxportError
from mxport.exporter.config import ModelConfig
from mxport.ops.mxfp4 import BLOCK_SIZE, BYTES_PER_BLOCK, HF_SUFFIXES, ORIGINAL_SUFFIXES

INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype strings <-> numpy dtypes (the ones a gpt-oss checkpoint can hold)
ST_DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "I32": np.dtype(np.int32),
    "I64": np.dtype(np.int64),
}
FLOAT_DTYPES = ("BF16", "F16", "F32")  # accepted for dense weights; synthetic checkpoints write BF16
PACKED_DTYPE = "U8"  # MXFP4 blocks and scales


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype  # as stored (bfloat16 as ml_dtypes.bfloat16)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass(frozen=True)
class Expected:
    """One tensor the config implies: canonical name, shape, and whether it is MXFP4 packed (uint8)."""

    name: str
    shape: tuple[int, ...]
    packed: bool = False


# ---- the tensor table a config implies -------------------------------------------------------------------------
def expected_tensors(cfg: ModelConfig, lm_head: bool | None = None) -> list[Expected]:
    """Canonical (HF) tensors in stable order: embeddings, layer 0..N-1, final norm, lm_head.

    lm_head: whether `lm_head.weight` is stored; by default not when the config ties it to the embeddings."""
    H, I, E, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.vocab_size
    q_rows, kv_rows = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    out = [Expected("model.embed_tokens.weight", (V, H))]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out += [
            Expected(p + "input_layernorm.weight", (H,)),
            Expected(p + "self_attn.q_proj.weight", (q_rows, H)),
            Expected(p + "self_attn.q_proj.bias", (q_rows,)),
            Expected(p + "self_attn.k_proj.weight", (kv_rows, H)),
            Expected(p + "self_attn.k_proj.bias", (kv_rows,)),
            Expected(p + "self_attn.v_proj.weight", (kv_rows, H)),
            Expected(p + "self_attn.v_proj.bias", (kv_rows,)),
            Expected(p + "self_attn.o_proj.weight", (H, q_rows)),
            Expected(p + "self_attn.o_proj.bias", (H,)),
            Expected(p + "self_attn.sinks", (cfg.num_attention_heads,)),
            Expected(p + "post_attention_layernorm.weight", (H,)),
            Expected(p + "mlp.router.weight", (E, H)),
            Expected(p + "mlp.router.bias", (E,)),
        ]
        x = p + "mlp.experts."
        if cfg.experts_mxfp4:
            blocks, scales = HF_SUFFIXES
            out += [
                Expected(x + "gate_up_proj" + blocks, (E, 2 * I, H // BLOCK_SIZE, BYTES_PER_BLOCK), packed=True),
                Expected(x + "gate_up_proj" + scales, (E, 2 * I, H // BLOCK_SIZE), packed=True),
                Expected(x + "gate_up_proj_bias", (E, 2 * I)),
                Expected(x + "down_proj" + blocks, (E, H, I // BLOCK_SIZE, BYTES_PER_BLOCK), packed=True),
                Expected(x + "down_proj" + scales, (E, H, I // BLOCK_SIZE), packed=True),
                Expected(x + "down_proj_bias", (E, H)),
            ]
        else:  # dense, input-major as transformers saves them
            out += [
                Expected(x + "gate_up_proj", (E, H, 2 * I)),
                Expected(x + "gate_up_proj_bias", (E, 2 * I)),
                Expected(x + "down_proj", (E, I, H)),
                Expected(x + "down_proj_bias", (E, H)),
            ]
    out += [Expected("model.norm.weight", (H,))]
    if not cfg.tie_word_embeddings if lm_head is None else lm_head:
        out += [Expected("lm_head.weight", (V, H))]
    return out


# canonical suffix -> original suffix, per layer (qkv handled separately: it fuses three canonical tensors)
_ORIGINAL_LAYER_NAMES = {
    "input_layernorm.weight": "attn.norm.scale",
    "self_attn.sinks": "attn.sinks",
    "self_attn.o_proj.weight": "attn.out.weight",
    "self_attn.o_proj.bias": "attn.out.bias",
    "post_attention_layernorm.weight": "mlp.norm.scale",
    "mlp.router.weight": "mlp.gate.weight",
    "mlp.router.bias": "mlp.gate.bias",
    "mlp.experts.gate_up_proj" + HF_SUFFIXES[0]: "mlp.mlp1_weight" + ORIGINAL_SUFFIXES[0],
    "mlp.experts.gate_up_proj" + HF_SUFFIXES[1]: "mlp.mlp1_weight" + ORIGINAL_SUFFIXES[1],
    "mlp.experts.gate_up_proj_bias": "mlp.mlp1_bias",
    "mlp.experts.down_proj" + HF_SUFFIXES[0]: "mlp.mlp2_weight" + ORIGINAL_SUFFIXES[0],
    "mlp.experts.down_proj" + HF_SUFFIXES[1]: "mlp.mlp2_weight" + ORIGINAL_SUFFIXES[1],
    "mlp.experts.down_proj_bias": "mlp.mlp2_bias",
}
_ORIGINAL_TOP_NAMES = {
    "model.embed_tokens.weight": "embedding.weight",
    "model.norm.weight": "norm.scale",
    "lm_head.weight": "unembedding.weight",
}


@dataclass(frozen=True)
class Source:
    """Where a canonical tensor lives in the stored files: stored name, and a row range for the fused qkv."""

    stored: str
    rows: tuple[int, int] | None = None


def original_sources(cfg: ModelConfig, lm_head: bool | None = None) -> dict[str, Source]:
    """Canonical name -> Source in the openai original/ layout (qkv rows: q = heads*D, then k, then v)."""
    q_rows, kv_rows = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    spans = {"q": (0, q_rows), "k": (q_rows, q_rows + kv_rows), "v": (q_rows + kv_rows, q_rows + 2 * kv_rows)}
    out: dict[str, Source] = {}
    for e in expected_tensors(cfg, lm_head):
        if e.name in _ORIGINAL_TOP_NAMES:
            out[e.name] = Source(_ORIGINAL_TOP_NAMES[e.name])
            continue
        _, _, layer, rest = e.name.split(".", 3)
        if rest.startswith("self_attn.") and rest[10] in "qkv" and rest[11:17] == "_proj.":
            kind = rest.rsplit(".", 1)[1]  # weight | bias
            out[e.name] = Source(f"block.{layer}.attn.qkv.{kind}", spans[rest[10]])
        else:
            out[e.name] = Source(f"block.{layer}.{_ORIGINAL_LAYER_NAMES[rest]}")
    return out


def stored_tensors(cfg: ModelConfig, layout: str, lm_head: bool | None = None) -> list[Expected]:
    """The tensors as a layout stores them (the original layout fuses q, k, v into qkv)."""
    table = expected_tensors(cfg, lm_head)
    if layout == "hf":
        return table
    sources, by_name, out, seen = original_sources(cfg, lm_head), {e.name: e for e in table}, [], set()
    for e in table:
        src = sources[e.name]
        if src.stored in seen:
            continue
        seen.add(src.stored)
        if src.rows is None:
            out.append(Expected(src.stored, e.shape, e.packed))
        else:  # qkv: the three row ranges stacked
            rows = sum(by_name[n].shape[0] for n, s in sources.items() if s.stored == src.stored)
            out.append(Expected(src.stored, (rows,) + e.shape[1:]))
    return out


# ---- safetensors headers ------------------------------------------------------------------------------------------
def read_header(path: Path) -> dict[str, TensorSpec]:
    """Parse and check one safetensors header without reading tensor data. MxportError names the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise MxportError(f"{path}: not a safetensors file (only {size} bytes, no header length)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise MxportError(f"{path}: truncated or corrupt: header length {n} exceeds the file ({size} bytes)")
            raw = f.read(n)
    except OSError as exc:
        raise MxportError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise MxportError(f"{path}: corrupt safetensors header (bad JSON: {exc})") from None
    specs, end_max = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_str, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise MxportError(f"{path}: corrupt safetensors header: bad entry for tensor {name!r}: {info!r}") from None
        if dtype_str not in ST_DTYPES:
            raise MxportError(f"{path}: tensor {name!r} has unsupported dtype {dtype_str}")
        spec = TensorSpec(name, shape, ST_DTYPES[dtype_str])
        if end - begin != spec.nbytes or begin < 0:
            raise MxportError(
                f"{path}: corrupt safetensors header: tensor {name!r} {dtype_str}{list(shape)} needs {spec.nbytes} "
                f"bytes, data_offsets [{begin}, {end}] give {end - begin}"
            )
        specs[name], end_max = spec, max(end_max, end)
    if 8 + n + end_max > size:
        raise MxportError(
            f"{path}: truncated: the header describes {end_max} bytes of tensor data, the file holds {size - 8 - n}"
        )
    return specs


def _dtype_name(dtype: np.dtype) -> str:
    return next(k for k, v in ST_DTYPES.items() if v == dtype)


# ---- the checkpoint ---------------------------------------------------------------------------------------------
class Checkpoint:
    """A validated checkpoint folder. Tensors are read lazily, one at a time, through safetensors' mmap reader."""

    def __init__(self, path: Path, config: ModelConfig, layout: str, files: dict[str, Path]) -> None:
        self.path = path
        self.config = config
        self.layout = layout
        self._files = files  # stored name -> file
        self._specs: dict[str, TensorSpec] = {}  # stored name -> spec
        self._handles: dict[Path, object] = {}
        # Tied embeddings: lm_head.weight is optional; when a file has it anyway, it is used (as transformers does).
        self._lm_head = not config.tie_word_embeddings or (
            _ORIGINAL_TOP_NAMES["lm_head.weight"] in files or "lm_head.weight" in files)
        table = expected_tensors(config, self._lm_head)
        self._sources = (
            original_sources(config, self._lm_head) if layout == "original" else {e.name: Source(e.name) for e in table}
        )
        self._canonical = {e.name: e for e in table}
        if layout == "hf" and not config.experts_mxfp4:
            # transformers 5 saves a dequantized (Mxfp4Config(dequantize=True)) model's dense experts under the
            # `_blocks` names, without quantization_config: read those as the dense weights.
            for name in self._canonical:
                alias = name + HF_SUFFIXES[0]
                if name.endswith(("experts.gate_up_proj", "experts.down_proj")) and name not in files and alias in files:
                    self._sources[name] = Source(alias)
        self._validate()

    # -- validation (headers only) --
    def _where(self) -> str:
        index = self.path / INDEX_FILE
        return str(index) if index.is_file() else ", ".join(sorted({str(p) for p in self._files.values()}))

    def _validate(self) -> None:
        headers: dict[Path, dict[str, TensorSpec]] = {}
        for file in sorted(set(self._files.values())):
            headers[file] = read_header(file)
        for stored, file in self._files.items():
            if stored not in headers[file]:
                raise MxportError(f"{file}: tensor {stored!r} is listed in {INDEX_FILE} but missing from the file")
            self._specs[stored] = headers[file][stored]
        for file, header in headers.items():
            for name, spec in header.items():
                if name not in self._files:
                    raise MxportError(
                        f"{file}: unexpected tensor {name!r} {_dtype_name(spec.dtype)}{list(spec.shape)} "
                        f"(not listed in {INDEX_FILE})"
                    )
        if self.layout == "hf":
            expected = {self._sources[e.name].stored: Expected(self._sources[e.name].stored, e.shape, e.packed)
                        for e in self._canonical.values()}
        else:
            expected = {e.name: e for e in stored_tensors(self.config, self.layout, self._lm_head)}
        for name, e in expected.items():
            if name not in self._specs:
                want = f"{PACKED_DTYPE if e.packed else 'BF16'}{list(e.shape)}"
                raise MxportError(f"{self._where()}: missing tensor {name!r} (expected {want}, {self.layout} layout)")
        for name, spec in self._specs.items():
            file = self._files[name]
            if name not in expected:
                raise MxportError(
                    f"{file}: unexpected tensor {name!r} {_dtype_name(spec.dtype)}{list(spec.shape)} "
                    f"(not part of a {self.layout}-layout gpt-oss checkpoint with this config)"
                )
            e = expected[name]
            if spec.shape != e.shape:
                raise MxportError(f"{file}: tensor {name!r} has shape {list(spec.shape)}, expected {list(e.shape)}")
            found, allowed = _dtype_name(spec.dtype), (PACKED_DTYPE,) if e.packed else FLOAT_DTYPES
            if found not in allowed:
                raise MxportError(f"{file}: tensor {name!r} has dtype {found}, expected {' or '.join(allowed)}")

    # -- the contract --
    def names(self) -> list[str]:
        return list(self._canonical)

    def spec(self, name: str) -> TensorSpec:
        src = self._source(name)
        stored = self._specs[src.stored]
        shape = self._canonical[name].shape if src.rows else stored.shape
        return TensorSpec(name, shape, stored.dtype)

    def get(self, name: str) -> np.ndarray:
        """One tensor as stored: bf16 as ml_dtypes.bfloat16, MXFP4 halves as uint8."""
        src = self._source(name)
        file = self._files[src.stored]
        handle = self._handle(file)
        try:
            if src.rows is None:
                return handle.get_tensor(src.stored)
            return handle.get_slice(src.stored)[src.rows[0] : src.rows[1]]
        except Exception as exc:  # safetensors raises its own error types for bad files
            raise MxportError(f"{file}: cannot read tensor {src.stored!r} ({exc})") from None

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) (first axis) of one tensor as stored; only those bytes are read."""
        src = self._source(name)
        n = self.spec(name).shape[0]
        if not 0 <= start <= stop <= n:
            raise MxportError(f"{name!r}: rows [{start}, {stop}) out of range for {n} rows")
        offset = src.rows[0] if src.rows else 0
        file = self._files[src.stored]
        try:
            return self._handle(file).get_slice(src.stored)[offset + start : offset + stop]
        except Exception as exc:  # safetensors raises its own error types for bad files
            raise MxportError(f"{file}: cannot read tensor {src.stored!r} ({exc})") from None

    def get_f32(self, name: str) -> np.ndarray:
        """The same tensor as float32. MXFP4 halves are packed bytes, not numbers: decode them with ops.mxfp4."""
        if self._canonical[name].packed:
            raise MxportError(
                f"{name!r} is MXFP4 packed data (uint8); read it with get() and decode blocks + scales with "
                "mxport.ops.mxfp4.decode"
            )
        return np.asarray(self.get(name), dtype=np.float32)

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, layout={self.layout!r}, tensors={len(self._canonical)})"

    # -- internals --
    def _source(self, name: str) -> Source:
        if name not in self._sources:
            raise MxportError(f"{self.path}: no tensor named {name!r} (canonical HF names, see ckpt.names())")
        return self._sources[name]

    def _handle(self, file: Path):
        if file not in self._handles:
            from safetensors import safe_open

            self._handles[file] = safe_open(str(file), framework="numpy")
        return self._handles[file]


def _files_of(path: Path) -> dict[str, Path]:
    """Stored tensor name -> safetensors file, from the index when there is one, else from every *.safetensors."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise MxportError(f"{index}: not a valid index (expected JSON with a 'weight_map' object)") from None
        files = {name: path / shard for name, shard in weight_map.items()}
        for name, file in files.items():
            if not file.is_file():
                raise MxportError(f"{index}: shard {file.name!r} (holding tensor {name!r}) is missing from {path}")
        return files
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise MxportError(f"{path}: no *.safetensors files (and no {INDEX_FILE})")
    files: dict[str, Path] = {}
    for shard in shards:
        for name in read_header(shard):
            if name in files:
                raise MxportError(f"{shard}: tensor {name!r} is also in {files[name]}")
            files[name] = shard
    return files


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open and validate a checkpoint folder (HF layout, or the openai original/ layout; a repo root whose weights
    live only in original/ opens that). Raises MxportError naming the file and tensor for anything wrong."""
    path = Path(path)
    if not path.is_dir():
        what = "is a file, not a checkpoint folder" if path.exists() else "checkpoint folder not found"
        raise MxportError(f"{path}: {what} (expected a folder with config.json and *.safetensors)")
    if not (path / "config.json").is_file() and (path / "original" / "config.json").is_file():
        path = path / "original"
    config_file = path / "config.json"
    config = ModelConfig.from_file(config_file)
    raw = json.loads(config_file.read_text())
    layout = "original" if ("num_experts" in raw and "num_local_experts" not in raw or "rope_ntk_beta" in raw) else "hf"
    return Checkpoint(path, config, layout, _files_of(path))
