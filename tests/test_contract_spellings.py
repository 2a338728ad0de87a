"""Each contract is spelled once: the export folder's file names and the model I/O names appear as string literals
only in mxport/contract/ (folder.py, io.py); every other module of the package imports them from there.

Read from the source (nothing is imported). Docstrings and prose (a name inside a longer message) do not count: a
literal counts when it IS the name (`"model.onnx"`), ends a path in an f-string (`f"{d}/mxport.json"`), or starts a
cache/hidden-state name (`"past_key_values."`, `f"present.{i}.key"`).
"""

from __future__ import annotations

import ast
from pathlib import Path

from mxport.contract import folder, io

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("mxport", "exporter", "runtime", "ops")
HOME = REPO / "mxport" / "contract"
FILE_NAMES = {folder.MODEL_FILE, folder.DATA_FILE, folder.MANIFEST_FILE, folder.GENAI_FILE, folder.TOKENIZER_FILE,
              folder.TOKENIZER_CONFIG_FILE, folder.CHAT_TEMPLATE_FILE, folder.GENERATION_CONFIG_FILE}
NAME_PREFIXES = (io.PAST, io.PRESENT, io.HIDDEN, io.TAP)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def spelled(value: str) -> str | None:
    """The contract name this literal spells, if it spells one."""
    if value in FILE_NAMES:
        return value
    for name in FILE_NAMES:
        if value.endswith("/" + name):
            return name
    for prefix in NAME_PREFIXES:
        if value.startswith(prefix):
            return prefix
    return None


def offenders() -> list[str]:
    out = []
    for top in PACKAGE_FOLDERS:
        for path in sorted((REPO / top).rglob("*.py")):
            if HOME in path.parents:
                continue
            tree = ast.parse(path.read_text())
            skip = _docstrings(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                    if name := spelled(node.value):
                        out.append(f"{path.relative_to(REPO)}:{node.lineno}: {name!r}")
    return out


def test_spelled_detects_names_and_leaves_prose():
    assert spelled("model.onnx") == "model.onnx" and spelled("/mxport.json") == "mxport.json"
    assert spelled("past_key_values.") == "past_key_values." and spelled("present.3.key") == "present."
    assert spelled("needs tokenizer.json in the folder") is None and spelled("logits") is None


def test_file_and_io_names_live_only_in_the_contract():
    found = offenders()
    assert found == [], "spell these through mxport/contract (folder.py / io.py):\n" + "\n".join(found)
