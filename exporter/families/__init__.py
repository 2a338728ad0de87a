"""The model family registry: which families mxport reads, and how a config.json names its family.

    families.names()                       # ("gpt_oss", "qwen3", ...)
    families.get("qwen3")                  # Family record (exporter/families/base.py)
    families.detect(config_dict, source)   # the Family a config.json belongs to (model_type, architectures)
    families.config_from_dict(d, source)   # -> that family's frozen config (a DecoderConfig)
    families.read_config(path)             # the same from a file

Adding a family = a folder here (NAME/__init__.py defines `FAMILY = Family(...)`), its line in NAMES, the
oracle's runtime/oracle/families/NAME.py, its tests and its doc (docs/ARCHITECTURE.md, "Adding a family").
Nothing outside this package branches on a family's name.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mxport import files
from mxport.errors import MxportError
from mxport.exporter.families.base import CONFIG_MAX_BYTES, DecoderConfig, Family

# The registry: one line per family. A family NAME is the folder exporter/families/NAME/ (its FAMILY record) and
# the oracle's runtime/oracle/families/NAME.py; both are found by that name.
NAMES: tuple[str, ...] = ("gpt_oss", "gpt2", "qwen3", "qwen3_moe")


def names() -> tuple[str, ...]:
    return NAMES


def _supported() -> str:
    return ", ".join(f"{f.name} ({', '.join(f.architectures)})" for f in all_families())


def get(name: str) -> Family:
    """The Family registered as `name`; MxportError listing the supported ones otherwise."""
    if name not in NAMES:
        raise MxportError(f"unknown model family {name!r}; supported: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}").FAMILY


def all_families() -> list[Family]:
    return [get(n) for n in NAMES]


def detect(d: Mapping[str, Any], source: str = "config.json") -> Family:
    """The family of a config.json: by `model_type`, then `architectures`, then a family's own layout keys."""
    if not isinstance(d, Mapping):
        raise MxportError(f"{source}: expected a JSON object, found {type(d).__name__}")
    model_type, archs = d.get("model_type"), d.get("architectures") or []
    if not isinstance(archs, list):
        archs = [archs]
    for fam in all_families():
        if model_type in fam.model_types:
            return fam
    for fam in all_families():
        if any(a in fam.architectures for a in archs):
            return fam
    if not model_type and not archs:  # e.g. gpt-oss's original/ config.json names no architecture
        for fam in all_families():
            if fam.layout_of(d) != "hf":
                return fam
    raise MxportError(f"{source}: unknown architecture (model_type={model_type!r}, architectures={archs!r}); "
                      f"supported families: {_supported()}")


def config_from_dict(d: Mapping[str, Any], source: str = "config.json") -> DecoderConfig:
    return detect(d, source).config_from_dict(d, source)


def read_json(path: str | Path) -> dict[str, Any]:
    """A config.json's value, read with bounds (size, nesting): mxport.files.read_json."""
    return files.read_json(path, max_bytes=CONFIG_MAX_BYTES, what="config file")


def read_config(path: str | Path) -> DecoderConfig:
    return config_from_dict(read_json(path), str(path))


def presets() -> dict[str, DecoderConfig]:
    """Every family's synth presets by name (names are unique across families)."""
    out: dict[str, DecoderConfig] = {}
    for fam in all_families():
        for name, cfg in fam.presets.items():
            if name in out:
                raise AssertionError(f"preset {name!r} is defined twice")
            out[name] = cfg
    return out
