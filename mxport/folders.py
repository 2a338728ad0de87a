"""The two kinds of folder mxport reads, told apart in one place, and the export manifest's one reader.

    folder_kind(path)   -> "export" (model.onnx [+ mxport.json]) | "checkpoint" (config.json + *.safetensors,
                           or an openai original/ subfolder); MxportError naming the path otherwise
    read_manifest(path) -> mxport.json of an export folder (or of a .onnx file's folder) as a dict; {} when absent
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mxport.errors import MxportError

MANIFEST = "mxport.json"
MODEL_FILE = "model.onnx"


def is_export(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MODEL_FILE).is_file()


def is_checkpoint(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / "config.json").is_file() and (
        any(folder.glob("*.safetensors")) or any(folder.glob("original/*.safetensors")))


def folder_kind(folder: str | os.PathLike) -> str:
    """'export' (model.onnx) or 'checkpoint' (config.json + *.safetensors), else MxportError."""
    if is_export(folder):
        return "export"
    if is_checkpoint(folder):
        return "checkpoint"
    raise MxportError(
        f"{folder}: neither an exported folder ({MODEL_FILE}) nor a checkpoint (config.json + *.safetensors)"
    )


def read_manifest(export_dir: str | os.PathLike) -> dict[str, Any]:
    """The export's mxport.json as a dict ({} when the folder has none, e.g. a bare .onnx path)."""
    p = Path(export_dir)
    path = (p if p.is_dir() else p.parent) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MxportError(f"{path}: cannot read the export manifest: {exc}") from None
    if not isinstance(data, dict):
        raise MxportError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
