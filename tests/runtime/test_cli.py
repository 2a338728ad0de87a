"""`mxport run`, `mxport chat`, `mxport demo`: outputs and exit codes (bad options -> 2 naming the option)."""

import io
import sys

import numpy as np
import pytest

import gen_toy
from mxport.cli import main
from mxport.runtime.generation.generate import Generator


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return gen_toy.write_toy_export(tmp_path_factory.mktemp("toy") / "export", max_positions=512)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_prompt_streams_the_greedy_text(toy, capsys):
    code, out, err = _run(capsys, "run", toy, "--prompt", "Hello world", "--max-new-tokens", "12", "--no-eos")
    assert code == 0, err
    expected = Generator.from_folder(toy).generate("Hello world", max_new_tokens=12, stop_token_ids=())[0].text
    assert out == expected + "\n"


def test_run_input_ids_prints_ids_and_saves_logits(toy, tmp_path, capsys):
    ids = np.array([[5, 6, 7, 8], [9, 10, 11, 12]], np.int64)
    np.save(tmp_path / "ids.npy", ids)
    code, out, err = _run(capsys, "run", toy, "--input-ids", tmp_path / "ids.npy", "--logits-out",
                          tmp_path / "logits.npy", "--max-new-tokens", "5", "--no-eos")
    assert code == 0, err
    gen = Generator.from_folder(toy)
    want = [r.token_ids for r in gen.generate(list(ids), max_new_tokens=5, stop_token_ids=())]
    assert [list(map(int, line.split())) for line in out.strip().splitlines()] == want
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == (2, 4, 320) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, gen.prompt_logits(ids), rtol=1e-6)
    assert not list(tmp_path.glob("*.tmp*"))


def test_run_numpy_backend_agrees_with_ort(toy, tmp_path, capsys):
    np.save(tmp_path / "ids.npy", np.array([3, 1, 4, 1, 5]))
    outs = []
    for backend in ("ort", "numpy"):
        code, out, err = _run(capsys, "run", toy, "--input-ids", tmp_path / "ids.npy", "--backend", backend,
                              "--max-new-tokens", "6", "--no-eos")
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1] and len(outs[0].split()) == 6


def test_run_sampling_is_seeded(toy, capsys):
    args = ["run", toy, "--prompt", "The", "--max-new-tokens", "10", "--temperature", "1.0", "--top-p", "0.9",
            "--no-eos"]
    a = _run(capsys, *args, "--seed", "1")[1]
    b = _run(capsys, *args, "--seed", "1")[1]
    assert a == b


@pytest.mark.parametrize("args, match", [
    (["--prompt", "x", "--temperature", "-1"], "--temperature"),
    (["--prompt", "x", "--top-p", "2"], "--top-p"),
    (["--prompt", "x", "--top-k", "-1"], "--top-k"),
    (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--prompt", "x", "--provider", "nosuch"], "--provider 'nosuch'"),
    (["--prompt", "x", "--max-context", "4", "--max-new-tokens", "8"], "context length exceeded"),
    (["--input-ids", "missing.npy"], "--input-ids missing.npy: file not found"),
    (["--prompt", "x", "--logits-out", "l.npy"], "--logits-out needs --input-ids"),
    (["--prompt", "x", "--stop", ""], "--stop: stop strings must be non-empty"),
    (["--prompt", "x", "--max-context", "0"], "--max-context must be >= 1"),
])
def test_run_bad_options_exit_2(toy, capsys, monkeypatch, tmp_path, args, match):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, "run", toy, *args)
    assert code == 2
    assert match in err


def test_run_bad_ids_file(toy, tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.zeros((2, 2), np.float32))
    code, _, err = _run(capsys, "run", toy, "--input-ids", tmp_path / "f.npy")
    assert code == 2 and "expected a non-empty integer array" in err
    np.save(tmp_path / "big.npy", np.array([1, 999]))
    code, _, err = _run(capsys, "run", toy, "--input-ids", tmp_path / "big.npy")
    assert code == 2 and "ids must be in [0, 320)" in err


