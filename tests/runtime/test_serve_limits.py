"""`mxport serve` against hostile and careless clients (issue 20): the real server on 127.0.0.1 (serve_helpers.
run_server: uvicorn with the bounded h11 protocol `mxport serve` runs), raw HTTP for what no client library sends,
the official openai client for the API key. Every refusal is a 4xx with OpenAI's error body, and nothing reaches
the log as a traceback. A scripted model (serve_helpers.py) keeps the replies fast and known."""

from __future__ import annotations

import json
import socket
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from serve_helpers import ScriptedStepModel, run_server, server_logs, wait_ready  # noqa: E402

from mxport.runtime.chat.session import chat_format  # noqa: E402
from mxport.runtime.generation.tokenizer import build_harmony_tokenizer  # noqa: E402
from mxport.runtime.serve.app import Served, create_app  # noqa: E402
from mxport.runtime.serve.engine import Engine  # noqa: E402
from mxport.runtime.serve.guard import default_hosts  # noqa: E402
from mxport.runtime.serve.limits import ServeLimits, bytes_per_token, min_tokens  # noqa: E402

VOCAB = 512
CONTEXT = 300
NAME = "m"
USER = [{"role": "user", "content": "Hi"}]
LIMITS = ServeLimits(max_body_mb=0.2, max_stop_chars=64, max_tools=4, max_tools_kb=2, max_json_depth=16,
                     request_timeout=2.0)


@pytest.fixture(scope="module")
def tok():
    return build_harmony_tokenizer(VOCAB)


def make_served(tok, *, tokenizer=True, delay=0.0, per_token=None) -> Served:
    """The scripted model answers the text "The answer." then filler tokens forever."""
    script = tok.encode("The answer.")
    model = ScriptedStepModel(VOCAB, lambda p: 0, [script], filler=tok.encode("a")[0], delay=delay)
    engine = Engine(model, pad_token_id=0, max_batch=8, max_queue=16).start()
    return Served(NAME, engine, tok if tokenizer else None, chat_format(tok) if tokenizer else None,
                  (tok.require("<|endoftext|>"),), CONTEXT, VOCAB, per_token)


@pytest.fixture(scope="module")
def logs():
    with server_logs() as lines:
        yield lines


@pytest.fixture(scope="module")
def base(tok, tmp_path_factory, logs):
    per_token = bytes_per_token(json.loads(tok.save(tmp_path_factory.mktemp("tok") / "t.json").read_text()))
    app = create_app(lambda: make_served(tok, per_token=per_token), limits=LIMITS, default_max_tokens=8,
                     allowed_hosts=default_hosts("127.0.0.1"))  # as `mxport serve` does on loopback
    with run_server(app, LIMITS) as url:
        wait_ready(url)
        yield url


def post(base: str, path: str, body, *, headers=None, status: int) -> dict:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{base}{path}", content=raw, headers={"content-type": "application/json", **(headers or {})},
                   timeout=30)
    assert r.status_code == status, r.text[:500]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@pytest.mark.parametrize("raw, param", [
    (b'{"model": "m", "prompt": "Hi", "temperature": 1e999}', None),  # inf: refused by the parser
    (b'{"model": "m", "prompt": "Hi", "temperature": Infinity}', None),
    (b'{"model": "m", "prompt": "Hi", "temperature": NaN}', None),
    (b'{"model": "m", "prompt": "Hi", "temperature": 2.5}', "temperature"),  # OpenAI's range is [0, 2]
    (b'{"model": "m", "prompt": "Hi", "seed": -1}', "seed"),
    (b'{"model": "m", "prompt": "Hi", "seed": 18446744073709551616}', "seed"),
    (b'{"model": "m", "prompt": "Hi", "top_k": 99999999999999999999}', "top_k"),
    (b'{"model": "m", "prompt": "Hi", "max_tokens": 1' + b"0" * 5000 + b"}", None),  # over Python's int digits
    (b'{"model": "m", "prompt": "\\ud800 lone"}', "prompt"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "\\udfff"}]}', "messages[0].content"),
    (b'{"model": "m", "prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}", None),  # deeper than the C parser goes
    (b'{"model": "m", "prompt": ' + b"[" * 20 + b"1" + b"]" * 20 + b"}", "prompt" + "[0]" * 15),  # > 16 levels
    (b'{"model": "m", "prompt": "caf\xe9"}', None),  # Latin-1, not UTF-8
    (b"\xef\xbb\xbf{}", None),  # a UTF-8 byte-order mark
    (b"", None),
])
def test_bad_bodies_are_400(base, raw, param, logs):
    path = CHAT if b"messages" in raw else COMPLETIONS
    err = post(base, path, raw, status=400)
    assert err["param"] == param, err
    assert not any("Traceback" in line for line in logs.text)


