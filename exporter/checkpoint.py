"""Checkpoint readers: a checkpoint folder of any registered family -> lazy, memory-mapped tensors under canonical
(Hugging Face) names.

    ckpt = open_checkpoint("ckpt_dir")       # config.json + *.safetensors [+ model.safetensors.index.json]
    ckpt.family; ckpt.layout                 # Family record (exporter/families); "hf" | a family's own layout
    ckpt.names(); ckpt.spec(name)            # canonical names, (name, shape, dtype) without reading data
    ckpt.get(name); ckpt.get_f32(name)       # one tensor as stored / as float32
    ckpt.output_name                         # the output projection: lm_head, or the tied embedding

The family owns its tensor table and how its layouts store it (exporter/families/<family>.py: names, shapes,
fused tensors, aliases, buffers to ignore); this module only reads and validates.

Everything is validated when the checkpoint is opened, from the safetensors headers alone (no tensor data is read):
the config's sizes within the families' caps, its layer count held by the files (checked before any per-layer
table is built), every expected tensor present, nothing unexpected, shapes and dtypes as the config implies,
headers well formed (bounded size and nesting, typed entries, contiguous data as safetensors requires) and files
long enough. Data is read one tensor (or one row range) at a time through safetensors' mmap reader;
`open_checkpoint(path, check_finite=True)` (export's default) refuses a float tensor holding NaN or infinity, or
an MXFP4 scale byte that is NaN, as it is read: no second pass over the model.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ml_dtypes  # noqa: F401  (registers bfloat16 so safetensors' numpy reader can return it)
import numpy as np

from mxport.errors import MxportError
from mxport.exporter import families
from mxport.files import parse_json, read_json
from mxport.ops.mxfp4 import E8M0_NAN
from mxport.exporter.families.base import DecoderConfig, Expected, Source

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
    "BOOL": np.dtype(np.bool_),  # buffers some files carry (GPT-2's attn.bias mask); never a weight
}
FLOAT_DTYPES = ("BF16", "F16", "F32")  # accepted for dense weights; synthetic checkpoints write BF16
PACKED_DTYPE = "U8"  # MXFP4 blocks and scales
HEADER_MAX_BYTES = 100_000_000  # safetensors' own limit on a header (its reader refuses longer ones)
MAX_DIMS = 8  # dimensions of one tensor (weights have 1 to 4)
# the IEEE exponent bits of each float dtype: all set = NaN or infinity (checked on the bits, no float copy)
_EXPONENT_BITS = {np.dtype(ml_dtypes.bfloat16): (np.uint16, 0x7F80), np.dtype(np.float16): (np.uint16, 0x7C00),
                  np.dtype(np.float32): (np.uint32, 0x7F800000), np.dtype(np.float64): (np.uint64, 0x7FF << 52)}
CHECK_CHUNK = 1 << 22  # values tested per step: the check's own memory stays a few MB whatever the tensor


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype  # as stored (bfloat16 as ml_dtypes.bfloat16)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: a hostile shape cannot overflow


# ---- the tensor table a config implies (the family's) ----------------------------------------------------------
def expected_tensors(cfg: DecoderConfig, lm_head: bool | None = None) -> list[Expected]:
    """Canonical tensors in stable order (the family's table). lm_head: whether the output projection is stored;
    by default not when the config ties it to the embeddings."""
    return cfg.family.tensors(cfg, lm_head)


def layout_sources(cfg: DecoderConfig, layout: str, lm_head: bool | None = None,
                   stored: set[str] | frozenset[str] = frozenset()) -> dict[str, Source]:
    """Canonical name -> Source for every canonical tensor (identity unless the family's layout says otherwise)."""
    fam = cfg.family
    if layout not in fam.layouts:
        raise MxportError(f"{fam.name} has no {layout!r} layout (it has {', '.join(fam.layouts)})")
    special = (fam.sources(cfg, layout, lm_head, set(stored)) if fam.sources else None) or {}
    return {e.name: special.get(e.name, Source(e.name)) for e in expected_tensors(cfg, lm_head)}


def original_sources(cfg: DecoderConfig, lm_head: bool | None = None) -> dict[str, Source]:
    """Canonical name -> Source in gpt-oss's openai original/ layout."""
    return layout_sources(cfg, "original", lm_head)


def stored_tensors(cfg: DecoderConfig, layout: str, lm_head: bool | None = None,
                   sources: dict[str, Source] | None = None) -> list[Expected]:
    """The tensors as a layout stores them (fused tensors, e.g. gpt-oss original/'s qkv, once with all rows)."""
    table = expected_tensors(cfg, lm_head)
    sources = layout_sources(cfg, layout, lm_head) if sources is None else sources
    by_name, out, seen = {e.name: e for e in table}, [], set()
    for e in table:
        src = sources[e.name]
        if src.parts:  # stacked from per-slice tensors: each part an equal share of a slice's first axis
            for names in src.parts:
                part_shape = (e.shape[1] // len(names),) + e.shape[2:]
                out += [Expected(n, part_shape, e.packed) for n in names if n not in seen]
                seen.update(names)
            continue
        if src.stored in seen:
            continue
        seen.add(src.stored)
        if src.rows is None:
            out.append(Expected(src.stored, e.shape, e.packed))
        else:  # a fused tensor: the row ranges of every canonical tensor stored in it, stacked
            rows = sum(by_name[n].shape[0] for n, s in sources.items() if s.stored == src.stored)
            out.append(Expected(src.stored, (rows,) + e.shape[1:], e.packed))
    return out


# ---- safetensors headers ------------------------------------------------------------------------------------------
def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(path: Path, name: str, info: object) -> tuple[TensorSpec, int, int]:
    """One header entry {dtype, shape, data_offsets} -> (spec, begin, end), every field typed as the format says."""
    bad = f"{path}: corrupt safetensors header: bad entry for tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise MxportError(f"{bad}: expected an object with dtype, shape and data_offsets, found {info!r:.200}")
    dtype_str, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype_str, str):
        raise MxportError(f"{bad}: dtype should be a string, found {dtype_str!r:.80}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_int(d) and d >= 0 for d in shape):
        raise MxportError(f"{bad}: shape should be a list of at most {MAX_DIMS} non-negative integers, "
                          f"found {shape!r:.80}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) and o >= 0 for o in offsets):
        raise MxportError(f"{bad}: data_offsets should be two non-negative integers, found {offsets!r:.80}")
    if dtype_str not in ST_DTYPES:
        raise MxportError(f"{path}: tensor {name!r} has unsupported dtype {dtype_str!r:.40}")
    spec, (begin, end) = TensorSpec(name, tuple(shape), ST_DTYPES[dtype_str]), offsets
    if end - begin != spec.nbytes:
        raise MxportError(
            f"{path}: corrupt safetensors header: tensor {name!r} {dtype_str}{shape} needs {spec.nbytes} "
            f"bytes, data_offsets [{begin}, {end}] give {end - begin}"
        )
    return spec, begin, end


def read_header(path: Path) -> dict[str, TensorSpec]:
    """Parse and check one safetensors header without reading tensor data, as strictly as safetensors' own reader
    (header size, typed entries, tensors packed back to back covering the data exactly). MxportError names the
    file and the tensor."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise MxportError(f"{path}: not a safetensors file (only {size} bytes, no header length)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise MxportError(f"{path}: truncated or corrupt: header length {n} exceeds the file ({size} bytes)")
            if n > HEADER_MAX_BYTES:
                raise MxportError(f"{path}: corrupt safetensors header: {n:,} bytes long, more than the format's "
                                  f"limit of {HEADER_MAX_BYTES:,}")
            raw = f.read(n)
    except OSError as exc:
        raise MxportError(f"{path}: cannot read ({exc.strerror})") from None
    header = parse_json(raw, f"{path}: corrupt safetensors header")
    if not isinstance(header, dict):
        raise MxportError(f"{path}: corrupt safetensors header: not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise MxportError(f"{path}: corrupt safetensors header: __metadata__ should map strings to strings")
    specs, spans = {}, []
    for name, info in header.items():
        if name != "__metadata__":
            specs[name], begin, end = _entry(path, name, info)
            spans.append((begin, end, name))
    at, data = 0, size - 8 - n
    for begin, end, name in sorted(spans):  # safetensors: back to back from 0, no gap, no overlap
        if begin != at:
            raise MxportError(f"{path}: corrupt safetensors header: tensor {name!r} starts at byte {begin} of the "
                              f"data, expected {at} (tensors must follow each other without gap or overlap)")
        at = end
    if at > data:
        raise MxportError(f"{path}: truncated: the header describes {at} bytes of tensor data, the file holds "
                          f"{data}")
    if at < data:
        raise MxportError(f"{path}: corrupt: {data - at} bytes after the last tensor's data (the header describes "
                          f"{at} of {data})")
    return specs


def finite_problem(array: np.ndarray, name: str, row: int = 0) -> str | None:
    """What is non-finite in `array` (rows of tensor `name` from `row` on): NaN or infinity in a float tensor, the
    NaN scale byte (E8M0 0xFF) in an MXFP4 scales tensor; None when nothing is. Tested on the bits a chunk at a
    time, so the check needs a few MB whatever the tensor's size."""
    if array.dtype in _EXPONENT_BITS:
        uint, mask = _EXPONENT_BITS[array.dtype]
        flat, bad_bits = np.ascontiguousarray(array).reshape(-1).view(uint), mask
    elif array.dtype == np.uint8 and name.endswith("scales"):  # gpt-oss: *_scales, original/: *.scales
        flat, mask, bad_bits = np.ascontiguousarray(array).reshape(-1), 0xFF, E8M0_NAN
    else:
        return None  # integer data, MXFP4 blocks (every E2M1 code is finite)
    count, first = 0, -1
    for start in range(0, flat.size, CHECK_CHUNK):
        bad = (flat[start : start + CHECK_CHUNK] & mask) == bad_bits
        if n := int(np.count_nonzero(bad)):
            first = start + int(np.argmax(bad)) if first < 0 else first
            count += n
    if not count:
        return None
    index = list(np.unravel_index(first, array.shape))
    index[0] += row
    value = array.reshape(-1)[first]
    what = "NaN scale byte 0xFF" if array.dtype == np.uint8 else str(float(value)).replace("nan", "NaN")
    return (f"holds {count} non-finite value{'s' if count > 1 else ''} (first: {what} at "
            f"[{', '.join(str(int(i)) for i in index)}])")


def _dtype_name(dtype: np.dtype) -> str:
    return next(k for k, v in ST_DTYPES.items() if v == dtype)


# ---- the checkpoint ---------------------------------------------------------------------------------------------
class Checkpoint:
    """A validated checkpoint folder. Tensors are read lazily, one at a time, through safetensors' mmap reader.
    With `check_finite` set, each read is checked for non-finite values (`finite_problem`)."""

    check_finite: bool = False

    def __init__(self, path: Path, config: DecoderConfig, layout: str, files: dict[str, Path]) -> None:
        self.path = path
        self.config = config
        self.family = config.family
        self.layout = layout
        self._files = files  # stored name -> file
        self._specs: dict[str, TensorSpec] = {}  # stored name -> spec
        self._handles: dict[Path, object] = {}
        stored = set(files)
        # Tied embeddings: the output projection is optional; when a file has it anyway, it is used (as transformers
        # does).
        head = layout_sources(config, layout, True, stored)[self.family.output].stored
        self._lm_head = not config.tie_word_embeddings or head in files
        self._sources = layout_sources(config, layout, self._lm_head, stored)
        self._canonical = {e.name: e for e in expected_tensors(config, self._lm_head)}
        self._validate()

    @property
    def output_name(self) -> str:
        """The canonical name of the output projection: the stored lm_head, or the tied embedding."""
        return self.family.output if self._lm_head else self.family.embedding

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
        expected = {e.name: e for e in stored_tensors(self.config, self.layout, self._lm_head, self._sources)}
        for name, e in expected.items():
            if name not in self._specs:
                want = f"{PACKED_DTYPE if e.packed else 'BF16'}{list(e.shape)}"
                raise MxportError(f"{self._where()}: missing tensor {name!r} (expected {want}, {self.layout} layout)")
        for name, spec in self._specs.items():
            file = self._files[name]
            if name not in expected and self.family.ignored(name):  # buffers some files carry (not weights)
                continue
            if name not in expected:
                raise MxportError(
                    f"{file}: unexpected tensor {name!r} {_dtype_name(spec.dtype)}{list(spec.shape)} "
                    f"(not part of a {self.layout}-layout {self.family.name} checkpoint with this config)"
                )
            e = expected[name]
            if spec.shape != e.shape:
                raise MxportError(f"{file}: tensor {name!r} has shape {list(spec.shape)}, expected {list(e.shape)}")
            found, allowed = _dtype_name(spec.dtype), (PACKED_DTYPE,) if e.packed else FLOAT_DTYPES
            if found not in allowed:
                raise MxportError(f"{file}: tensor {name!r} has dtype {found}, expected {' or '.join(allowed)}")
        for canonical, src in self._sources.items():  # a stacked tensor has one dtype
            dtypes = {_dtype_name(self._specs[n].dtype): n for names in src.parts for n in names}
            if len(dtypes) > 1:
                raise MxportError(f"{self._files[src.stored]}: the parts of {canonical!r} mix dtypes "
                                  + ", ".join(f"{d} ({n!r})" for d, n in sorted(dtypes.items())))

    # -- the contract --
    def names(self) -> list[str]:
        return list(self._canonical)

    def spec(self, name: str) -> TensorSpec:
        src = self._source(name)
        stored = self._specs[src.stored]
        shape = self._canonical[name].shape if src.rows or src.parts else stored.shape
        return TensorSpec(name, shape, stored.dtype)

    def get(self, name: str) -> np.ndarray:
        """One tensor as stored: bf16 as ml_dtypes.bfloat16, MXFP4 halves as uint8."""
        src = self._source(name)
        if src.parts:
            return self._checked(name, self._stack(name, src, 0, len(src.parts)))
        file = self._files[src.stored]
        handle = self._handle(file)
        try:
            if src.rows is None:
                return self._checked(name, handle.get_tensor(src.stored))
            return self._checked(name, handle.get_slice(src.stored)[src.rows[0] : src.rows[1]])
        except MxportError:
            raise
        except Exception as exc:  # safetensors raises its own error types for bad files
            raise MxportError(f"{file}: cannot read tensor {src.stored!r} ({exc})") from None

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) (first axis) of one tensor as stored; only those bytes are read."""
        src = self._source(name)
        n = self.spec(name).shape[0]
        if not 0 <= start <= stop <= n:
            raise MxportError(f"{name!r}: rows [{start}, {stop}) out of range for {n} rows")
        if src.parts:
            return self._checked(name, self._stack(name, src, start, stop), start)
        offset = src.rows[0] if src.rows else 0
        file = self._files[src.stored]
        try:
            rows = self._handle(file).get_slice(src.stored)[offset + start : offset + stop]
        except Exception as exc:  # safetensors raises its own error types for bad files
            raise MxportError(f"{file}: cannot read tensor {src.stored!r} ({exc})") from None
        return self._checked(name, rows, start)

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
    def _checked(self, name: str, array: np.ndarray, row: int = 0) -> np.ndarray:
        """`array` (tensor `name` from row `row` on) when finite or unchecked; else MxportError naming it."""
        if self.check_finite and (problem := finite_problem(array, name, row)):
            file = self._files[self._source(name).stored]
            raise MxportError(f"{file}: tensor {name!r} {problem}; a model with non-finite weights computes "
                              "nothing useful (--allow-non-finite / allow_non_finite=True exports it anyway)")
        return array

    def _source(self, name: str) -> Source:
        if name not in self._sources:
            raise MxportError(f"{self.path}: no tensor named {name!r} (canonical HF names, see ckpt.names())")
        return self._sources[name]

    def _stack(self, name: str, src: Source, start: int, stop: int) -> np.ndarray:
        """Slices [start, stop) of a stacked tensor: slice j = its parts concatenated (one part read at a time)."""
        spec = self.spec(name)
        out = np.empty((stop - start,) + spec.shape[1:], dtype=spec.dtype)
        for j in range(start, stop):
            row = 0
            for part in src.parts[j]:
                file = self._files[part]
                try:
                    piece = self._handle(file).get_tensor(part)
                except Exception as exc:  # safetensors raises its own error types for bad files
                    raise MxportError(f"{file}: cannot read tensor {part!r} ({exc})") from None
                out[j - start, row : row + len(piece)] = piece
                row += len(piece)
        return out

    def _handle(self, file: Path):
        if file not in self._handles:
            from safetensors import safe_open

            self._handles[file] = safe_open(str(file), framework="numpy")
        return self._handles[file]


def _files_of(path: Path) -> dict[str, Path]:
    """Stored tensor name -> safetensors file, from the index when there is one, else from every *.safetensors."""
    index = path / INDEX_FILE
    if index.is_file():
        data = read_json(index, max_bytes=HEADER_MAX_BYTES, what="index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise MxportError(f"{index}: not a valid index (expected JSON with a 'weight_map' object of file names)")
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


_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)\.")  # a name's first number is its layer: model.layers.N., h.N., block.N.


def held_layers(names) -> int:
    """How many layers stored tensor names hold: 1 + the largest layer number among them (0 when none has one)."""
    numbers = (_LAYER_INDEX.search(name) for name in names)
    return 1 + max((int(m.group(1)) for m in numbers if m), default=-1)


def _check_layers(config: DecoderConfig, files: dict[str, Path], config_file: Path) -> None:
    """The config's layer count against the layers the files hold, before any per-layer table is built from it."""
    held = held_layers(files)
    if config.num_hidden_layers > held:
        where = sorted({str(p.name) for p in files.values()})
        raise MxportError(f"{config_file}: num_hidden_layers={config.num_hidden_layers}, but the checkpoint's "
                          f"tensors ({', '.join(where[:3])}{', ...' if len(where) > 3 else ''}) hold {held} layers")


def open_checkpoint(path: str | os.PathLike, *, check_finite: bool = False) -> Checkpoint:
    """Open and validate a checkpoint folder (HF layout, or the openai original/ layout; a repo root whose weights
    live only in original/ opens that). Raises MxportError naming the file and tensor for anything wrong.
    `check_finite`: every tensor read is checked for NaN / infinity (MXFP4: NaN scale bytes), MxportError naming
    it (export's default)."""
    path = Path(path)
    if not path.is_dir():
        what = "is a file, not a checkpoint folder" if path.exists() else "checkpoint folder not found"
        raise MxportError(f"{path}: {what} (expected a folder with config.json and *.safetensors)")
    if not (path / "config.json").is_file() and (path / "original" / "config.json").is_file():
        path = path / "original"
    config_file = path / "config.json"
    raw = families.read_json(config_file)
    family = families.detect(raw, str(config_file))
    config = family.config_from_dict(raw, str(config_file))
    layout = family.layout_of(raw)
    files = _files_of(path)
    _check_layers(config, files, config_file)
    ckpt = Checkpoint(path, config, layout, files)
    ckpt.check_finite = check_finite
    return ckpt
