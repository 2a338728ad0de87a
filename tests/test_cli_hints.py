"""The hints a new user meets are right: a misspelt option shows the subcommand's usage and the closest option,
synth's help names options that exist, and "export it first" prints a command that runs (mxport/cli.py)."""

import pytest

from mxport.cli import main


def test_misspelt_option_shows_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "ckpt", "-o", "out", "--targt", "cpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("usage: mxport export") and "--targt (did you mean --target?)" in err
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--presett", "tiny"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("usage: mxport synth") and "did you mean --preset?" in err


def test_unknown_top_level_option_shows_the_top_level_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--bogus"])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("usage: mxport [-h]")


def test_help_texts_name_options_that_exist(capsys):
    import re

    with pytest.raises(SystemExit):
        main(["--help"])
    top = " ".join(capsys.readouterr().out.split())  # help lines wrap
    named = re.findall(r"\((\w+) (--[a-z-]+)", top)
    assert ("synth", "--list") in named
    for name, option in named:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert f"  {option}" in capsys.readouterr().out, (name, option)


def test_export_it_first_prints_a_command_that_runs(make_checkpoint, tiny_config, tmp_path, capsys):
    import shlex

    ckpt = make_checkpoint(tiny_config)
    assert main(["run", str(ckpt), "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err
    hint = err.split("`")[1]
    assert hint == f"mxport export {ckpt} -o OUT"
    out = tmp_path / "out"
    assert main([*shlex.split(hint)[1:-1], str(out)]) == 0
    assert (out / "model.onnx").is_file()
