"""Atomic outputs, and untrusted JSON read with bounds: a file that mxport writes appears complete, or not at all;
a JSON file it reads is one clear error when it is too big, too deep or not JSON.

    temp_dir_beside(out)   a private scratch folder next to `out` (same file system, so the final rename is atomic),
                           named `.NAME.tmp-PID-*` after the process that owns it
    remove_stale(out)      remove the scratch folders of `out` left by a killed run (their process is gone)
    replace_dir(tmp, out)  move the finished folder onto `out`; an existing `out` is removed only after the move
    write_file(path, fn)   fn(binary file) writes a temporary sibling, renamed over `path` when it returns
    parse_json(data, src)  json.loads; MxportError naming `src` for bad JSON or nesting past the parser's depth
    read_json(path, ...)   the same for a file, refused above `max_bytes` before it is read

On any error the temporary file or folder is removed by the caller's `except` (folders) or here (files).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from mxport.errors import MxportError

JSON_MAX_BYTES = 64 << 20  # a config or manifest is kilobytes; tokenizer.json files reach tens of MB
_SCRATCH = ("tmp", "old")  # .NAME.tmp-PID-* (being written), .NAME.old-PID-* (the previous folder, being removed)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _scratch(out: Path, kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-{os.getpid()}-", dir=out.parent))


def temp_dir_beside(out: Path) -> Path:
    """A new empty folder `.NAME.tmp-PID-*` next to `out`, with the usual mode (mkdtemp alone makes it 0700)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _scratch(out, "tmp")
    tmp.chmod(0o777 & ~_umask())
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(out: Path) -> list[Path]:
    """Remove the scratch folders of `out` (`.NAME.tmp-*`, `.NAME.old-*` beside it) whose process no longer runs:
    what a killed export left. Folders of a live process (a concurrent run) stay; so do names without a process id
    (not ours to judge). Returns the folders removed."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:{'|'.join(_SCRATCH)})-(\d+)-[^/]+")
    removed = []
    for entry in out.parent.iterdir():
        m = pattern.fullmatch(entry.name)
        if m is None or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished folder `tmp` onto `out`. An existing `out` is moved aside first and deleted last, so
    at every moment `out` is either the old complete folder or the new one."""
    old = None
    if out.exists() or out.is_symlink():
        old = _scratch(out, "old")
        os.rename(out, old / "previous")
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_file(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` atomically: `write(f)` fills a temporary sibling, which is renamed over `path` on success and
    deleted on failure. Missing parent folders are created; the file gets the usual mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- untrusted JSON -------------------------------------------------------------------------------------------
def parse_json(data: bytes | str, source: str) -> Any:
    """json.loads(data); MxportError naming `source` when it is not UTF-8 JSON or nests deeper than the parser
    goes (Python's recursion limit: the C parser refuses it without crashing)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise MxportError(f"{source}: not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise MxportError(f"{source}: not valid JSON ({exc})") from None


def read_json(path: str | os.PathLike, *, max_bytes: int = JSON_MAX_BYTES, what: str = "JSON file",
              source: str | None = None) -> Any:
    """The JSON value in `path`; MxportError naming the file when it is missing, unreadable, larger than
    `max_bytes` (checked before reading) or not JSON (that error starts with `source`, by default the path)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise MxportError(f"{path}: {what} of {size:,} bytes is larger than the limit of {max_bytes:,} bytes")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise MxportError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise MxportError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    return parse_json(data, source or str(path))
