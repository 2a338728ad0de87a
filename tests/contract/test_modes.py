"""The export-mode table (mxport/contract/modes.py): every mode documented and in the CLI help, one validator whose
errors name the option, the value and the accepted values, exactness from the table, the older spellings read."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from mxport.contract import modes
from mxport.errors import MxportError

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = [(axis, value) for axis in modes.AXES for value in modes.values(axis)]


def _doc_rows() -> dict[str, list[str]]:
    """docs/EXPORT.md's mode table: '--axis value' -> its cells."""
    text = (ROOT / "docs" / "EXPORT.md").read_text()
    section = text.split("## Export modes", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): [c.strip() for c in m.group(2).split("|")]
            for m in re.finditer(r"^\| `(--\w+ [\w.]+)` \|(.*)\|$", section, re.M)}


@pytest.mark.parametrize("axis,value", OPTIONS)
def test_every_mode_is_in_the_docs_as_the_table_says(axis, value):
    row = _doc_rows().get(f"--{axis} {value}")
    assert row is not None, f"docs/EXPORT.md's Export modes table has no row for --{axis} {value}"
    mode = modes.MODES[axis][value]
    assert row[0] == ("yes" if mode.exact else "no") and row[3] == ("yes" if mode.native else "no"), row
    if axis != "target":
        assert row[2] == ", ".join(mode.targets), row
        assert value in (ROOT / "docs" / "LOWERING.md").read_text().split("```")[1], "LOWERING.md's usage lists it"


def test_the_docs_list_no_mode_the_table_lacks():
    assert set(_doc_rows()) == {f"--{axis} {value}" for axis, value in OPTIONS}


def test_every_mode_is_in_the_cli_help():
    from mxport.commands import export

    parser = argparse.ArgumentParser(prog="mxport export")
    export.register(parser)
    text = " ".join(parser.format_help().split())
    for axis, value in OPTIONS:
        mode = modes.MODES[axis][value]
        assert f"{value} ({'exact' if mode.exact else 'lossy'}" in text, (axis, value)
        assert " ".join(mode.help.split()) in text, (axis, value)
    for alias, name in (("fp32", "float32"), ("float", "float32"), ("bf16", "bfloat16")):
        assert f"{alias} = {name}" in text


def test_check_returns_the_one_spelling_and_the_target_default():
    assert modes.check(target="cpu") == modes.ExportModes("cpu", "float32", "float32", "float32", 4)
    assert modes.check(target="portable").experts == "mxfp4" and modes.check(target="cuda").experts == "mxfp4"
    old = modes.check(target="cpu", experts="fp32", dense="bf16")
    assert (old.experts, old.dense) == ("float32", "bfloat16") and old.exact
    assert modes.check(target="portable", experts="float").experts == "float32"
    assert all(name in modes.MODES[axis] for axis in modes.AXES for name in modes.ALIASES[axis].values())


@pytest.mark.parametrize("options,message", [
    (dict(target="tpu"), r"^unknown target 'tpu'; expected one of portable, cpu, cuda$"),
    (dict(experts="fp8"), r"^unknown experts 'fp8'; expected one of mxfp4, float32, int8, int4$"),
    (dict(experts="none"), r"^unknown experts 'none'"),  # recorded for a model without experts, not an option
    (dict(dense="int2"), r"^unknown dense 'int2'; expected one of float32, bfloat16, int8, int4, q4$"),
    (dict(dtype="float64"), r"^unknown dtype 'float64'; expected one of float32, float16, bfloat16$"),
    (dict(target="portable", experts="int4"), r"^--experts int4 \(ORT's QMoE, 4-bit experts\) needs --target cpu or cuda; "
                                              r"--target portable takes --experts mxfp4, float32$"),
    (dict(target="cuda", dense="bf16"), r"^--dense bfloat16 \(.*\) needs --target cpu; --target cuda takes --dense "
                                        r"float32, int8, int4$"),
    (dict(target="cpu", dtype="bfloat16"), r"^--dtype bfloat16 \(.*\) needs --target cuda; --target cpu takes --dtype "
                                           r"float32, float16$"),
    (dict(target="cpu", accuracy_level=5), r"^--accuracy-level must be 0\.\.4 \(ORT's accuracy_level\), found 5$"),
    (dict(target="cpu", experts="int8", accuracy_level=0), r"^--experts int8 has no float32-activation kernel"),
    (dict(target="cpu", dense="q4", accuracy_level=1), r"^--dense q4 \(ai.mxport.LinearQ4\) always quantizes"),
])
def test_check_names_the_option_the_value_and_the_accepted_values(options, message):
    with pytest.raises(MxportError, match=message):
        modes.check(**options)


def test_exact_answers_from_the_table():
    assert modes.exact(experts="mxfp4") and modes.exact(experts="float32", dense="bfloat16")
    assert modes.exact(experts="none") and modes.exact(experts="fp32", dense="bf16")  # older mxport.json spellings
    assert modes.exact(experts="dense")  # the oldest mxport.json of a model without experts
    assert not modes.exact(experts="int8") and not modes.exact(experts="mxfp4", dense="q4")
    assert not modes.exact(experts="mxfp4", dtype="float16") and not modes.exact(experts="unknown")


def _training_modes() -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location("mode_accuracy", ROOT / "training" / "mode_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODES


def test_labels_parse_against_the_table_and_read_back():
    from mxport.runtime.bench.speed import DEFAULT_MODES, NO_EXPERTS_MODES

    for text in (*DEFAULT_MODES, *NO_EXPERTS_MODES, *_training_modes()):
        options = modes.parse_label(text)
        if "/" in text:  # the experts part given
            assert modes.label(**options) == text
    assert modes.parse_label("cpu/fp32/bf16@0") == dict(target="cpu", experts="float32", dense="bfloat16",
                                                        dtype="float32", accuracy_level=0)
    assert modes.parse_label("cuda")["experts"] is None  # export()'s default for the target
    assert modes.label(target="cpu", experts="none", dense="bf16") == "cpu dense-bfloat16"
    with pytest.raises(MxportError, match=r"expected TARGET\[/EXPERTS\[/DENSE\]\]\[@ACCURACY_LEVEL\]\[:DTYPE\]"):
        modes.parse_label("cpu/float32/float32/x")
    with pytest.raises(MxportError, match="unknown dense 'x'"):
        modes.parse_label("cpu/float32/x")
