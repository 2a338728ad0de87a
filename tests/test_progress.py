"""Progress on the slow commands (issue 21): a tqdm bar on a terminal, nothing when piped, nothing with --quiet.

The commands run as a user runs them, in a child process: under a pseudo-terminal (pty, 120 columns) each shows
its bar on stderr; with --quiet, or with its output piped, none. The libraries only call a progress callback
(mxport.contract.progress); their calls are checked here too, and an export made while reporting progress is
byte-identical to one made without.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import numpy as np
import pytest

from mxport.cli import main
from mxport.commands.progress import Bars
from mxport.exporter.export import export

BAR = re.compile(r"%\|")  # tqdm's "{desc}: 42%|####   | 3/7 [...]"


def run_in_pty(argv: list[str], cwd, columns: int = 120, timeout: float = 300) -> tuple[int, str]:
    """Run argv with stdout and stderr on a new pty of `columns` columns; (exit code, everything it wrote)."""
    master, slave = pty.openpty()
    if columns:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=cwd)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed its end
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def run_piped(argv: list[str], cwd) -> tuple[int, str]:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=cwd, timeout=300)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def tiny(tiny_config, make_checkpoint, tmp_path_factory):
    """(checkpoint, its cpu export, prompt ids .npy) of the tiny preset."""
    root = tmp_path_factory.mktemp("progress")
    ckpt = make_checkpoint(tiny_config)
    out = export(ckpt, root / "export", target="cpu", progress=False)
    ids = root / "ids.npy"
    np.save(ids, np.array([5, 9, 13, 2], dtype=np.int64))
    return ckpt, out, ids


# command -> (arguments, the stage its bar names)
COMMANDS = {
    "synth": (lambda c, o, i, tmp: ["synth", "--preset", "tiny", "-o", str(tmp / "s")], "write tensors"),
    "export": (lambda c, o, i, tmp: ["export", str(c), "-o", str(tmp / "e"), "--target", "cpu",
                                     "--experts", "int4"], "write"),
    "verify": (lambda c, o, i, tmp: ["verify", str(o), "--prompts", "2", "--decode-steps", "1"], "verify"),
    "run": (lambda c, o, i, tmp: ["run", str(c), "--backend", "numpy", "--input-ids", str(i),
                                  "--max-new-tokens", "3"], "numpy reference"),
    "bench": (lambda c, o, i, tmp: ["bench", str(o), "--threads", "1", "--prompt-len", "3", "--new-tokens", "1"],
              "measure"),
}


def _argv(name, tiny, tmp_path, *extra):
    make, _ = COMMANDS[name]
    return [sys.executable, "-m", "mxport", *make(*tiny, tmp_path), *extra]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_on_a_terminal_shows_a_bar(name, tiny, tmp_path):
    code, text = run_in_pty(_argv(name, tiny, tmp_path), tmp_path)
    assert code == 0, text[-2000:]
    stage = COMMANDS[name][1]
    assert re.search(rf"{re.escape(stage)}: +\d+%\|", text), text[-2000:]


@pytest.mark.parametrize("name", ["export", "synth"])
def test_quiet_on_a_terminal_and_piped_output_show_none(name, tiny, tmp_path):
    code, text = run_in_pty(_argv(name, tiny, tmp_path / "q", "--quiet"), tmp_path)
    assert code == 0 and not BAR.search(text), text[-2000:]
    code, text = run_piped(_argv(name, tiny, tmp_path / "p"), tmp_path)
    assert code == 0 and not BAR.search(text) and "\r" not in text, text[-2000:]


def test_a_terminal_that_reports_no_width_still_gets_a_bar(tiny, tmp_path):
    """A fresh pty says 0 columns; tqdm would draw an empty line there, so the bar falls back to 80 columns."""
    code, text = run_in_pty(_argv("synth", tiny, tmp_path), tmp_path, columns=0)
    assert code == 0 and re.search(r"write tensors: +\d+%\|", text), text[-2000:]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_quiet_and_not_a_terminal_show_none_in_process(name, tiny, tmp_path, monkeypatch, capsys):
    """Every command's --quiet on a terminal-like stderr, and its output captured (not a terminal): no bar."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    make, _ = COMMANDS[name]
    assert main([*make(*tiny, tmp_path / "q"), "--quiet"]) == 0
    assert not BAR.search(terminal.getvalue()), terminal.getvalue()
    monkeypatch.undo()
    assert main(make(*tiny, tmp_path / "p")) == 0
    captured = capsys.readouterr()
    assert not BAR.search(captured.err + captured.out) and "\r" not in captured.err


