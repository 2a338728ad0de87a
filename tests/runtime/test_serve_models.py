"""Several models from one server: `mxport serve A B` loads each export with its own engine, a request's `model`
picks one (an unknown id is OpenAI's 404 model_not_found), /v1/models lists them, memory is reported per model;
two folders of one name are refused before anything loads."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from serve_helpers import run_server, wait_ready  # noqa: E402

from mxport.cli import main  # noqa: E402
from mxport.exporter.export import export  # noqa: E402
from mxport.exporter.synth import PRESETS  # noqa: E402
from mxport.runtime.generation.generate import Generator  # noqa: E402

PROMPT = [5, 17, 99, 23, 44, 301, 7]


@pytest.fixture(scope="module")
def folders(make_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [export(make_checkpoint(PRESETS[preset]), root / name, target="cpu", progress=False)
            for preset, name in (("gpt2-tiny", "gpt2"), ("qwen3-tiny", "qwen3"))]


def test_one_server_serves_several_models(folders, monkeypatch, caplog):
    import mxport.runtime.serve.net as net

    seen = {}

    class Fake:  # the command builds the app; the test runs it on a real server below
        def __init__(self, app, limits, **kw):
            seen["app"] = app

        def run(self, sockets):
            for s in sockets:
                s.close()

    monkeypatch.setattr(net, "make_server", Fake)
    assert main(["serve", *map(str, folders), "--port", "0", "--prefix-cache-mb", "0.5"]) == 0
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="mxport.serve"), run_server(seen["app"]) as base:
        wait_ready(base, timeout=120)
        assert [m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]] == ["gpt2", "qwen3"]
        for folder in folders:
            body = {"model": folder.name, "prompt": PROMPT, "max_tokens": 8, "return_token_ids": True}
            r = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
            assert r.status_code == 200 and r.json()["model"] == folder.name
            want = Generator.from_folder(folder).generate(PROMPT, max_new_tokens=8)[0].token_ids
            assert r.json()["choices"][0]["token_ids"] == want, folder.name
        r = httpx.post(f"{base}/v1/completions", json={"model": "gpt3", "prompt": PROMPT})
        error = r.json()["error"]
        assert r.status_code == 404 and error["code"] == "model_not_found" and error["param"] == "model"
        assert "'gpt2', 'qwen3'" in error["message"]
        r = httpx.post(f"{base}/v1/responses", json={"model": "qwen3", "input": "Hi", "max_output_tokens": 4},
                       timeout=60)
        assert r.status_code == 200 and r.json()["model"] == "qwen3"
        r = httpx.post(f"{base}/v1/responses", json={"model": "gpt3", "input": "Hi"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        health = httpx.get(f"{base}/health").json()
    assert set(health["models"]) == {"gpt2", "qwen3"}
    for folder in folders:
        model = health["models"][folder.name]
        size = sum(p.stat().st_size for p in folder.glob("model.onnx*")) / 1e6
        # RSS growth is reported, not bounded: a 0.3 MB model may load into pages the process already holds
        assert model["memory_mb"]["weights"] == pytest.approx(size, abs=0.1)
        assert isinstance(model["memory_mb"]["rss_delta"], float)  # may be 0 or below when memory is freed meanwhile
        assert model["prefix_cache"]["max_bytes"] == 500_000
        assert any(f"model {folder.name} loaded (memory MB: " in r.message for r in caplog.records)


def test_two_folders_of_one_name_are_refused(tmp_path, capsys):
    for side in ("a", "b"):
        (tmp_path / side / "m").mkdir(parents=True)
        (tmp_path / side / "m" / "model.onnx").write_bytes(b"not loaded")
    assert main(["serve", str(tmp_path / "a" / "m"), str(tmp_path / "b" / "m"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two models named 'm'" in err[0] and str(tmp_path / "b" / "m") in err[0]
    assert main(["serve", str(tmp_path / "a" / "m"), str(tmp_path), "--model-name", "x", "--port", "0"]) == 2
    assert "no model.onnx" in capsys.readouterr().err  # tmp_path itself is not an export
    (tmp_path / "model.onnx").write_bytes(b"not loaded")
    assert main(["serve", str(tmp_path / "a" / "m"), str(tmp_path), "--model-name", "x", "--port", "0"]) == 2
    assert "--model-name names one model" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "a" / "m"), str(tmp_path), "--ray", "--port", "0"]) == 2
    assert "--ray serves one folder" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--prefix-cache-mb", "-1", "--port", "0"]) == 2