def test_a_tool_call_name_that_is_not_a_string_is_400(base):
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": 7, "arguments": "{}"}}]}]
    err = post(base, CHAT, {"model": NAME, "messages": messages}, status=400)
    assert err["param"].startswith("messages")


def test_stop_strings_and_tools_are_bounded(base):
    err = post(base, COMPLETIONS, {"model": NAME, "prompt": "Hi", "stop": ["x" * 65]}, status=400)
    assert err["param"] == "stop" and "65" in err["message"] and "64" in err["message"]
    post(base, COMPLETIONS, {"model": NAME, "prompt": "Hi", "stop": ["a"] * 5}, status=400)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    err = post(base, CHAT, {"model": NAME, "messages": USER, "tools": [tool] * 5}, status=400)
    assert err["param"] == "tools" and "at most 4" in err["message"]
    wide = {"type": "function", "function": {"name": "f", "description": "d" * 3000, "parameters": {"type": "object"}}}
    err = post(base, CHAT, {"model": NAME, "messages": USER, "tools": [wide]}, status=400)
    assert err["param"] == "tools" and "--max-tools-kb" in err["message"]
    # a stop string of the largest length still works (and stops the reply where it starts)
    r = httpx.post(f"{base}{COMPLETIONS}", json={"model": NAME, "prompt": "Hi", "stop": ["answer" + "z" * 58,
                                                                                         "answer"]})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "The "


