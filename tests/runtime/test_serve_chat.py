"""The chat side of `mxport serve` with a scripted model: harmony reasoning, tool calls, stop strings, usage, the
503s and a model without a chat format. The real uvicorn server and the official openai client, as in
test_serve.py; the scripted model (serve_helpers.py) makes the "model" write well-formed harmony."""

from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serve_helpers import ScriptedStepModel, run_server, wait_ready  # noqa: E402

from mxport.runtime.serve.app import Served, create_app  # noqa: E402
from mxport.runtime.serve.engine import Engine  # noqa: E402
from mxport.runtime.chat.session import chat_format  # noqa: E402
from mxport.runtime.generation.tokenizer import build_harmony_tokenizer  # noqa: E402

VOCAB = 512
REASONED = "<|channel|>analysis<|message|>The user asks about France.<|end|><|start|>assistant<|channel|>final" \
           "<|message|>The capital of France is Paris.<|return|>"
CALL = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
AFTER_CALL = "<|channel|>final<|message|>It is sunny in Paris.<|return|>"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


@pytest.fixture(scope="module")
def tok():
    return build_harmony_tokenizer(VOCAB)


def scripted(tok, delay: float = 0.0) -> ScriptedStepModel:
    scripts = [tok.encode(s) for s in (REASONED, CALL, AFTER_CALL)]

    def choose(prompt: list[int]) -> int:
        text = tok.decode(prompt)
        if "<|start|>functions.get_weather" in text:
            return 2  # a tool result is in the prompt: answer
        return 1 if "type get_weather" in text else 0  # the tool is offered: call it

    return ScriptedStepModel(VOCAB, choose, scripts, filler=tok.encode("a")[0], delay=delay)


def served(tok, chat=True, delay=0.0, max_batch=8, max_queue=8, name="scripted") -> Served:
    model = scripted(tok, delay)
    engine = Engine(model, pad_token_id=0, max_batch=max_batch, max_queue=max_queue).start()
    return Served(name, engine, tok, chat_format(tok) if chat else None, (tok.require("<|endoftext|>"),), 4096,
                  VOCAB)


@pytest.fixture(scope="module")
def client(tok):
    with run_server(create_app(lambda: served(tok))) as base:
        wait_ready(base)
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


USER = [{"role": "user", "content": "What is the capital of France?"}]


def test_reasoning_and_content(client, tok):
    r = client.chat.completions.create(model="scripted", messages=USER, reasoning_effort="high")
    msg, extra = r.choices[0].message, r.choices[0].message.model_extra
    assert msg.content == "The capital of France is Paris."
    assert extra["reasoning"] == extra["reasoning_content"] == "The user asks about France."
    assert r.choices[0].finish_reason == "stop" and msg.tool_calls is None
    n_reply = len(tok.encode(REASONED))  # the stop token <|return|> included: generated, not shown
    assert r.usage.completion_tokens == n_reply and r.usage.total_tokens == r.usage.prompt_tokens + n_reply


def test_streamed_reasoning_content_and_usage(client):
    chunks = list(client.chat.completions.create(model="scripted", messages=USER, stream=True,
                                                 stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == "The capital of France is Paris."
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == "The user asks about France."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_strings(client):
    r = client.chat.completions.create(model="scripted", messages=USER, stop=["Paris", "zzz"])
    assert r.choices[0].message.content == "The capital of France is "
    assert r.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="scripted", messages=USER, stop="France is", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "The capital of "


def test_max_tokens_gives_length(client):
    r = client.chat.completions.create(model="scripted", messages=USER, max_completion_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_tool_call_round_trip(client):
    r = client.chat.completions.create(model="scripted", messages=USER, tools=[WEATHER])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages = [*USER, choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}]
    r2 = client.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER])
    assert r2.choices[0].message.content == "It is sunny in Paris." and r2.choices[0].finish_reason == "stop"
    # tool_choice none: the tool is not offered, so the scripted model does not call it
    r3 = client.chat.completions.create(model="scripted", messages=USER, tools=[WEATHER], tool_choice="none")
    assert r3.choices[0].finish_reason == "stop" and r3.choices[0].message.tool_calls is None


