"""mxport.files: atomic outputs."""

import os

import pytest

from mxport.files import replace_dir, temp_dir_beside, write_file


def test_write_file_replaces_or_leaves_the_old_file(tmp_path):
    path = tmp_path / "sub" / "report.json"
    write_file(path, lambda f: f.write(b"first"))
    assert path.read_bytes() == b"first"
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def fails(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_file(path, fails)
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # no temporary file left


def test_replace_dir_swaps_a_finished_folder_in(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    tmp = temp_dir_beside(out)
    assert tmp.parent == tmp_path and oct(tmp.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    (tmp / "new.txt").write_text("new")
    replace_dir(tmp, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old folder and the temporary one are gone


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