def test_body_limit_is_413_declared_or_chunked(base):
    big = json.dumps({"model": NAME, "prompt": "a" * 300_000}).encode()
    err = post(base, COMPLETIONS, big, status=413)
    assert err["code"] == "request_too_large" and str(len(big)) in err["message"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"model": "m", "prompt": "'
        for _ in range(30):
            yield b"a" * 10_000
        yield b'"}'

    r = httpx.post(f"{base}{COMPLETIONS}", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert httpx.get(f"{base}/health").status_code == 200


def test_text_that_cannot_fit_is_refused_before_tokenizing(base):
    # 150 kB of text: at most `per_token` bytes per token, so far more tokens than the context of 300
    err = post(base, COMPLETIONS, {"model": NAME, "prompt": "word " * 30_000}, status=400)
    assert err["code"] == "context_length_exceeded" and "at least" in err["message"]
    err = post(base, CHAT, {"model": NAME, "messages": [{"role": "user", "content": "word " * 30_000}]}, status=400)
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"


@pytest.fixture(scope="module")
def tokenizers(tok, tmp_path_factory):
    """(tokenizer, bytes_per_token) of the harmony test tokenizer and the built-in chat model's."""
    from pathlib import Path

    import mxport
    from mxport.runtime.generation.tokenizer import Tokenizer

    built_in = Path(mxport.__file__).parent / "data" / "chat-tiny" / "tokenizer.json"
    saved = tok.save(tmp_path_factory.mktemp("tok") / "h.json")
    return [(Tokenizer.from_file(p), bytes_per_token(json.loads(p.read_text()))) for p in (saved, built_in)]


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(max_size=300)
       | st.sampled_from(["<|start|>" * 20, "   a   ", "ﬁ" * 50, "\u1100\u1161\u11a8" * 30]))
def test_the_early_bound_never_exceeds_the_real_token_count(tokenizers, text):
    for tokenizer, per_token in tokenizers:
        assert per_token is not None
        for special in (True, False):
            assert min_tokens([text], per_token) <= len(tokenizer.encode(text, allow_special=special))


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/nope", 404, "unknown_url"), ("POST", "/v1/embeddings", 404, "unknown_url"),
    ("GET", COMPLETIONS, 405, "method_not_allowed"), ("DELETE", "/v1/models", 405, "method_not_allowed"),
])
def test_unknown_routes_and_methods_are_openai_shaped(base, method, path, status, code):
    r = httpx.request(method, f"{base}{path}", headers={"content-type": "application/json"}, content=b"{}")
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_json_bodies_only(base):
    body = json.dumps({"model": NAME, "prompt": "Hi"}).encode()
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"content-type": kind} if kind else {}
        r = httpx.post(f"{base}{COMPLETIONS}", content=body, headers=headers)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", kind
    r = httpx.post(f"{base}{COMPLETIONS}", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200


def test_host_allow_list_on_loopback(base):
    body = {"model": NAME, "prompt": "Hi", "max_tokens": 1}
    r = httpx.post(f"{base}{COMPLETIONS}", json=body, headers={"host": "evil.example:8000"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
    assert httpx.get(f"{base}/health", headers={"host": "attacker.test"}).status_code == 403
    for host in ("localhost:1234", "127.0.0.1", "[::1]:8000"):
        assert httpx.post(f"{base}{COMPLETIONS}", json=body, headers={"host": host}).status_code == 200, host


def test_slow_clients_are_cut_off_and_heads_bounded(base):
    port = int(base.rsplit(":", 1)[1])
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:  # a head sent a byte at a time, never finished
        s.settimeout(10)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = False
        while time.monotonic() - t0 < 8:
            try:
                s.sendall(b"X")
                time.sleep(0.2)
            except OSError:
                closed = True
                break
            try:
                s.setblocking(False)
                if s.recv(1) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
    assert closed and time.monotonic() - t0 < LIMITS.request_timeout + 3
    with socket.create_connection(("127.0.0.1", port)) as s:  # a head growing past --max-header-kb unfinished
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000)
        s.settimeout(10)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400") and b'"invalid_http_request"' in reply
    assert httpx.get(f"{base}/health").status_code == 200


def test_api_key(tok):
    app = create_app(lambda: make_served(tok), api_key="s3cret", limits=LIMITS)
    with run_server(app, LIMITS) as url:
        wait_ready(url)  # /health needs no key
        with pytest.raises(openai.AuthenticationError) as exc:
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        assert exc.value.status_code == 401 and exc.value.body["code"] == "invalid_api_key"
        r = httpx.post(f"{url}{COMPLETIONS}", json={"model": NAME, "prompt": "Hi"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key"
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        got = client.completions.create(model=NAME, prompt="Hi", max_tokens=3)
        assert got.choices[0].text == "The answer"[: len(got.choices[0].text)] and got.usage.completion_tokens == 3
        assert client.chat.completions.create(model=NAME, messages=USER, max_tokens=2).usage.completion_tokens == 2


def test_tokenizer_less_export_serves_token_ids(tok):
    """A model without tokenizer.json: token-id prompts on /v1/completions, the reply's ids in `token_ids`."""
    script = tok.encode("The answer.")
    with run_server(create_app(lambda: make_served(tok, tokenizer=False), limits=LIMITS), LIMITS) as url:
        wait_ready(url)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        got = client.completions.create(model=NAME, prompt=[5, 6, 7], max_tokens=4)
        assert got.choices[0].text == "" and got.choices[0].model_extra["token_ids"] == script[:4]
        chunks = [c for c in client.completions.create(model=NAME, prompt=[5, 6, 7], max_tokens=4, stream=True)]
        assert [i for c in chunks if c.choices for i in c.choices[0].model_extra.get("token_ids") or []] == script[:4]
        err = post(url, COMPLETIONS, {"model": NAME, "prompt": "text"}, status=400)
        assert "token ids" in err["message"] and err["param"] == "prompt"
        err = post(url, CHAT, {"model": NAME, "messages": USER}, status=400)
        assert err["code"] == "chat_not_supported" and "token-id prompts" in err["message"]


def test_return_token_ids_with_a_tokenizer(base, tok):
    r = httpx.post(f"{base}{COMPLETIONS}", json={"model": NAME, "prompt": "Hi", "max_tokens": 3,
                                                 "return_token_ids": True}).json()
    assert r["choices"][0]["token_ids"] == tok.encode("The answer.")[:3]
    assert r["choices"][0]["text"] == tok.decode(r["choices"][0]["token_ids"])


def test_no_traceback_was_logged(base, logs):
    """Runs last in this module: all of the above left no traceback in the server's log."""
    assert not any("Traceback" in line for line in logs.text), [x for x in logs.text if "Traceback" in x][:1]


def test_connections_beyond_the_cap_get_503(tok):
    limits = ServeLimits(max_connections=2)
    with run_server(create_app(lambda: make_served(tok), limits=limits), limits) as url:
        wait_ready(url)
        port = int(url.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.settimeout(10)
                reply = b""
                while chunk := s.recv(65536):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 503") and b'"too_many_connections"' in reply
        finally:
            for s in held:
                s.close()
        time.sleep(0.2)
        assert httpx.get(f"{url}/health").status_code == 200  # freed connections make room again


def test_rendering_runs_off_the_event_loop(tok):
    """A chat request whose render is held (as a huge one would be) does not stop /health or a completion."""
    import threading

    gate, entered = threading.Event(), threading.Event()

    class Held:
        def __init__(self, fmt) -> None:
            self.fmt = fmt

        def __getattr__(self, name):
            return getattr(self.fmt, name)

        def render(self, *args):
            entered.set()
            gate.wait(30)
            return self.fmt.render(*args)

    def load() -> Served:
        s = make_served(tok)
        s.chat = Held(s.chat)
        return s

    with run_server(create_app(load, limits=LIMITS), LIMITS) as url:
        wait_ready(url)
        result = {}
        t = threading.Thread(target=lambda: result.update(r=httpx.post(
            f"{url}{CHAT}", json={"model": NAME, "messages": USER, "max_tokens": 2}, timeout=60)))
        t.start()
        try:
            assert entered.wait(10)
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # the loop answers meanwhile
            r = httpx.post(f"{url}{COMPLETIONS}", json={"model": NAME, "prompt": [5, 6], "max_tokens": 2}, timeout=5)
            assert r.status_code == 200  # token ids need no render
        finally:
            gate.set()
            t.join(30)
        assert result["r"].status_code == 200


def test_an_unexpected_error_is_one_log_line_and_an_openai_500(tok):
    """The catch-all: a bug (here the engine's submit raising) answers 500 in OpenAI's shape and logs one line,
    no traceback; the server keeps answering."""

    class Buggy:
        def __init__(self, engine) -> None:
            self.engine = engine

        def __getattr__(self, name):
            return getattr(self.engine, name)

        def submit(self, job):
            raise RuntimeError("boom\nTraceback-looking second line")

    def load() -> Served:
        s = make_served(tok)
        s.engine = Buggy(s.engine)
        return s

    with server_logs() as log, run_server(create_app(load, limits=LIMITS), LIMITS) as url:
        wait_ready(url)
        err = post(url, COMPLETIONS, {"model": NAME, "prompt": "Hi"}, status=500)
        assert err["code"] == "internal_error" and "boom" not in err["message"]  # no internals to the client
        assert httpx.get(f"{url}/health").status_code == 200
    lines = [line for line in log.text if "boom" in line]
    assert len(lines) == 1 and "\n" not in lines[0] and "RuntimeError" in lines[0]
    assert not any("Traceback (most recent call last)" in line for line in log.text)