def test_streamed_tool_call_arguments_arrive_as_deltas(client):
    chunks = [c for c in client.chat.completions.create(model="scripted", messages=USER, tools=[WEATHER],
                                                         stream=True) if c.choices]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id and calls[0].function.name == "get_weather"
    args = [tc.function.arguments for tc in calls[1:]]
    assert len(args) > 1 and json.loads("".join(args)) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_bad_tools_and_tool_choice(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="scripted", messages=USER, tools=[{"type": "function",
                                                                                "function": {"name": "a b"}}])
    assert exc.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="scripted", messages=USER, tools=[WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert exc.value.body["param"] == "tool_choice" and "get_time" in exc.value.body["message"]


def test_no_chat_format_and_full_queue(tok):
    """A model without a chat format (GPT-2 style): chat is 400, completions work. One slot, no queue: 503."""
    app = create_app(lambda: served(tok, chat=False, delay=0.01, max_batch=1, max_queue=0, name="plain"))
    with run_server(app) as base:
        wait_ready(base)
        r = httpx.post(f"{base}/v1/chat/completions", json={"model": "plain", "messages": USER})
        assert r.status_code == 400 and r.json()["error"]["code"] == "chat_not_supported"
        with httpx.stream("POST", f"{base}/v1/completions", timeout=30, json={
                "model": "plain", "prompt": "Hi", "max_tokens": 1000, "stream": True}) as busy:
            lines = busy.iter_lines()  # (kept: dropping the iterator would close the connection)
            next(lines)  # the one slot is taken
            r = httpx.post(f"{base}/v1/completions", json={"model": "plain", "prompt": "Hi", "max_tokens": 2})
            assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full"
        ok = httpx.post(f"{base}/v1/completions", json={"model": "plain", "prompt": "Hi", "max_tokens": 2}, timeout=30)
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == tok.decode(tok.encode(REASONED)[:2])


def test_health_is_503_while_loading(tok):
    gate = threading.Event()

    def slow_load():
        gate.wait(20)
        return served(tok, name="slow")

    with run_server(create_app(slow_load)) as base:
        assert httpx.get(f"{base}/health").status_code == 503
        r = httpx.post(f"{base}/v1/completions", json={"model": "slow", "prompt": "Hi"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        gate.set()
        wait_ready(base)
        assert httpx.get(f"{base}/v1/models").json()["data"][0]["id"] == "slow"


class Broken(ScriptedStepModel):
    def step(self, *args):
        raise RuntimeError("kernel exploded")


def test_a_failing_step_is_a_500_in_openai_shape(tok):
    """The step model raises: a plain request gets 500 with OpenAI's error body, a streamed one an error chunk
    then [DONE]; the engine keeps running (the next request is answered too)."""
    model = Broken(VOCAB, lambda p: 0, [[1]], filler=1)
    app = create_app(lambda: Served("broken", Engine(model).start(), tok, chat_format(tok), (), 4096, VOCAB))
    with run_server(app) as base:
        wait_ready(base)
        for _ in range(2):
            r = httpx.post(f"{base}/v1/completions", json={"model": "broken", "prompt": "Hi", "max_tokens": 2})
            assert r.status_code == 500
            err = r.json()["error"]
            assert err["code"] == "generation_failed" and "kernel exploded" in err["message"]
        with httpx.stream("POST", f"{base}/v1/chat/completions", json={
                "model": "broken", "messages": USER, "stream": True}) as r:
            lines = [line for line in r.iter_lines() if line]
        assert json.loads(lines[-2][6:])["error"]["code"] == "generation_failed" and lines[-1] == "data: [DONE]"
