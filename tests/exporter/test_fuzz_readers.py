"""Fuzzed checkpoint readers: truncated files, flipped header bytes, absurd config values. Whatever the damage, the
reader either reads the checkpoint or raises MxportError naming what is wrong, never another exception.

Every family's tiny preset is fuzzed (a family added to the registry is covered without touching this file)."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxport.errors import MxportError
from mxport.exporter import families
from mxport.exporter.checkpoint import open_checkpoint

TINY = sorted(n for n in families.presets() if n == "tiny" or n.endswith("-tiny"))
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", params=TINY)
def pristine(request, tmp_path_factory):
    from mxport.exporter.synth import PRESETS, write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("fuzz") / request.param, PRESETS[request.param])


def _open_and_read(path) -> None:
    """Open, then read every tensor: MxportError is the only acceptable failure."""
    try:
        with open_checkpoint(path) as ckpt:
            for name in ckpt.names():
                ckpt.get(name)
    except MxportError as exc:
        assert str(exc)


def _copy(pristine, tmp_path):
    dst = tmp_path / "ckpt"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(pristine, dst)
    return dst


@FUZZ
@given(frac=st.floats(0.0, 0.999))
def test_truncated_file(pristine, tmp_path, frac):
    ckpt = _copy(pristine, tmp_path)
    f = sorted(ckpt.glob("*.safetensors"))[0]
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * frac)])
    with pytest.raises(MxportError, match=str(f.name)):
        open_checkpoint(ckpt)


@FUZZ
@given(data=st.data())
def test_flipped_header_bytes(pristine, tmp_path, data):
    ckpt = _copy(pristine, tmp_path)
    f = sorted(ckpt.glob("*.safetensors"))[0]
    raw = bytearray(f.read_bytes())
    header_len = struct.unpack("<Q", raw[:8])[0]
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, 8 + header_len - 1))
        raw[at] ^= data.draw(st.integers(1, 255))
    f.write_bytes(bytes(raw))
    _open_and_read(ckpt)


ABSURD = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True),
                   st.text(max_size=5), st.lists(st.integers(-3, 3), max_size=3), st.just({}))


@FUZZ
@given(data=st.data())
def test_absurd_config_values(pristine, tmp_path, data):
    ckpt = _copy(pristine, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    keys = sorted(config)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(keys))
        if data.draw(st.booleans()):
            config[key] = data.draw(ABSURD)
        else:
            config.pop(key, None)
    (ckpt / "config.json").write_text(json.dumps(config))
    _open_and_read(ckpt)


def test_config_that_is_not_an_object(pristine, tmp_path):
    ckpt = _copy(pristine, tmp_path)
    (ckpt / "config.json").write_text("[1, 2]")
    with pytest.raises(MxportError, match="config.json: expected a JSON object"):
        open_checkpoint(ckpt)
