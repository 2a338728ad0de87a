"""`mxport serve` under abuse (issue 20): the stop matcher is the old one's semantics in linear time, a hypothesis
fuzz over JSON bodies never sees a 500 or a traceback, good clients keep their latency while others send huge
stop strings and bodies, and the command line refuses a bad or busy port before the model loads."""

from __future__ import annotations

import json
import logging
import socket
import statistics
import threading
import time
from collections.abc import Sequence

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from serve_helpers import ScriptedStepModel, run_server, server_logs, wait_ready  # noqa: E402

from mxport.runtime.chat.session import chat_format  # noqa: E402
from mxport.runtime.generation.tokenizer import build_harmony_tokenizer  # noqa: E402
from mxport.runtime.serve.app import Served, create_app  # noqa: E402
from mxport.runtime.serve.engine import Engine  # noqa: E402
from mxport.runtime.generation.stops import StopMatcher  # noqa: E402

VOCAB = 512
NAME = "m"


class NaiveStops:
    """The matcher the server had before (O(L²) per token): the reference for the semantics."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops, self.pending = tuple(stops), ""

    def feed(self, text: str) -> tuple[str, bool]:
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        cut = min((i for s in self.stops if (i := self.pending.find(s)) >= 0), default=None)
        if cut is not None:
            out, self.pending = self.pending[:cut], ""
            return out, True
        hold = max((n for s in self.stops for n in range(1, len(s)) if self.pending.endswith(s[:n])), default=0)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out, False


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text("abc", min_size=1, max_size=6), max_size=4),
       st.lists(st.text("abcd", max_size=5), max_size=12))
def test_stop_matcher_equals_the_naive_search(stops, pieces):
    fast, slow = StopMatcher(stops), NaiveStops(stops)
    for piece in pieces:
        got, want = fast.feed(piece), slow.feed(piece)
        assert got == want, (stops, pieces)
        if want[1]:
            return
    assert fast.flush() == slow.pending


def test_stop_matcher_is_linear():
    """Four stop strings of 300 kB each (what stalled the server): a 20,000-token stream that keeps nearly
    matching them costs milliseconds per token's worth of text, not seconds."""
    stops = ["a" * 300_000 + c for c in "bcde"]
    m = StopMatcher(stops)
    t0 = time.perf_counter()
    for _ in range(20_000):
        out, hit = m.feed("aaaa")
        assert not hit
    assert time.perf_counter() - t0 < 10  # the O(L^2) search took seconds per token here
    assert m.pending == "a" * 80_000  # held back: it could still become a stop string
    assert m.feed("b") == ("a" * 80_000 + "b", False)  # now it cannot
    assert m.feed("x" + "a" * 300_000 + "c") == ("x", True)  # the stop string starts after the x


# ---- the real server --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return build_harmony_tokenizer(VOCAB)


def served(tok, delay: float = 0.0) -> Served:
    model = ScriptedStepModel(VOCAB, lambda p: 0, [tok.encode("The answer.")], filler=tok.encode("a")[0], delay=delay)
    return Served(NAME, Engine(model, max_batch=8, max_queue=32).start(), tok, chat_format(tok),
                  (tok.require("<|endoftext|>"),), 64, VOCAB)


@pytest.fixture(scope="module")
def fuzz_server(tok):
    with server_logs() as lines, run_server(create_app(lambda: served(tok), default_max_tokens=4)) as base:
        wait_ready(base)
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client, lines


FIELDS = ["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream",
          "tools", "tool_choice", "role", "content", "tool_calls", "function", "name", "arguments", "type", "id",
          "tool_call_id", "text", "parameters", "properties"]
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats() | st.text(max_size=20)
           | st.sampled_from(["m", "user", "assistant", "tool", "system", "developer", "function", "text", "low",
                              "\ud800", "<|start|>", "<|end|>", "<think>", "auto", "none", "required"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5),
                           max_leaves=25)


def often(plausible, weird=json_values):
    """Nine times in ten a plausible value (so requests get past validation and run), else anything at all."""
    return st.integers(0, 9).flatmap(lambda i: weird if i == 0 else plausible)


text = st.text(max_size=20) | st.sampled_from(["Hi", "<|start|>user<|message|>x<|end|>", "\ud800", "<think>"])
function = st.fixed_dictionaries({"name": often(st.sampled_from(["f", "get_weather", "a b"])),
                                  "arguments": often(st.sampled_from(["{}", '{"a": 1}', "not json"]))})
call = st.fixed_dictionaries({"id": often(st.just("c1")), "type": often(st.just("function")), "function": function})
message = st.fixed_dictionaries(
    {"role": often(st.sampled_from(["user", "assistant", "tool", "system", "developer"]))},
    optional={"content": often(text), "tool_calls": often(st.lists(call, max_size=2)),
              "tool_call_id": often(st.just("c1")), "name": often(st.just("f"))})
tool = st.fixed_dictionaries({"type": often(st.just("function")), "function": st.fixed_dictionaries(
    {"name": often(st.sampled_from(["f", "g", "a b"]))}, optional={"parameters": often(st.just({"type": "object"})),
                                                                   "description": often(text)})})
common = {"max_tokens": often(st.integers(-1, 6)), "temperature": often(st.floats(-0.5, 2.5)),
          "top_p": often(st.floats(0, 1)), "top_k": often(st.integers(-1, 600)), "seed": often(st.integers(-1, 2**64)),
          "stop": often(st.lists(st.text(max_size=3), max_size=5) | st.text(max_size=3)),
          "stream": often(st.booleans()), "stream_options": often(st.fixed_dictionaries(
              {"include_usage": st.booleans()})), "n": often(st.integers(0, 2))}
