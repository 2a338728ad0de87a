"""`POST /v1/responses` with scripted models that write well-formed replies in both chat formats (harmony, a Qwen3
chat template): the official openai client's `responses.create` plain and streamed (event order, deltas equal the
final text), reasoning, a function-tool round trip by `previous_response_id` and by items passed back, the store's
bounds, and hostile raw HTTP (every refusal a 4xx naming the field). The real models: test_serve_responses_models.py.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from serve_helpers import ScriptedStepModel, run_server, server_logs, wait_ready  # noqa: E402

from mxport.exporter.families.qwen3.tokenizer import write_synth_files  # noqa: E402
from mxport.exporter.synth import PRESETS  # noqa: E402
from mxport.runtime.chat.harmony import HarmonyFormat  # noqa: E402
from mxport.runtime.chat.template import TemplateFormat  # noqa: E402
from mxport.runtime.generation.tokenizer import Tokenizer, build_harmony_tokenizer  # noqa: E402
from mxport.runtime.serve.app import Served, create_app, prepare  # noqa: E402
from mxport.runtime.serve.engine import Engine, wait_idle  # noqa: E402
from mxport.runtime.serve.limits import ServeLimits  # noqa: E402
from mxport.runtime.serve.protocol import parse_request  # noqa: E402
from mxport.runtime.serve.responses import parse_responses  # noqa: E402
from mxport.runtime.serve.store import ResponseStore  # noqa: E402

QUESTION = "What is the capital of France?"
ROLES_FUZZ = ("user", "assistant", "system", "developer", "tool")
REASONING, ANSWER, AFTER = "The user asks about France.", "The capital of France is Paris.", "It is sunny in Paris."
SCRIPTS = {  # the replies: reasoned answer, a tool call, the answer after the tool's result
    "harmony": (f"<|channel|>analysis<|message|>{REASONING}<|end|><|start|>assistant<|channel|>final<|message|>"
                f"{ANSWER}<|return|>",
                "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
                'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>',
                f"<|channel|>final<|message|>{AFTER}<|return|>"),
    "template": (f"<think>\n{REASONING}\n</think>\n\n{ANSWER}<|im_end|>",
                 '<think>\nNeed the weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
                 '{"city": "Paris"}}\n</tool_call><|im_end|>',
                 f"{AFTER}<|im_end|>"),
}
RESULT_MARK = {"harmony": "<|start|>functions.get_weather", "template": "<tool_response>"}
OFFER_MARK = {"harmony": "type get_weather", "template": '"get_weather"'}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CHAT_WEATHER = {"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters")}}


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_tokenizer")
    write_synth_files(PRESETS["qwen3-tiny"], folder)
    return folder


def chat_of(kind, folder):
    """(tokenizer, chat format, vocab) of a format."""
    if kind == "harmony":
        tok = build_harmony_tokenizer(512)
        return tok, HarmonyFormat(tok), 512
    tok = Tokenizer.from_file(folder)
    return tok, TemplateFormat(tok, folder), PRESETS["qwen3-tiny"].vocab_size


def served(kind, folder, name="scripted", delay=0.0) -> Served:
    tok, fmt, vocab = chat_of(kind, folder)
    scripts = [tok.encode(s) for s in SCRIPTS[kind]]

    def choose(prompt: list[int]) -> int:
        text = tok.decode(prompt, skip_special_tokens=False) if kind == "template" else tok.decode(prompt)
        return 2 if RESULT_MARK[kind] in text else (1 if OFFER_MARK[kind] in text else 0)

    model = ScriptedStepModel(vocab, choose, scripts, filler=tok.encode("a")[0], delay=delay)
    return Served(name, Engine(model, max_batch=8, max_queue=8).start(), tok, fmt, (), 4096, vocab)


@pytest.fixture(scope="module", params=["harmony", "template"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def server(kind, qwen3_folder):
    app = create_app(lambda: served(kind, qwen3_folder))
    with run_server(app) as base:
        wait_ready(base)
        yield base, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0)


def texts(response, kind: str) -> list[str]:
    return ["".join(p.text for p in item.content) for item in response.output if item.type == kind]


def test_plain_reasoning_and_usage(client, kind, qwen3_folder):
    r = client.responses.create(model="scripted", input=QUESTION, reasoning={"effort": "high"})
    assert r.status == "completed" and r.object == "response" and r.id.startswith("resp_")
    assert [i.type for i in r.output] == ["reasoning", "message"]
    assert r.output_text == ANSWER and texts(r, "reasoning") == [REASONING]
    assert r.output[1].role == "assistant" and r.output[1].status == "completed"
    tok = chat_of(kind, qwen3_folder)[0]
    n_reply = len(tok.encode(SCRIPTS[kind][0]))  # the stop token included: generated, not shown
    assert r.usage.output_tokens == n_reply and r.usage.total_tokens == r.usage.input_tokens + n_reply
    assert 0 < r.usage.output_tokens_details.reasoning_tokens < n_reply
    assert r.reasoning.effort == "high" and r.tool_choice == "auto" and r.previous_response_id is None


def _runs(types: list[str]) -> list[str]:
    """Event types with each run of deltas folded into one."""
    return [t for i, t in enumerate(types) if not (t.endswith(".delta") and i and types[i - 1] == t)]


def test_streamed_events_in_the_spec_order(client):
    events = list(client.responses.create(model="scripted", input=QUESTION, stream=True))
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    part = ["response.output_item.added", "response.content_part.added", "{}.delta", "{}.done",
            "response.content_part.done", "response.output_item.done"]
    assert _runs(types) == ["response.created", "response.in_progress",
                            *(p.format("response.reasoning_text") for p in part),
                            *(p.format("response.output_text") for p in part), "response.completed"]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert text == final.output_text == ANSWER and reasoning == REASONING
    assert types.count("response.output_text.delta") > 1  # streamed as generated, not in one piece
    done = [e for e in events if e.type == "response.output_item.done"]
    assert [d.item.id for d in done] == [i.id for i in final.output] and final.usage.output_tokens > 0
    assert all(e.item_id == final.output[1].id for e in events if e.type == "response.output_text.delta")


def test_function_tool_round_trip_by_previous_response_id(client):
    r1 = client.responses.create(model="scripted", input="Weather in Paris?", tools=[WEATHER])
    assert r1.status == "completed" and r1.output_text == ""
    (call,) = [i for i in r1.output if i.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_") and call.status == "completed"
    r2 = client.responses.create(model="scripted", previous_response_id=r1.id, tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'}])
    assert r2.output_text == AFTER and r2.previous_response_id == r1.id
    assert r2.usage.input_tokens > r1.usage.input_tokens  # the stored conversation came first


def test_function_tool_round_trip_with_items_passed_back(client):
    question = {"role": "user", "content": "Weather in Paris?"}
    r1 = client.responses.create(model="scripted", input=[question], tools=[WEATHER], store=False)
    (call,) = [i for i in r1.output if i.type == "function_call"]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'}
    r2 = client.responses.create(model="scripted", input=[question, *r1.output, result], tools=[WEATHER])
    assert r2.output_text == AFTER
    with pytest.raises(openai.NotFoundError) as exc:  # store=False: nothing kept
        client.responses.create(model="scripted", previous_response_id=r1.id, input="Hi")
    assert exc.value.body["param"] == "previous_response_id" and exc.value.status_code == 404


def test_streamed_function_call_arguments(client):
    events = list(client.responses.create(model="scripted", input="Weather?", tools=[WEATHER], stream=True))
    types = _runs([e.type for e in events])
    assert types[-5:] == ["response.output_item.added", "response.function_call_arguments.delta",
                          "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(args) == json.loads(done.arguments) == {"city": "Paris"}
    assert events[-1].response.output[-1].arguments == done.arguments


def test_max_output_tokens_is_incomplete(client):
    r = client.responses.create(model="scripted", input=QUESTION, max_output_tokens=8)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 8 and r.max_output_tokens == 8
    assert [i.type for i in r.output] == ["reasoning"] and REASONING.startswith(texts(r, "reasoning")[0])
    events = list(client.responses.create(model="scripted", input=QUESTION, max_output_tokens=8, stream=True))
    assert events[-1].type == "response.incomplete" and events[-1].response.output[-1].status == "incomplete"


def test_hostile_bodies_are_4xx_naming_the_field(server, kind):
    base = server[0]
    ok = {"model": "scripted", "input": QUESTION}
    cases = [
        ({"input": [{"type": "image_generation_call", "id": "x"}]}, 400, "input[0].type"),
        ({"input": [{"type": "bogus"}]}, 400, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, 400,
         "input[0].content[0]"),
        ({"input": [{"role": "tool", "content": "x"}]}, 400, "input[0].role"),
        ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, 400, "input[0].call_id"),
        ({"input": [{"type": "function_call", "call_id": 7, "name": "f", "arguments": "{}"}]}, 400,
         "input[0].call_id"),
        ({"input": [{"type": "reasoning", "summary": [], "encrypted_content": "gAAA"}]}, 400,
         "input[0].encrypted_content"),
        ({"input": 42}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"previous_response_id": "resp_unknown"}, 404, "previous_response_id"),
        ({"previous_response_id": "x" * 10_000}, 400, "previous_response_id"),
        ({"tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
        ({"tools": [{"type": "function", "name": "a b"}]}, 400, "tools"),
        ({"tool_choice": {"type": "file_search"}}, 400, "tool_choice"),
        ({"background": True}, 400, "background"),
        ({"include": ["reasoning.encrypted_content"]}, 400, "include"),
        ({"truncation": "auto"}, 400, "truncation"),
        ({"reasoning": {"effort": "high", "summary": "detailed"}}, 400, "reasoning.summary"),
        ({"max_output_tokens": 0}, 400, "max_output_tokens"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"frobnicate": 1}, 400, "frobnicate"),
        ({"model": "other"}, 404, "model"),
        ({"input": "word " * 6000}, 400, "input"),  # ~6000 tokens, more than the context of 4096
    ]
    if kind == "harmony":
        cases.append(({"reasoning": {"effort": "extreme"}}, 400, "reasoning.effort"))
    for extra, status, param in cases:
        r = httpx.post(f"{base}/v1/responses", json={**ok, **extra}, timeout=30)
        assert r.status_code == status and r.json()["error"]["param"] == param, (extra, r.text[:300])
        assert r.json()["error"]["message"]
    r = httpx.post(f"{base}/v1/responses", content=json.dumps({**ok, "input": "x" * 5_000_000}),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(f"{base}/v1/responses", content=b'{"model": "scripted", "input": [', timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_the_store_is_bounded_by_count(qwen3_folder):
    app = create_app(lambda: served("harmony", qwen3_folder), limits=ServeLimits(max_stored_responses=2))
    with run_server(app) as base:
        wait_ready(base)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        ids = [client.responses.create(model="scripted", input=QUESTION, max_output_tokens=2).id for _ in range(3)]
        with pytest.raises(openai.NotFoundError) as exc:
            client.responses.create(model="scripted", input="Hi", previous_response_id=ids[0], max_output_tokens=2)
        assert exc.value.body["code"] == "previous_response_not_found"
        later = client.responses.create(model="scripted", input="Hi", previous_response_id=ids[2],
                                        max_output_tokens=2)
        assert later.status == "incomplete" and len(app.state.mxport["store"]) == 2


def test_store_lru_by_count_and_bytes():
    store = ResponseStore(max_count=3, max_bytes=100)
    for key in "abc":
        assert store.put(key, key.upper(), 30)
    assert store.get("a") == "A"  # now the most recently used: b leaves first
    assert store.put("d", "D", 30) and store.get("b") is None and store.bytes == 90
    assert store.put("e", "E", 60) and [store.get(k) for k in "acde"] == [None, None, "D", "E"]
    assert not store.put("huge", "H", 101) and store.get("huge") is None and len(store) == 2


@pytest.mark.parametrize("fmt_kind", ["harmony", "template"])
def test_responses_render_the_ids_chat_renders(fmt_kind, qwen3_folder):
    """The same conversation as Responses items (instructions, reasoning, a function call and its output, stored
    by previous_response_id) and as chat messages renders to the same prompt ids, through the same prepare()."""
    tok, fmt, _ = chat_of(fmt_kind, qwen3_folder)
    s = Served("m", None, tok, fmt)
    store = ResponseStore(8, 10**6)
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
             {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text",
                                                                              "text": "Need the weather."}]},
             {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
              "arguments": '{"city": "Paris"}'}]
    store.put("resp_1", {"model": "m", "items": parse_responses({"model": "m", "input": items}, store).items}, 1)
    body = {"model": "m", "instructions": "Be brief.", "previous_response_id": "resp_1", "tools": [WEATHER],
            "reasoning": {"effort": "high"}, "input": [{"type": "function_call_output", "call_id": "call_1",
                                                        "output": '{"sky": "clear"}'}]}
    call = parse_responses(body, store)
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "reasoning_content": "Need the weather.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                      "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'}]
    chat = parse_request({"model": "m", "messages": messages, "tools": [CHAT_WEATHER], "reasoning_effort": "high"},
                         chat=True)
    assert prepare(s, call.req, True)[0] == prepare(s, chat, True)[0]
    # instructions are not carried over by previous_response_id (as OpenAI's)
    again = parse_responses({"model": "m", "previous_response_id": "resp_1", "input": "Thanks"}, store)
    assert [m["role"] for m in again.req.messages] == ["user", "assistant", "user"]
    assert again.origins == ["previous_response_id"] * 2 + ["input"]


def test_tool_choice(client):
    r = client.responses.create(model="scripted", input="Weather?", tools=[WEATHER], tool_choice="none")
    assert [i.type for i in r.output] == ["reasoning", "message"]  # the tool is not offered: no call
    # required: the call is enforced by the grammar (runtime/generation/constrain.py), its arguments valid JSON
    # (the city an enum: the scripted "model" writes JSON with spaces, which the compact grammar refuses, so it
    # would fill a free string with the fallback token until max_output_tokens)
    bounded = {**WEATHER, "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}},
                                         "required": ["city"], "additionalProperties": False}}
    r = client.responses.create(model="scripted", input="Weather?", tools=[bounded], tool_choice="required",
                                max_output_tokens=200)
    calls = [i for i in r.output if i.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"] and json.loads(calls[0].arguments)["city"] in ("Paris", "Rome")


def test_a_client_gone_mid_stream_frees_its_slot(qwen3_folder):
    app = create_app(lambda: served("harmony", qwen3_folder, delay=0.01))
    with run_server(app) as base:
        wait_ready(base)
        engine = app.state.mxport["served"].engine
        body = {"model": "scripted", "input": "Hi", "max_output_tokens": 3000, "stream": True}
        with httpx.stream("POST", f"{base}/v1/responses", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines) == "event: response.created"
            assert any("reasoning_text.delta" in line for line in lines) and engine.active == 1
        assert wait_idle(engine, 10) and engine.finished["cancelled"] == 1


class Broken(ScriptedStepModel):
    def step(self, *args):
        raise RuntimeError("kernel exploded")


def test_a_failing_step_is_a_500_or_response_failed(qwen3_folder):
    tok, fmt, vocab = chat_of("harmony", qwen3_folder)
    engine = Engine(Broken(vocab, lambda p: 0, [[1]], filler=1)).start()
    with run_server(create_app(lambda: Served("broken", engine, tok, fmt, (), 4096, vocab))) as base:
        wait_ready(base)
        r = httpx.post(f"{base}/v1/responses", json={"model": "broken", "input": "Hi"}, timeout=30)
        assert r.status_code == 500 and r.json()["error"]["code"] == "generation_failed"
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        events = list(client.responses.create(model="broken", input="Hi", stream=True))
        assert [e.type for e in events] == ["response.created", "response.in_progress", "response.failed"]
        assert "kernel exploded" in events[-1].response.error.message
        with pytest.raises(openai.NotFoundError):  # a failed response is not stored
            client.responses.create(model="broken", input="Hi", previous_response_id=events[-1].response.id)


# ---- a fuzz over Responses bodies: plausible items nine times in ten, anything at all else ----------------------
anything = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                    max_size=3), max_leaves=12)


def often(plausible):
    return st.integers(0, 9).flatmap(lambda i: anything if i == 0 else plausible)


words = st.sampled_from(["Hi", "", "<|start|>user", "<think>", "get_weather", "c1", "{}", "\ud800"])
part = st.fixed_dictionaries({"type": often(st.sampled_from(["input_text", "output_text", "input_image"])),
                              "text": often(words)})
item = st.one_of(
    st.fixed_dictionaries({"role": often(st.sampled_from(list(ROLES_FUZZ))),
                           "content": often(words | st.lists(part, max_size=2))}),
    st.fixed_dictionaries({"type": st.just("reasoning"), "summary": st.just([]),
                           "content": often(st.lists(st.fixed_dictionaries({"type": st.just("reasoning_text"),
                                                                           "text": words}), max_size=2))}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": often(st.just("c1")),
                           "name": often(st.sampled_from(["get_weather", "a b"])), "arguments": often(words)}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": often(st.just("c1")),
                           "output": often(words)}),
    anything)
body = st.fixed_dictionaries(
    {"model": often(st.just("scripted")), "input": often(words | st.lists(item, max_size=4)),
     "max_output_tokens": often(st.integers(-1, 4))},
    optional={"instructions": often(words), "tools": often(st.lists(st.just(WEATHER), max_size=2)),
              "tool_choice": often(st.sampled_from(["auto", "none", "required"])), "stream": often(st.booleans()),
              "reasoning": often(st.fixed_dictionaries({"effort": st.sampled_from(["low", "high", "none", "x"])})),
              "previous_response_id": often(st.just("resp_x")), "store": often(st.booleans()),
              "temperature": often(st.floats(-1, 3)), "text": often(st.just({"format": {"type": "text"}}))})


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=body | anything)
def test_fuzz_never_500(server, body):
    with server_logs() as log:
        r = httpx.post(f"{server[0]}/v1/responses", content=json.dumps(body), timeout=30,
                       headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 404), (r.status_code, r.text[:300], body)
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert not any("Traceback" in line or line.startswith("ERROR") for line in log.text), log.text
