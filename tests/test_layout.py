"""The package's shape, read from the source (nothing is imported): layers, no import cycles, modules under 500
lines, and the docs the repository cites.

    ground floor  mxport/{__init__,errors,files,folders}.py, mxport/contract/   import nothing of mxport above them
    ops           ops/                                                          + the ground floor
    exporter      exporter/                                                     + ops
    runtime       runtime/                                                      + exporter (checkpoint reader, configs)
    top           mxport/cli.py, mxport/__main__.py, mxport/commands/          anything

A module may import its own layer and the layers below it, in any function (imports inside functions count).
Module-level imports (those that run when the module loads; `if TYPE_CHECKING:` ones do not) form no cycle.
Libraries (every layer below the commands) hold no argparse and call no print: the command layer does both.
Every doc the code, the docs or the README cites (`docs/<name>.md`, or `<name>.md` beside the citing file or in
docs/) is a file of the repository.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Import package -> repository folder (setup.py installs the folders under these names).
ROOTS = {"mxport": "mxport", "mxport.exporter": "exporter", "mxport.runtime": "runtime", "mxport.ops": "ops"}
MAX_LINES = 500

GROUND, OPS, EXPORTER, RUNTIME, TOP = range(5)
LAYER_NAMES = ("ground floor", "ops", "exporter", "runtime", "commands/cli")




def layer(module: str) -> int | None:
    """The layer of a module of the package (GROUND .. TOP), None for a module outside them."""
    for prefix, rank in (("mxport.ops", OPS), ("mxport.exporter", EXPORTER), ("mxport.runtime", RUNTIME),
                         ("mxport.commands", TOP), ("mxport.contract", GROUND)):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    if module in ("mxport", "mxport.errors", "mxport.files", "mxport.folders"):
        return GROUND
    if module in ("mxport.cli", "mxport.__main__"):
        return TOP
    return None


def _modules() -> dict[str, Path]:
    """Every module of the four roots: dotted name -> file (a package's name for its __init__.py)."""
    found: dict[str, Path] = {}
    for package, folder in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


@dataclass(frozen=True)
class Import:
    target: str  # the mxport module it loads
    line: int
    at_load: bool  # runs when the importing module loads (module level, not under TYPE_CHECKING)


def _target(name: str) -> str | None:
    """The known module `name` is, or the nearest known package holding it (an attribute of that package)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(module: str) -> list[Import]:
    """The mxport modules `module` imports, wherever the import statement is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, at_load: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), at_load)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if (target := _target(alias.name)) is not None:
                        found.append(Import(target, child.lineno, at_load))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:  # `from pkg import sub` loads pkg.sub when that is a module
                    if (target := _target(f"{base}.{alias.name}") or _target(base)) is not None:
                        found.append(Import(target, child.lineno, at_load))
            else:
                visit(child, at_load)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def _where(module: str, imp: Import) -> str:
    return f"{MODULES[module].relative_to(REPO)}:{imp.line}: {module} -> {imp.target}"


def test_every_module_has_a_layer():
    assert MODULES, "no modules found"
    assert [m for m in MODULES if layer(m) is None] == []


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for module, found in GRAPH.items():
        for imp in found:
            if layer(imp.target) > layer(module):
                upward.append(f"{_where(module, imp)} ({LAYER_NAMES[layer(module)]} imports "
                              f"{LAYER_NAMES[layer(imp.target)]})")
    assert upward == [], "upward imports:\n" + "\n".join(upward)


def _command_code(module: str) -> list[str]:
    """`import argparse` and print() calls in a module, as 'file:line: what'."""
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names) or (
                isinstance(node, ast.ImportFrom) and node.module == "argparse"):
            found.append(f"{MODULES[module].relative_to(REPO)}:{node.lineno}: imports argparse")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append(f"{MODULES[module].relative_to(REPO)}:{node.lineno}: print()")
    return found


def test_libraries_hold_no_argparse_and_no_printing():
    libraries = [m for m in MODULES if layer(m) < TOP]
    found = {m: _command_code(m) for m in libraries}
    unknown = [line for lines in found.values() for line in lines]
    assert unknown == [], "command-line code in libraries (it belongs in mxport/commands/):\n" + "\n".join(unknown)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_find_cycle_reports_the_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_modules():
    at_load = {m: {i.target for i in found if i.at_load and i.target != m} for m, found in GRAPH.items()}
    cycle = find_cycle(at_load)
    assert cycle is None, "import cycle (module-level imports): " + " -> ".join(cycle)


def test_every_module_is_under_500_lines():
    lengths = {m: len(path.read_text().splitlines()) for m, path in MODULES.items()}
    long = [f"{MODULES[m].relative_to(REPO)}: {n} lines" for m, n in lengths.items() if n >= MAX_LINES]
    assert long == [], f"modules of {MAX_LINES} lines or more:\n" + "\n".join(long)


# A citation of one of the project's docs: an upper-case name (ARCHITECTURE.md, docs/LOWERING.md, ../README.md).
# Other projects' docs cited by name (harmony's docs/format.md, ORT's ContribOperators.md) are spelled otherwise.
DOC_CITATION = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[A-Z][A-Z0-9_]*\.md)\b")
CITING_FOLDERS = ("mxport", "exporter", "runtime", "ops", "training", "tests", "examples", "docs")
CITING_SUFFIXES = {".py", ".md", ".toml", ".c", ".h", ".mjs", ".js"}


def _citing_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "pyproject.toml", REPO / "setup.py"]
    for folder in CITING_FOLDERS:
        files += [p for p in sorted((REPO / folder).rglob("*")) if p.suffix in CITING_SUFFIXES
                  and "node_modules" not in p.parts and p.is_file()]
    return files


def _cited_file(cited: str, citing: Path) -> Path | None:
    """The repository file a citation names: from the repository root, beside the citing file, or in docs/."""
    places = [REPO / cited, citing.parent / cited] + ([REPO / "docs" / cited] if "/" not in cited else [])
    for path in places:
        path = path.resolve()
        if path.is_file() and path.is_relative_to(REPO):
            return path
    return None


def test_doc_citation_pattern():
    text = 'see docs/LOWERING.md, ARCHITECTURE.md "Model I/O", [x](../README.md), format.md, ContribOperators.md'
    assert DOC_CITATION.findall(text) == ["docs/LOWERING.md", "ARCHITECTURE.md", "../README.md"]


def test_every_cited_doc_is_in_the_repository():
    missing = []
    for path in _citing_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            missing += [f"{path.relative_to(REPO)}:{number}: {cited}" for cited in DOC_CITATION.findall(line)
                        if _cited_file(cited, path) is None]
    assert missing == [], "cited docs that are not in the repository:\n" + "\n".join(missing)