def test_argparse_errors_exit_2(toy, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", str(toy), "--prompt", "x", "--backend", "tvm"])
    assert exc.value.code == 2 and "--backend" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["chat", str(toy), "--reasoning", "extreme"])
    assert exc.value.code == 2 and "--reasoning" in capsys.readouterr().err


def test_run_on_a_folder_that_is_neither(tmp_path, capsys):
    code, _, err = _run(capsys, "run", tmp_path, "--prompt", "x")
    assert code == 2 and "neither an exported folder" in err


def test_chat_one_shot_from_stdin(toy, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is 2 + 2?\n"))
    code, out, err = _run(capsys, "chat", toy, "--reasoning", "low", "--max-new-tokens", "8",
                          "--date", "2025-06-28", "--developer", "Be brief.")
    assert code == 0, err
    from mxport.runtime.chat.harmony import HarmonyFormat
    from mxport.runtime.chat.session import ChatSession

    gen = Generator.from_folder(toy)
    chat = ChatSession(gen, HarmonyFormat(gen.tokenizer, current_date="2025-06-28"),
                       [{"role": "developer", "content": "Be brief."}], reasoning="low")
    shown = []
    reply = chat.send("What is 2 + 2?", max_new_tokens=8,
                      on_event=lambda ev: shown.append(ev.text) if ev.kind == "content" else None)
    calls = "".join(f"[tool call] {c.name} {c.arguments}\n" for c in reply.tool_calls)
    assert out == "".join(shown) + "\n" + calls


def test_chat_empty_stdin_is_an_error(toy, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = _run(capsys, "chat", toy)
    assert code == 2 and "stdin is empty" in err


def test_demo_end_to_end(tmp_path, capsys):
    code, out, err = _run(capsys, "demo", "--model", "random-tiny", "--cache-dir", tmp_path / "cache",
                          "--max-new-tokens", "8")
    assert code == 0, err
    assert "building tiny checkpoint" in err
    for row in ("export ", "MB (model.onnx + data)", "vs reference  PASS", "prefill", "decode", "tok/s", "noise"):
        assert row in out, out
    assert (tmp_path / "cache" / "tiny-v1" / "export" / "model.onnx").is_file()


def test_demo_cache_is_reused_and_rebuilt(tmp_path):
    from mxport.commands.demo import demo_config, ensure_checkpoint

    logs = []
    first = ensure_checkpoint(tmp_path, log=logs.append)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert ensure_checkpoint(tmp_path, log=logs.append) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp
    assert logs[1].startswith("using cached")
    ensure_checkpoint(tmp_path, fresh=True, log=logs.append)
    assert logs[2].startswith("building")
    cfg, tok = demo_config()
    assert cfg.eos_token_ids == (tok.token_to_id("<|return|>"), tok.token_to_id("<|call|>"))
    assert max(cfg.eos_token_ids) < cfg.vocab_size
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_demo_bad_cache_dir(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = _run(capsys, "demo", "--cache-dir", tmp_path / "file" / "sub")
    assert code == 2 and "--cache-dir" in err


def test_run_checkpoint_with_numpy_backend(make_checkpoint, tiny_config, tmp_path, capsys):
    from mxport.runtime.oracle.model import ReferenceModel

    ckpt = make_checkpoint(tiny_config)
    ids = np.array([[5, 17, 300, 42, 7, 99]], np.int64)
    np.save(tmp_path / "ids.npy", ids)
    code, out, err = _run(capsys, "run", ckpt, "--backend", "numpy", "--input-ids", tmp_path / "ids.npy",
                          "--logits-out", tmp_path / "logits.npy", "--max-new-tokens", "5", "--no-eos")
    assert code == 0, err
    with ReferenceModel(ckpt) as ref:
        want = ref.generate_greedy(ids, 5)[0, ids.shape[1]:].tolist()
        logits = ref.infer({"input_ids": ids})["logits"]
    assert list(map(int, out.split())) == want
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), logits)
    code, _, err = _run(capsys, "run", ckpt, "--input-ids", tmp_path / "ids.npy")
    assert code == 2 and "export it first" in err and "--backend numpy" in err
