"""Atomic outputs: a file or folder that mxport writes appears complete, or not at all.

    temp_dir_beside(out)   a private scratch folder next to `out` (same file system, so the final rename is atomic)
    replace_dir(tmp, out)  move the finished folder onto `out`; an existing `out` is removed only after the move
    write_file(path, fn)   fn(binary file) writes a temporary sibling, renamed over `path` when it returns

On any error the temporary file or folder is removed by the caller's `except` (folders) or here (files).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir_beside(out: Path) -> Path:
    """A new empty folder `.NAME.tmp-*` next to `out`, with the usual mode (mkdtemp alone makes it 0700)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished folder `tmp` onto `out`. An existing `out` is moved aside first and deleted last, so
    at every moment `out` is either the old complete folder or the new one."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
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
