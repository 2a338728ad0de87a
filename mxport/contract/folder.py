"""The export folder contract: its file names, which kind of folder a path is, and the typed manifest (mxport.json).

    export folder   model.onnx + model.onnx.data, mxport.json (the Manifest), genai_config.json, tokenizer files
    checkpoint      config.json + *.safetensors (or an openai original/ subfolder)

    folder_kind(path)            -> "export" | "checkpoint"; MxportError naming the path otherwise
    model_path(path)             -> path/model.onnx of an export folder, or the .onnx file itself
    manifest_file(path)          -> the mxport.json beside an export's model (path: the folder or its .onnx)
    read_manifest(path)          -> Manifest (every field its default when the folder has no mxport.json; modes
                                    in their one spelling, contract/modes.py); MxportError naming the file and
                                    the field when it is malformed
    write_manifest(folder, m)    -> writes folder/mxport.json (export's one writer)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxport.contract import modes
from mxport.errors import MxportError
from mxport.files import read_json

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"  # the weights, as external data of MODEL_FILE
MANIFEST_FILE = "mxport.json"
MANIFEST_MAX_BYTES = 16 << 20  # mxport.json is kilobytes
GENAI_FILE = "genai_config.json"  # onnxruntime-genai's config (exporter/genai_config.py)
CONFIG_FILE = "config.json"  # a checkpoint's model config
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
GENERATION_CONFIG_FILE = "generation_config.json"
# Copied from the checkpoint into the export when present.
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, "special_tokens_map.json", CHAT_TEMPLATE_FILE,
                   GENERATION_CONFIG_FILE)


# ---- folder kinds ------------------------------------------------------------------------------------------------
def is_export(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MODEL_FILE).is_file()


def is_checkpoint(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() and (
        any(folder.glob("*.safetensors")) or any(folder.glob("original/*.safetensors")))


def folder_kind(folder: str | os.PathLike) -> str:
    """'export' (model.onnx) or 'checkpoint' (config.json + *.safetensors), else MxportError."""
    if is_export(folder):
        return "export"
    if is_checkpoint(folder):
        return "checkpoint"
    raise MxportError(
        f"{folder}: neither an exported folder ({MODEL_FILE}) nor a checkpoint ({CONFIG_FILE} + *.safetensors)"
    )


def model_path(export_dir_or_model: str | os.PathLike) -> Path:
    """`dir/model.onnx` for an export folder, or the .onnx file itself; MxportError naming the path otherwise."""
    p = Path(export_dir_or_model)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise MxportError(f"{p}: no such ONNX model (expected an export folder holding {MODEL_FILE}, or an .onnx file)")
    return p


# ---- the manifest ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Manifest:
    """mxport.json: what an export was made from and how. A field's default is what an export without that key
    (an older one, or a folder with no mxport.json) means. Fields in the order export writes them."""

    mxport_version: str = ""  # the mxport that wrote the folder
    checkpoint: str | None = None  # absolute path of the checkpoint folder it was exported from
    family: str | None = None  # the family's registry name (exporter/families)
    layout: str | None = None  # the checkpoint's tensor layout, as the family's reader named it
    config: dict[str, Any] | None = None  # the model config (family.config_to_dict), read back by config_from_dict
    target: str = "portable"  # --target
    experts: str = "mxfp4"  # --experts as resolved; "none" for a model without experts
    dtype: str = "float32"  # --dtype of the activations and I/O
    hidden_states: bool = False  # outputs hidden_states.{i} were added
    dense: str = "float32"  # --dense: the form of the linear layers outside the experts
    last_logits: bool = False  # logits of the last position only
    window_cache: bool = False  # sliding layers keep only their last W-1 cache slots (False: every slot)
    accuracy_level: int = 4  # ORT's accuracy_level of the quantized GEMMs
    allow_non_finite: bool = False  # exported without refusing NaN / infinite weights (--allow-non-finite)
    matrix_storage: str | None = None  # how the portable graph stores weight matrices
    checkpoint_experts: str | None = None  # gpt-oss-like families only: the checkpoint's expert format
    opset_imports: dict[str, int] = dataclasses.field(default_factory=dict)
    inputs: tuple[str, ...] = ()  # the graph's input names (mxport/contract/io.py)
    outputs: tuple[str, ...] = ()  # the graph's output names
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    lowering: dict[str, Any] | None = None  # exporter/lower's report: rewrites applied, refusals with reasons


# Fields left out of the file when None (the others are always written, None as null).
_OMITTED_WHEN_NONE = ("checkpoint_experts", "lowering")
_OPTIONAL = {f.name for f in dataclasses.fields(Manifest) if f.default is None}  # null allowed
_KINDS = {  # field -> (JSON type it must have, element type of a list or dict's values)
    "mxport_version": (str, None), "checkpoint": (str, None), "family": (str, None), "layout": (str, None),
    "config": (dict, None), "target": (str, None), "experts": (str, None), "dtype": (str, None),
    "hidden_states": (bool, None), "dense": (str, None), "last_logits": (bool, None), "window_cache": (bool, None),
    "accuracy_level": (int, None), "allow_non_finite": (bool, None), "matrix_storage": (str, None),
    "checkpoint_experts": (str, None),
    "opset_imports": (dict, int), "inputs": (list, str), "outputs": (list, str), "eos_token_ids": (list, int),
    "pad_token_id": (int, None), "lowering": (dict, None),
}


def manifest_file(path: str | os.PathLike) -> Path:
    """The mxport.json of an export folder, or of the folder of an .onnx file."""
    p = Path(path)
    return (p if p.is_dir() else p.parent) / MANIFEST_FILE


def _is(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def read_manifest(path: str | os.PathLike) -> Manifest:
    """The export's manifest; Manifest() (every field its default) when there is no mxport.json (e.g. a folder
    onnxruntime-genai's builder wrote). Unknown keys are ignored; a key of the wrong type is an MxportError."""
    file = manifest_file(path)
    if not file.is_file():
        return Manifest()
    data = read_json(file, max_bytes=MANIFEST_MAX_BYTES, what="export manifest",
                     source=f"{file}: cannot read the export manifest")
    if not isinstance(data, dict):
        raise MxportError(f"{file}: expected a JSON object, found {type(data).__name__}")
    values = {}
    for name, (kind, element) in _KINDS.items():
        if name not in data:
            continue
        value = data[name]
        if value is None and name in _OPTIONAL:
            values[name] = None
            continue
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        if not _is(value, kind) or (element is not None and not all(_is(v, element) for v in items)):
            want = kind.__name__ + (f" of {element.__name__}" if element is not None else "")
            raise MxportError(f"{file}: field {name!r} must be {want}, found {value!r:.80}")
        values[name] = tuple(value) if kind is list else value
    for axis in modes.AXES:  # an older spelling of a mode reads as its one name (the mode table's ALIASES)
        if axis in values:
            values[axis] = modes.canonical(axis, values[axis])
    return Manifest(**values)


def manifest_dict(manifest: Manifest) -> dict[str, Any]:
    """The manifest as mxport.json holds it (fields in order; checkpoint_experts and lowering only when set)."""
    out = {}
    for f in dataclasses.fields(manifest):
        value = getattr(manifest, f.name)
        if value is None and f.name in _OMITTED_WHEN_NONE:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Path:
    """Write folder/mxport.json; returns its path."""
    file = Path(folder) / MANIFEST_FILE
    file.write_text(json.dumps(manifest_dict(manifest), indent=2) + "\n")
    return file
