"""`POST /v1/responses` on real exports, driven by the official openai client: the built-in trained gpt-oss
(mxport/data/chat-tiny, which answers) and a Qwen3 tiny export (random weights). Greedy responses equal greedy chat
completions of the same conversation (plain, each reasoning effort, streamed, a conversation continued by
previous_response_id, function-call items passed back by hand). The scripted models (a real tool call in both chat
formats, the event order, the refusals): test_serve_responses.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from serve_helpers import run_server, wait_ready  # noqa: E402

from mxport.commands import demo  # noqa: E402
from mxport.exporter.export import export  # noqa: E402
from mxport.runtime.serve.app import create_app, load_folder  # noqa: E402

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CHAT_WEATHER = {"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters")}}
CALL_ITEMS = [{"role": "user", "content": "Weather in Paris?"},
              {"type": "function_call", "call_id": "call_7", "name": "get_weather", "arguments": '{"city": "Paris"}'},
              {"type": "function_call_output", "call_id": "call_7", "output": '{"sky": "clear"}'}]
CALL = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CALL_MESSAGES = [{"role": "user", "content": "Weather in Paris?"},
                 {"role": "assistant", "content": None, "tool_calls": [CALL]},
                 {"role": "tool", "tool_call_id": "call_7", "content": '{"sky": "clear"}'}]


@pytest.fixture(scope="module", params=["gpt-oss", "qwen3"])
def model(request, tmp_path_factory, make_checkpoint):
    """(name, openai client, max tokens) of a server on the export."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "gpt-oss":
        folder, max_tokens = export(demo.shipped_checkpoint(), root / "onnx", target="cpu", progress=False), 120
    else:
        from mxport.exporter.synth import PRESETS

        folder, max_tokens = export(make_checkpoint(PRESETS["qwen3-tiny"]), root / "onnx", target="cpu",
                                    progress=False), 12
    with run_server(create_app(lambda: load_folder(folder, model_name=request.param))) as base:
        wait_ready(base)
        yield request.param, openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0), max_tokens


def reasoning_of(response) -> str:
    return "".join(p.text for i in response.output if i.type == "reasoning" for p in i.content)


def chat(client, name, messages, max_tokens, **kw):
    c = client.chat.completions.create(model=name, messages=messages, max_completion_tokens=max_tokens, **kw)
    return c.choices[0].message.content or "", c.choices[0].message.model_extra.get("reasoning") or "", c.usage


def same(response, chat_reply) -> bool:
    text, reasoning, usage = chat_reply
    return ((response.output_text, reasoning_of(response), response.usage.input_tokens, response.usage.output_tokens)
            == (text, reasoning, usage.prompt_tokens, usage.completion_tokens))


def test_greedy_responses_equal_chat_for_each_effort(model):
    name, client, n = model
    question = "What is the capital of France?"
    efforts = ("low", "high") if name == "gpt-oss" else ("none", "high")
    reasonings = []
    for effort in efforts:
        r = client.responses.create(model=name, input=question, reasoning={"effort": effort}, max_output_tokens=n)
        assert same(r, chat(client, name, [{"role": "user", "content": question}], n, reasoning_effort=effort))
        reasonings.append((r.usage.input_tokens, reasoning_of(r)))
        if name == "gpt-oss":  # the trained model answers, reasoning first
            assert r.status == "completed" and "Paris" in r.output_text and reasonings[-1][1]
            assert 0 < r.usage.output_tokens_details.reasoning_tokens < r.usage.output_tokens
    assert reasonings[0] != reasonings[1]  # the effort reaches the prompt (Qwen3: thinking off is in the prompt)


def test_streamed_deltas_equal_the_response(model):
    name, client, n = model
    plain = client.responses.create(model=name, input="What is 12 + 5?", max_output_tokens=n)
    events = list(client.responses.create(model=name, input="What is 12 + 5?", max_output_tokens=n, stream=True))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type == f"response.{plain.status}"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == final.output_text
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == reasoning_of(final)
    assert (final.output_text, reasoning_of(final)) == (plain.output_text, reasoning_of(plain))
    if name == "gpt-oss":
        assert "17" in final.output_text


def test_previous_response_id_continues_the_conversation(model):
    name, client, n = model
    first = client.responses.create(model=name, input="What is the capital of France?", max_output_tokens=n,
                                    instructions="Answer briefly.")
    second = client.responses.create(model=name, previous_response_id=first.id, input="What is 3 + 4?",
                                     max_output_tokens=n)
    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": first.output_text, "reasoning_content": reasoning_of(first)},
                {"role": "user", "content": "What is 3 + 4?"}]  # the instructions are not carried over
    assert same(second, chat(client, name, messages, n))


def test_function_call_items_passed_back_equal_chat_tool_messages(model):
    name, client, n = model
    r = client.responses.create(model=name, input=CALL_ITEMS, tools=[WEATHER], max_output_tokens=n)
    assert same(r, chat(client, name, CALL_MESSAGES, n, tools=[CHAT_WEATHER]))
