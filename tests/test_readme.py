"""README's "Using it" block works as written: its shell lines, parsed from README.md, run in a fresh shell.

Each line runs as `bash -c 'source .venv/bin/activate && LINE'` in a temporary folder holding `.venv` (this test's
environment) and a copy of the repository's `examples`, with the venv's bin left off PATH, as in a new terminal. The only
changes to a line are the smaller presets (PRESET_FOR_TEST: mini -> tiny, qwen3-moe-mini -> qwen3-moe-tiny, ...)
and serve's port (a free one). Lines that are not run, and why, are in SKIPPED_BECAUSE.

Also: examples/generate.py runs in a venv holding only onnxruntime, numpy and tokenizers (README's claim), and its
chat turn answers; `mxport demo`'s suggested next command names an mxport the user's shell can run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESET_FOR_TEST = {
    "mini": "tiny", "gpt-oss-20b": "tiny", "gpt-oss-120b": "tiny",
    "qwen3-moe-mini": "qwen3-moe-tiny", "qwen3-30b-a3b": "qwen3-moe-tiny",
    "qwen3-0.6b": "qwen3-tiny", "qwen3-8b": "qwen3-tiny", "gpt2": "gpt2-tiny", "gpt2-xl": "gpt2-tiny",
}
OFFLINE = r"ENOTFOUND|EAI_AGAIN|ETIMEDOUT|ECONNREFUSED|ECONNRESET|network request .* failed"
TINY_PRESETS = {"tiny", "qwen3-moe-tiny", "qwen3-tiny", "gpt2-tiny"}
SKIPPED_BECAUSE = {
    "pip install": "this test's environment has the `test` extra, which holds the extras the line installs "
                   "(checked by test_readme_install_line_is_covered_by_the_test_extra)",
    "--peers": "bench --peers runs transformers and onnxruntime-genai for minutes (7 min on mini); "
               "tests/runtime/test_bench.py covers the peers",
}


def using_it_lines(readme: str) -> list[str]:
    """The command lines of the first ```bash block under '## Using it' (comment-only lines left out)."""
    section = readme.split("## Using it", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def for_test(line: str, port: int) -> str:
    """The line on the tiny presets, serve on `port`."""
    line = re.sub(r"--preset (\S+)", lambda m: f"--preset {PRESET_FOR_TEST.get(m.group(1), m.group(1))}", line)
    return re.sub(r"--port \d+", f"--port {port}", line)


def fresh_shell_env() -> dict[str, str]:
    """This environment as a new terminal has it: no active venv, the venv's bin not on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A folder laid out like the clone after command 1: .venv (this test's environment) and examples/."""
    root = tmp_path_factory.mktemp("clone")
    venv = Path(sys.prefix)
    if (venv / "bin" / "activate").is_file():
        (root / ".venv").symlink_to(venv)
    else:  # not run from a venv: an activate script that does what a venv's does for PATH
        (root / ".venv" / "bin").mkdir(parents=True)
        (root / ".venv" / "bin" / "activate").write_text(f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH\n")
    # a copy (npm ci refuses a symlinked --prefix), without installed packages: the Node line installs them
    shutil.copytree(ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns("node_modules", "__pycache__"))
    return root


def bash(clone: Path, line: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"source .venv/bin/activate && {line}"], cwd=clone, env=fresh_shell_env(),
                          capture_output=True, text=True, timeout=timeout)


def serve_and_ask(clone: Path, line: str, port: int) -> str | None:
    """Start the serve line, wait for /health, send one chat request; None when it answered 200, else why not."""
    proc = subprocess.Popen(["bash", "-c", f"source .venv/bin/activate && exec {line}"], cwd=clone,
                            env=fresh_shell_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        else:
            return f"not healthy within 120 s (exit {proc.poll()})"
        body = json.dumps({"model": "mini-cpu", "messages": [{"role": "user", "content": "What is 2 + 2?"}],
                           "max_tokens": 8}).encode()
        request = urllib.request.Request(f"{base}/v1/chat/completions", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return f"chat answered {exc.code}: {exc.read()[:300]!r}"
        if reply["choices"][0]["message"]["role"] != "assistant" or reply["usage"]["completion_tokens"] < 1:
            return f"unexpected reply {reply}"
        return None
    finally:
        proc.terminate()
        try:
            out = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
        if proc.returncode not in (0, -15, 143):
            return f"serve exited {proc.returncode}: {out[-500:]}"


def test_readme_using_it_lines_run_as_written_on_the_tiny_presets(clone):
    lines = using_it_lines((ROOT / "README.md").read_text())
    assert len(lines) >= 20 and lines[0].split("#")[0].strip() == "source .venv/bin/activate"
    port = free_port()
    failures, ran, skipped = [], 0, []
    for line in lines:
        reason = next((why for key, why in SKIPPED_BECAUSE.items() if key in line), None)
        if reason is not None:
            skipped.append(line)
            continue
        cmd = for_test(line, port)
        presets = re.findall(r"--preset (\S+)", cmd)
        assert set(presets) <= TINY_PRESETS, cmd
        if " serve " in f" {cmd}":
            why = serve_and_ask(clone, cmd, port)
        elif cmd.startswith("npm ") and (shutil.which("npm") is None or shutil.which("node") is None):
            skipped.append(line)  # no Node.js on this machine (tests/runtime/test_node_example.py skips too)
            continue
        else:
            done = bash(clone, cmd, timeout=300)
            if cmd.startswith("npm ") and done.returncode != 0 and re.search(OFFLINE, done.stderr):
                skipped.append(line)  # the npm registry cannot be reached from here (.ci/run tolerates it too)
                continue
            why = None if done.returncode == 0 else f"exit {done.returncode}: {(done.stderr or done.stdout)[-600:]}"
        ran += 1
        if why:
            failures.append(f"{cmd}\n    {why}")
    assert not failures, "README lines that do not work:\n" + "\n".join(failures)
    assert ran >= 20 and len(skipped) <= 3, skipped
    # what the lines made: the walk really ran (a harmony tokenizer beside the gpt-oss export, run's logits)
    assert (clone / "mini-cpu" / "tokenizer.json").is_file() and (clone / "logits.npy").is_file()


def test_readme_install_line_is_covered_by_the_test_extra():
    lines = [line for line in using_it_lines((ROOT / "README.md").read_text()) if "pip install" in line]
    assert lines, "the Using-it block names what to install for serve, bench --peers and genai"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    test = set(extras["test"])
    for line in lines:
        named = re.search(r'"\.\[([\w,]+)\]"', line)
        assert named, line
        for extra in named.group(1).split(","):
            assert set(extras[extra]) <= test, (extra, set(extras[extra]) - test)


@pytest.fixture(scope="session")
def bare_venv(tmp_path_factory) -> Path:
    """A venv with only onnxruntime, numpy and tokenizers (this environment's versions, from the package index)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wanted = [f"{name}=={version(name)}" for name in ("onnxruntime", "numpy", "tokenizers")]
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *wanted],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return venv / "bin" / "python"


def test_generate_example_runs_with_only_onnxruntime_numpy_tokenizers(bare_venv, tmp_path):
    from mxport.commands.demo import shipped_checkpoint
    from mxport.exporter.export import export

    no_mxport = subprocess.run([str(bare_venv), "-c", "import mxport"], capture_output=True, text=True, cwd=tmp_path)
    assert no_mxport.returncode != 0 and "No module named 'mxport'" in no_mxport.stderr
    out = export(shipped_checkpoint(), tmp_path / "chat", progress=False)  # the trained built-in gpt-oss
    done = subprocess.run([str(bare_venv), str(ROOT / "examples" / "generate.py"), str(out)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("backend: onnxruntime") and sum(": '" in x for x in lines) >= 2
    answer = next(x for x in lines if x.startswith("answer: ")).removeprefix("answer: ")
    assert re.search(r"(?<!\d)4(?!\d)", answer), done.stdout  # "What is 2 + 2?" -> "2 + 2 = 4."


def test_demo_next_command_is_one_the_shell_can_run(tmp_path, monkeypatch):
    from mxport.commands.demo import mxport_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", fresh_shell_env()["PATH"])
    cmd = mxport_command()
    if shutil.which("mxport") is None:  # a fresh shell: not the bare name, a path to this installation's script
        assert cmd != "mxport"
    done = subprocess.run([*shlex.split(cmd), "--version"], capture_output=True, text=True, timeout=60,
                          env=fresh_shell_env())
    assert done.returncode == 0 and done.stdout.startswith("mxport "), (cmd, done.stderr)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if (Path(sys.executable).parent / "mxport").is_file():
        assert mxport_command() == "mxport"  # an active venv: the bare name works