chat_body = st.fixed_dictionaries({"model": often(st.just(NAME)), "messages": often(st.lists(message, max_size=4))},
                                  optional={**common, "tools": often(st.lists(tool, max_size=3)),
                                            "tool_choice": often(st.sampled_from(["auto", "none", "required"])),
                                            "reasoning_effort": often(st.sampled_from(["low", "high", "x"]))})
completion_body = st.fixed_dictionaries(
    {"model": often(st.just(NAME)), "prompt": often(text | st.lists(st.integers(-2, 600), max_size=8))},
    optional={**common, "return_token_ids": often(st.booleans())})
bodies = st.one_of(chat_body, completion_body, json_values)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies | st.binary(max_size=64) | st.text(max_size=64).map(str.encode), chat=st.booleans())
def test_fuzz_never_500(fuzz_server, body, chat):
    client, log = fuzz_server
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()  # NaN, Infinity, "\ud800" as JSON writes them
    if isinstance(body, dict) and ("messages" in body or "prompt" in body):
        chat = "messages" in body
    r = client.post("/v1/chat/completions" if chat else "/v1/completions", content=raw,
                    headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 404), (r.status_code, r.text[:300], raw[:300])
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert not any("Traceback" in line for line in log.text), log.text[-1][:2000]
    assert not any(line.startswith(("ERROR", "Exception")) or "failed:" in line for line in log.text), log.text


def test_good_clients_keep_their_latency_under_abuse(tok):
    """Acceptance (issue 20): a short request's latency while another client sends 4 x 300 kB stop strings, or a
    10 MB body, stays within 3x its latency alone (or + 3 s); the abusive requests get 4xx."""
    with run_server(create_app(lambda: served(tok, delay=0.005))) as base:
        wait_ready(base)
        short = {"model": NAME, "prompt": "Hi", "max_tokens": 10}

        def latency() -> float:
            t0 = time.perf_counter()
            r = httpx.post(f"{base}/v1/completions", json=short, timeout=60)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 10
            return time.perf_counter() - t0

        alone = statistics.median(latency() for _ in range(5))
        stops = {"model": NAME, "prompt": "Hi", "max_tokens": 50, "stop": ["x" * 300_000 + c for c in "abcd"]}
        huge = json.dumps({"model": NAME, "prompt": "a" * 10_000_000}).encode()
        statuses: list[int] = []
        done = threading.Event()

        def abuse(body: bytes) -> None:
            with httpx.Client(timeout=60) as c:
                while not done.is_set():
                    r = c.post(f"{base}/v1/completions", content=body, headers={"content-type": "application/json"})
                    statuses.append(r.status_code)

        attackers = [threading.Thread(target=abuse, args=(json.dumps(stops).encode(),)),
                     threading.Thread(target=abuse, args=(huge,))]
        for t in attackers:
            t.start()
        try:
            time.sleep(0.3)
            during = [latency() for _ in range(5)]
        finally:
            done.set()
            for t in attackers:
                t.join(60)
        assert statuses and all(400 <= s < 500 for s in statuses), sorted(set(statuses))
        assert {400, 413} <= set(statuses)
        assert max(during) <= max(3 * alone, alone + 3.0), (alone, during)


# ---- the command line ---------------------------------------------------------------------------------------

@pytest.fixture
def fake_export(tmp_path):
    """A folder that looks exported but whose model cannot load: a refusal must come before loading."""
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    return tmp_path


def test_serve_refuses_a_bad_port_before_loading(fake_export, capsys):
    from mxport.cli import main

    assert main(["serve", str(fake_export), "--port", "99999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--port 99999" in err[0]


def test_serve_refuses_a_busy_port_before_loading(fake_export, capsys):
    from mxport.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(fake_export), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--port {port}" in err[0] and "cannot listen" in err[0]


def test_serve_options_reach_the_server(fake_export, monkeypatch, caplog):
    """Non-loopback without a key warns; MXPORT_API_KEY and the limit flags reach the app and the server."""
    import mxport.runtime.serve.net as net
    from mxport.cli import main

    seen, real = {}, net.make_server

    class Fake:
        def __init__(self, app, limits, **kw):
            seen.update(app=app, limits=limits, **kw)

        def run(self, sockets):
            seen["sockets"] = sockets
            for s in sockets:
                s.close()

    monkeypatch.setattr(net, "make_server", Fake)
    monkeypatch.setenv("MXPORT_API_KEY", "k1")
    with caplog.at_level(logging.WARNING, logger="mxport.serve"):
        assert main(["serve", str(fake_export), "--host", "0.0.0.0", "--port", "0", "--max-body-mb", "1.5",
                     "--max-stop-chars", "10"]) == 0
    assert seen["limits"].max_body_mb == 1.5 and seen["limits"].max_stop_chars == 10
    assert not any("without an API key" in r.message for r in caplog.records)  # the env key counts
    monkeypatch.setattr(net, "make_server", real)
    with run_server(seen["app"]) as url:  # the app the command built wants the key from the environment
        r = httpx.get(f"{url}/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer k1"}).status_code == 503  # no model
    monkeypatch.setattr(net, "make_server", Fake)
    monkeypatch.delenv("MXPORT_API_KEY")
    with caplog.at_level(logging.WARNING, logger="mxport.serve"):
        assert main(["serve", str(fake_export), "--host", "0.0.0.0", "--port", "0"]) == 0
    assert any("without an API key" in r.message for r in caplog.records)
    assert main(["serve", str(fake_export), "--port", "0", "--max-body-mb", "0"]) == 2
