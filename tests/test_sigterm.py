"""SIGTERM stops a long command the way Ctrl-C does: one line, exit 143, no temporary folder left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


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
