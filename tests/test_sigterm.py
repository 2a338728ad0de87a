"""SIGTERM stops a long command the way Ctrl-C does: one line, exit 143, no temporary folder left behind; a stop
is never lost (mxport/commands/stop.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mxport.commands.progress import Bars
from mxport.commands.stop import Terminated, stops


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigterm_during_synth_cleans_up(tmp_path: Path):
    out = tmp_path / "mini"
    proc = subprocess.Popen([sys.executable, "-m", "mxport", "synth", "--preset", "mini", "-o", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".mini.tmp-") for p in tmp_path.iterdir()):  # it is writing now
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "terminated", err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the output nor its temporary folder


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_a_swallowed_stop_is_raised_again_at_the_next_progress_report():
    # CPython may lose the exception a handler raises (one that lands inside a C extension's import did: the
    # command then ran to the end and exited 0); the stop is recorded and the next progress report raises it.
    before = signal.getsignal(signal.SIGTERM)
    bars = Bars(quiet=True)
    with pytest.raises(Terminated), stops():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here
        except BaseException:  # noqa: BLE001 - a library that swallows it
            pass
        bars("write tensors", 1, 2)
    assert signal.getsignal(signal.SIGTERM) is before  # in-process callers keep their own handlers
    bars("write tensors", 2, 2)  # and nothing is left recorded