def test_bars_follow_the_stream_and_quiet():
    quiet, plain, terminal = _Terminal(), io.StringIO(), _Terminal()
    for stream, flag in ((quiet, True), (plain, False), (terminal, False)):
        with Bars(flag, file=stream) as bars:
            bars("stage one", 1, 4)
            bars("stage one", 4, 4)
            bars("stage two", 10, 20, "B")
            bars.write("a line")
    assert quiet.getvalue() == "a line\n" and plain.getvalue() == "a line\n"
    shown = terminal.getvalue()
    assert re.search(r"stage one: +\d+%\|", shown) and re.search(r"stage two: +\d+%\|", shown)
    assert "a line\n" in shown


# ---- the libraries' callbacks -------------------------------------------------------------------------------
class Heard(list):
    def __call__(self, stage, done, total, unit="it"):
        self.append((stage, done, total, unit))

    def stages(self):
        return list(dict.fromkeys(s for s, *_ in self))

    def last(self, stage):
        return [call for call in self if call[0] == stage][-1]


def test_synth_reports_every_byte(tiny_config, tmp_path):
    from mxport.exporter.synth import plan_bytes, stored_plan, write_checkpoint

    heard = Heard()
    write_checkpoint(tmp_path / "c", tiny_config, progress=heard)
    total = plan_bytes(stored_plan(tiny_config, "hf"))
    assert heard.stages() == ["write tensors"] and heard[-1] == ("write tensors", total, total, "B")
    done = [d for _, d, _, _ in heard]
    assert done == sorted(done) and all(t == total for _, _, t, _ in heard)


def test_export_reports_rules_and_bytes_and_writes_the_same_bytes(tiny, tmp_path):
    ckpt, _, _ = tiny
    heard = Heard()
    a = export(ckpt, tmp_path / "a", target="cpu", experts="int4", dense="int4", progress=heard)
    b = export(ckpt, tmp_path / "b", target="cpu", experts="int4", dense="int4", progress=False)
    for name in ("model.onnx", "model.onnx.data"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    stages = heard.stages()
    assert stages[-1] == "write" and heard[-1][1] == heard[-1][2] > 0 and heard[-1][3] == "B"
    assert {"lower moe", "lower matmul_nbits", "lower attention"} <= set(stages[:-1])  # the quantizing rules too
    assert heard.last("lower moe")[1:3] == (2, 2)  # tiny: 2 MoE layers rewritten to QMoE
    for stage in stages[:-1]:  # each lowering rule ends at its count of matched nodes
        _, done, total, _ = heard.last(stage)
        assert done == total


def test_reference_model_reports_each_layer(tiny_config, make_checkpoint):
    from mxport.runtime.oracle.model import ReferenceModel

    heard = Heard()
    with ReferenceModel(make_checkpoint(tiny_config), progress=heard) as model:
        model.forward(np.array([[1, 2, 3]]))
    n = tiny_config.num_hidden_layers
    assert heard == [("layers", i, n, "it") for i in range(1, n + 1)]


def test_verify_counts_the_reference_layers_over_every_call(tiny):
    from mxport.runtime.judge.verify import verify

    _, out, _ = tiny
    heard = Heard()
    report = verify(out, prompts=2, decode_steps=1, progress=heard)
    assert report, str(report)
    calls, layers = len(report.calls), 2  # tiny: 2 layers; 2 cases x (prefill + 1 step)
    assert calls == 4 and heard.stages() == ["verify"]
    assert [d for _, d, _, _ in heard] == list(range(1, calls * layers + 1))
    assert all(t == calls * layers and u == "layer" for _, _, t, u in heard)


def test_run_on_onnx_reference_counts_its_passes(tiny, tmp_path):
    """`run EXPORT --backend numpy` (onnx.reference over a portable export): one bar over the passes."""
    ckpt, _, ids = tiny
    portable = export(ckpt, tmp_path / "portable", progress=False)
    argv = [sys.executable, "-m", "mxport", "run", str(portable), "--backend", "numpy", "--input-ids", str(ids),
            "--max-new-tokens", "2"]
    code, text = run_in_pty(argv, tmp_path)
    assert code == 0, text[-2000:]
    assert re.search(r"onnx\.reference\+kernels: +\d+%\|", text), text[-2000:]
    code, text = run_piped(argv, tmp_path)
    assert code == 0 and "%|" not in text, text[-2000:]
