"""examples/node/generate.mjs (onnxruntime-node + @huggingface/tokenizers) decodes the same greedy tokens as mxport.

Runs where `node` is on PATH and `npm ci --prefix examples/node` has installed the example's packages (.ci/run does).
onnxruntime-node 1.30 (the newest on npm) runs portable exports; the cpu target's GroupQueryAttention takes more
inputs than that version's schema allows (it needs onnxruntime >= 1.32), so the test exports portable.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mxport.runtime.generation.generate import Generator

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(
    NODE is None or not (EXAMPLE / "node_modules" / "onnxruntime-node").is_dir(),
    reason="needs node and `npm ci --prefix examples/node`",
)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from mxport.exporter.export import export
    from mxport.exporter.synth import write_checkpoint
    from mxport.commands.demo import demo_config

    cfg, tok = demo_config()  # tiny preset + harmony tokenizer (eos <|return|>, <|call|>)
    root = tmp_path_factory.mktemp("node")
    ckpt = write_checkpoint(root / "ckpt", cfg, seed=0)
    tok.save(ckpt / "tokenizer.json")
    return export(ckpt, root / "export", progress=False)


def node_generate(folder: Path, *args: str) -> dict:
    done = subprocess.run([NODE, str(EXAMPLE / "generate.mjs"), str(folder), *args, "--json"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_node_greedy_ids_equal_mxport(export_dir):
    prompt = [5, 17, 99, 23, 44, 301, 7, 250, 12, 64, 3, 81]  # longer than the window (8); decode past it too
    want = Generator.from_folder(export_dir).generate(prompt, max_new_tokens=24)[0]
    got = node_generate(export_dir, "--ids", ",".join(map(str, prompt)), "--max-new-tokens", "24")
    assert got["token_ids"] == want.token_ids
    assert got["text"] == want.text


def test_node_text_prompt_uses_the_folder_tokenizer(export_dir):
    gen = Generator.from_folder(export_dir)
    text = "The capital of France is Paris. Les élèves 🙂"
    got = node_generate(export_dir, "--prompt", text, "--max-new-tokens", "12")
    assert got["prompt_ids"] == gen.tokenizer.encode(text)
    assert got["token_ids"] == gen.generate(text, max_new_tokens=12)[0].token_ids


def test_node_bad_arguments_exit_2(export_dir):
    done = subprocess.run([NODE, str(EXAMPLE / "generate.mjs"), str(export_dir)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "usage" in done.stderr


def test_node_names_an_export_it_cannot_load_in_one_line(export_dir, tmp_path):
    from mxport.exporter.export import export

    cpu = export(export_dir.parent / "ckpt", tmp_path / "cpu", target="cpu", progress=False)
    done = subprocess.run([NODE, str(EXAMPLE / "generate.mjs"), str(cpu), "--prompt", "Hi"], capture_output=True,
                          text=True, timeout=120)
    if done.returncode == 0:  # a newer onnxruntime-node runs the cpu graph: then it must agree with mxport
        want = Generator.from_folder(cpu).generate("Hi", max_new_tokens=32)[0].token_ids
        assert node_generate(cpu, "--prompt", "Hi")["token_ids"] == want
        return
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"{cpu}: onnxruntime-node" in lines[0] and "cpu-target export" in lines[0]
    assert "mxport export CKPT -o OUT" in lines[0]
