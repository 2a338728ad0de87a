"""A checkpoint's chat template is untrusted input: its resource limits (runtime/chat/sandbox.py) end runaway
loops, refuse oversized values before they are made, and turn every template failure into one error, in the
library, in `mxport chat` (exit 2) and in the server (an OpenAI error body while /health keeps answering)."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
import threading
import time
import tracemalloc

import pytest

from mxport.cli import main
from mxport.errors import MxportError
from mxport.exporter.export import export
from mxport.exporter.synth import PRESETS, write_checkpoint
from mxport.runtime.chat.format import FormatError
from mxport.runtime.chat.sandbox import MAX_INDENT, Limits
from mxport.runtime.chat.template import ChatTemplate, TemplateFormat
from mxport.runtime.generation.tokenizer import Tokenizer

NESTED_RANGE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
USER = [{"role": "user", "content": "hi"}]
STOPPED = "stopped: (more than 2000000 steps|rendering took longer than 10 s)"  # which comes first depends on load


def render(source: str, limits: Limits = Limits(), messages=USER) -> str:
    return ChatTemplate(source, where="tpl.jinja", limits=limits).render(messages)


@pytest.mark.parametrize("source, why", [
    (NESTED_RANGE, STOPPED),
    ("{% set s = 'ab' * 50000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}", STOPPED),
    ("{% for m in messages %}{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}"
     "{% endfor %}{% endfor %}", STOPPED),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    ("{% for i in range(5000) %}{{ 'x' * 1000 }}{% endfor %}", "output exceeds 100000 characters"),
])
def test_runaway_templates_end_with_one_error_quickly(source, why):
    limits = Limits(max_value=100_000) if "output" in why else Limits()
    t0 = time.monotonic()
    with pytest.raises(MxportError, match=rf"^tpl\.jinja: chat template .*{why}"):
        render(source, limits)
    assert time.monotonic() - t0 < 30


def test_a_render_longer_than_the_timeout_stops():
    slow = "{% for i in range(100000) %}{% set x = range(100000)|join %}{% endfor %}"  # few steps, slow ones
    t0 = time.monotonic()
    with pytest.raises(MxportError, match="rendering took longer than 1 s"):
        render(slow, Limits(timeout_s=1.0))
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("source", [
    "{{ 'a' * 10**9 }}", "{{ 10**9 * 'a' }}", "{{ ['a'] * 10**9 }}", "{{ 'a' * 1000000000 }}",
    "{% set x = 'a'|center(1000000000) %}", "{{ 'a'|center(1000000000) }}", "{{ 'a'.ljust(10**9) }}",
    "{{ '{:>1000000000}'.format(1) }}", "{{ '%01000000000d' % 1 }}", "{{ '%*d' % (1000000000, 1) }}",
    "{% set s = 'a' * 100000 %}{{ s|replace('a', s) }}", "{% set s = 'a' * 100000 %}{{ s.replace('a', s) }}",
    "{% set s = 'a' * 100000 %}{{ range(100000)|join(s) }}", "{% set s = 'a' * 100000 %}{{ s.join(s) }}",
    "{% set s = '\n' * 100000 %}{{ s|indent(100000) }}", "{% set s = '\t' * 100000 %}{{ s.expandtabs(100000) }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{{ 2 ** 100000 }}", "{{ (2 ** 4000) * (2 ** 4000) }}", "{{ range(10**6)|list }}", "{{ range(10**9) }}",
    "{% set s = 'a' * 100000 %}{{ [s] * 1000 }}", "{% set s = 'a' * 100000 %}{{ ([s] * 1000)|tojson }}",
    "{% set s = 'a' * 100000 %}{% set x = ([s] * 1000) ~ '' %}", "{% set s = 'a' * 100000 %}{{ ([s] * 1000)|join }}",
    "{% set s = 'a' * 100000 %}{{ range(1000)|map('string')|join(s) }}",
    "{{ range(10)|slice(1000000)|list }}", "{{ [1]|batch(1000000, 'x')|list }}",
])
def test_growing_operations_are_refused_before_the_value_is_made(source):
    tracemalloc.start()
    try:
        with pytest.raises(MxportError, match="chat template stopped"):
            render(source, Limits(max_value=10**6))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{source}: {peak / 2**20:.0f} MiB allocated"


def test_string_multiplication_is_bounded_by_default_and_fine_below_the_limit():
    tracemalloc.start()
    try:
        with pytest.raises(MxportError, match=r"'\*' would make 10000000000 items \(more than 4194304\)"):
            ChatTemplate("{{ 'a' * 10**10 }}")  # nothing is evaluated while compiling (jinja folds constants)
            render("{{ 'a' * 10**10 }}")
        assert tracemalloc.get_traced_memory()[1] < 16 * 2**20
    finally:
        tracemalloc.stop()
    assert render("{{ 'ab' * 3 }}{{ 2 ** 10 }}{{ '%3d|%s' % (7, 'x') }}{{ 'a'|center(5) }}") == "ababab1024  7|x  a  "


def test_tojson_indent_is_bounded():
    assert render("{{ messages|tojson(indent=2) }}") == json.dumps(USER, indent=2)
    with pytest.raises(MxportError, match=f"tojson: indent 100 .at most {MAX_INDENT}"):
        render("{{ messages|tojson(indent=100) }}")
    with pytest.raises(MxportError, match="stopped"):
        render("{{ messages|tojson(indent=10**8) }}")


@pytest.mark.parametrize("source, kind", [
    ("{{ 'a' + 1 }}", "TypeError"), ("{{ 1e308 * 10**400 }}", "OverflowError"), ("{{ 1 // 0 }}", "ZeroDivisionError"),
    ("{{ raise_exception('no tools here') }}", "TemplateError"), ("{{ messages[5].content }}", "UndefinedError"),
    ("{{ ().__class__.__bases__ }}", "SecurityError"),
])
def test_template_failures_are_one_format_error(tmp_path, source, kind):
    folder = _qwen3_folder(tmp_path, source)
    fmt = TemplateFormat(Tokenizer.from_file(folder), folder)
    with pytest.raises(FormatError, match=f"chat_template.jinja: chat template failed: .*{kind}") as exc:
        fmt.render(USER)
    assert exc.value.param == "messages"


def test_templates_are_refused_at_load_when_too_large_or_too_deep(tmp_path):
    with pytest.raises(MxportError, match="chat_template is 300000 characters, more than the limit of 262144"):
        ChatTemplate("x" * 300_000, where="chat_template")
    folder = _qwen3_folder(tmp_path, "{{ 'x' }}" + " " * 300_000)
    with pytest.raises(MxportError, match=r"chat_template.jinja: more than 262144 characters"):
        TemplateFormat(Tokenizer.from_file(folder), folder)
    with pytest.raises(MxportError, match="'lipsum' is undefined"):
        render("{{ lipsum(n=10**6) }}")
    with pytest.raises(MxportError, match="does not compile .RecursionError"):
        ChatTemplate("{{" + "(" * 50_000 + "1" + ")" * 50_000 + "}}")


def test_a_runaway_render_does_not_hold_up_another_thread():
    """The budget belongs to one render: a normal render in another thread meanwhile is unaffected."""
    t = ChatTemplate("{% if messages[0].content == 'loop' %}" + NESTED_RANGE + "{% endif %}{{ messages[0].content }}")
    errors = []
    runaway = threading.Thread(target=lambda: errors.append(pytest.raises(MxportError, t.render,
                                                                          [{"role": "user", "content": "loop"}])))
    runaway.start()
    assert [t.render(USER) for _ in range(50)] == ["hi"] * 50
    runaway.join(60)
    assert not runaway.is_alive() and re.search(STOPPED, str(errors[0].value))


# ---- `mxport chat` and the server with a runaway template ------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    ckpt = write_checkpoint(tmp_path_factory.mktemp("qwen3_tiny") / "ckpt", PRESETS["qwen3-tiny"])
    return export(ckpt, tmp_path_factory.mktemp("qwen3_tiny_export") / "x", progress=False)


def _qwen3_folder(tmp_path, source: str):
    """The synthetic Qwen3 tokenizer files with `source` as chat_template.jinja."""
    folder = tmp_path / "tpl"
    if not folder.exists():
        ckpt = write_checkpoint(tmp_path / "ckpt", PRESETS["qwen3-tiny"])
        folder.mkdir()
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(ckpt / name, folder / name)
    (folder / "chat_template.jinja").write_text(source)
    return folder


RUNAWAY = "{% if messages[-1].content == 'loop' %}" + NESTED_RANGE + "{% endif %}"


def _runaway_copy(exported, tmp_path):
    folder = tmp_path / "runaway"
    shutil.copytree(exported, folder)
    source = (folder / "chat_template.jinja") if (folder / "chat_template.jinja").is_file() else None
    original = source.read_text() if source else json.loads((folder / "tokenizer_config.json").read_text())[
        "chat_template"]
    (folder / "chat_template.jinja").write_text(RUNAWAY + original)
    return folder


def test_cli_chat_with_a_runaway_template_exits_2_within_30_s(exported, tmp_path, capsys, monkeypatch):
    folder = _runaway_copy(exported, tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("loop"))
    t0 = time.monotonic()
    assert main(["chat", str(folder), "--max-new-tokens", "2", "--reasoning", "off"]) == 2
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(f"chat_template.jinja: chat template {STOPPED}", err[0])
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello"))
    assert main(["chat", str(folder), "--max-new-tokens", "2", "--reasoning", "off"]) == 0


def test_server_answers_a_runaway_template_with_an_error_body_and_keeps_serving(exported, tmp_path):
    pytest.importorskip("uvicorn")
    openai = pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx")
    from serve_helpers import run_server, wait_ready

    from mxport.runtime.serve.app import create_app, load_folder

    folder = _runaway_copy(exported, tmp_path)
    with run_server(create_app(lambda: load_folder(folder, model_name="q3"))) as base:
        wait_ready(base)
        result = {}

        def runaway():
            t0 = time.monotonic()
            result["response"] = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={
                "model": "q3", "messages": [{"role": "user", "content": "loop"}], "max_tokens": 2})
            result["seconds"] = time.monotonic() - t0

        thread = threading.Thread(target=runaway)
        thread.start()
        health = httpx.get(f"{base}/health", timeout=30)  # answered (at the latest when the render stops)
        thread.join(60)
        assert health.status_code == 200 and result["seconds"] < 30
        response = result["response"]
        assert 400 <= response.status_code < 600
        error = response.json()["error"]
        assert "chat template stopped" in error["message"] and error["param"] == "messages"
        bad_name = httpx.post(f"{base}/v1/chat/completions", timeout=30, json={"model": "q3", "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": 7}}]}]})
        assert bad_name.status_code == 400
        assert bad_name.json()["error"]["param"] == "messages[1].tool_calls[0].function.name"
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        reply = client.chat.completions.create(model="q3", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=2)
        assert reply.choices[0].finish_reason == "length"
