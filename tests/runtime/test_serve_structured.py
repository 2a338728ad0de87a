"""Structured outputs on real random-weight exports (gpt-oss tiny with harmony, Qwen3 tiny with its template), reasoning
on: response_format json_schema / json_object and tool_choice required / named, through the real server and the
official openai client. Random weights write noise, so every answer passing json.loads and jsonschema is the
grammar's doing. The requests go concurrently with unconstrained ones (mixed batches), greedy and sampled."""

from __future__ import annotations

import concurrent.futures as futures
import json
from decimal import Decimal

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("llguidance")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
jsonschema = pytest.importorskip("jsonschema")

from serve_helpers import harmony_tiny_export, run_server, wait_ready  # noqa: E402

from mxport.runtime.serve.app import create_app, load_folder  # noqa: E402

MAX_TOKENS = 240  # reasoning may take half; the bounded schemas below fit the rest
USER = [{"role": "user", "content": "Describe a city as JSON."}]


def _s(maxlen: int = 6) -> dict:
    return {"type": "string", "maxLength": maxlen}


def _obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False}


# 20 schemas: nested objects, arrays, enums, required and optional keys, numbers and integers with bounds. Strings
# and arrays are bounded and numbers have a precision (multipleOf): a random model never ends a free string or a
# fraction by itself (greedy, it writes '0202020...' until max_tokens), which no grammar can change
SCHEMAS = [
    _obj({"name": _s()}),
    _obj({"age": {"type": "integer", "minimum": 0, "maximum": 120}}),
    _obj({"ok": {"type": "boolean"}, "none": {"type": "null"}}),
    _obj({"kind": {"enum": ["a", "b", "c"]}}),
    _obj({"level": {"type": "integer", "enum": [1, 2, 3]}, "label": _s(4)}),
    _obj({"x": {"type": "number", "minimum": -1, "maximum": 1, "multipleOf": 0.25}}),
    _obj({"tags": {"type": "array", "items": _s(3), "maxItems": 3}}),
    _obj({"point": _obj({"x": {"type": "integer", "minimum": -9, "maximum": 9},
                         "y": {"type": "integer", "minimum": -9, "maximum": 9}})}),
    _obj({"a": _obj({"b": _obj({"c": {"enum": ["deep"]}})})}),
    _obj({"items": {"type": "array", "maxItems": 2, "items": _obj({"id": {"type": "integer", "minimum": 0,
                                                                        "maximum": 99}, "ok": {"type": "boolean"}})}}),
    _obj({"name": _s(), "nick": _s(3)}, required=["name"]),
    _obj({"score": {"type": "number", "exclusiveMinimum": 0, "maximum": 10, "multipleOf": 0.5}}),
    _obj({"pair": {"type": "array", "prefixItems": [_s(2), {"type": "integer", "minimum": 0, "maximum": 5}],
                   "items": False, "minItems": 2}}),
    _obj({"v": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "null"}]}}),
    _obj({"color": {"enum": ["red", "green", "blue"]},
          "rgb": {"type": "array", "maxItems": 3, "minItems": 3, "items": {"type": "integer", "minimum": 0,
                                                                           "maximum": 255}}}),
    _obj({"code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"}}),
    _obj({"matrix": {"type": "array", "maxItems": 2, "items": {
        "type": "array", "maxItems": 2, "items": {"type": "integer", "minimum": 0, "maximum": 9}}}}),
    _obj({"user": _obj({"name": _s(), "role": {"enum": ["admin", "guest"]}}), "active": {"type": "boolean"}}),
    _obj({"when": {"type": "string", "enum": ["today", "tomorrow"]}, "n": {"type": "integer", "minimum": 1,
                                                                          "maximum": 3}}),
    _obj({"city": _s(8), "population": {"type": "integer", "minimum": 0, "maximum": 10**6},
          "coords": _obj({"lat": {"type": "number", "minimum": -90, "maximum": 90, "multipleOf": 0.01},
                          "lon": {"type": "number", "minimum": -180, "maximum": 180, "multipleOf": 0.01}})}),
]


def _validate(text: str, schema: dict) -> None:
    """json.loads then jsonschema, numbers as decimals: JSON Schema's multipleOf is decimal (13.79 is a multiple of
    0.01), while jsonschema divides floats (13.79 / 0.01 = 1378.9999999999998: "not a multiple")."""
    jsonschema.validate(json.loads(text, parse_float=Decimal), json.loads(json.dumps(schema), parse_float=Decimal))


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": _obj(
    {"city": _s(8), "unit": {"enum": ["c", "f"]}})}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": _obj({"zone": {"enum": ["utc", "cet"]}})}}
SERVED: dict = {}  # model -> the server's Served (its engine's counters)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers: the gpt-oss tiny export (harmony) and the Qwen3 tiny export (its chat template)."""
    from mxport.exporter.export import export
    from mxport.exporter.synth import PRESETS, write_checkpoint

    root = tmp_path_factory.mktemp("structured")
    (root / "gptoss").mkdir()
    folders = {"gptoss": harmony_tiny_export(root / "gptoss", seed=1),
               "qwen3": export(write_checkpoint(root / "qwen3", PRESETS["qwen3-tiny"], seed=1), root / "qwen3-x",
                               target="cpu", progress=False)}
    apps = {"gptoss": create_app(lambda: load_folder(folders["gptoss"], model_name="gptoss", max_context=1024,
                                                     max_batch=16, max_queue=64)),
            "qwen3": create_app(lambda: load_folder(folders["qwen3"], model_name="qwen3", max_batch=16, max_queue=64))}
    with run_server(apps["gptoss"]) as a, run_server(apps["qwen3"]) as b:
        wait_ready(a)
        wait_ready(b)
        SERVED.update({k: app.state.mxport["served"] for k, app in apps.items()})
        yield {"gptoss": a, "qwen3": b}


def _client(base: str):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)


def _schema_request(client, model: str, i: int, schema: dict):
    sampled = {"temperature": 1.0, "seed": i} if i % 2 else {"temperature": 0}
    return client.chat.completions.create(
        model=model, messages=USER, max_tokens=MAX_TOKENS, reasoning_effort="high",
        response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}},
        **sampled)


@pytest.mark.parametrize("model", ["gptoss", "qwen3"])
def test_twenty_schemas_parse_and_validate(servers, model):
    """Every answer of 20 schemas parses and validates, while unconstrained requests share the batch; reasoning
    (harmony analysis, Qwen3 <think>) stays free text."""
    client = _client(servers[model])
    with futures.ThreadPoolExecutor(12) as pool:
        free = [pool.submit(client.chat.completions.create, model=model, messages=USER, max_tokens=40,
                            temperature=1.0, seed=s) for s in range(4)]
        constrained = [pool.submit(_schema_request, client, model, i, schema) for i, schema in enumerate(SCHEMAS)]
        replies = [f.result() for f in constrained]
        assert all(f.result().choices[0].finish_reason in ("stop", "length") for f in free)
    reasoned = 0
    for schema, reply in zip(SCHEMAS, replies):
        choice = choice0 = reply.choices[0]
        assert choice.finish_reason == "stop", choice0
        _validate(choice.message.content, schema)
        reasoned += bool(choice.message.model_extra.get("reasoning"))
    assert reasoned > 0  # the model did reason first (free text) in some of them
    assert SERVED[model].engine.max_rows_seen >= 8  # constrained and free rows did share decode steps


@pytest.mark.parametrize("model", ["gptoss", "qwen3"])
def test_streamed_json_object(servers, model):
    chunks = list(_client(servers[model]).chat.completions.create(
        model=model, messages=USER, max_tokens=MAX_TOKENS, stream=True, response_format={"type": "json_schema",
        "json_schema": {"name": "x", "schema": SCHEMAS[-1]}}, temperature=0.7, seed=3))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    _validate(text, SCHEMAS[-1])
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ["gptoss", "qwen3"])
def test_tool_choice_required_and_named(servers, model):
    """tool_choice "required" picks one of the tools, a named choice that one; the arguments validate against the
    tool's parameters; finish_reason is tool_calls."""
    client = _client(servers[model])
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for choice, seed in (("required", 1), ("required", 2), ({"type": "function", "function": {"name": "get_time"}}, 3)):
        r = client.chat.completions.create(model=model, messages=USER, tools=[WEATHER, TIME], tool_choice=choice,
                                           max_tokens=MAX_TOKENS, temperature=1.0, seed=seed)
        calls = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1, r
        if isinstance(choice, dict):
            assert calls[0].function.name == "get_time"
        _validate(calls[0].function.arguments, schemas[calls[0].function.name])


@pytest.mark.parametrize("body, param, words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
     "response_format", "cannot be enforced"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/none"}}}},
     "response_format", "cannot be enforced"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": json.loads(
        "{\"type\": \"object\", \"properties\": {\"a\": " * 13 + "{}" + "}}" * 13)}}},
     "response_format", "levels deep"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {f"k{i}": {"type": "string", "description": "d" * 200} for i in range(400)}}}}},
     "response_format", "bytes of JSON"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {"type": "null"}}}}},
     "response_format", "not"),
    ({"response_format": {"type": "yaml"}}, "response_format", "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format", "name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}}, "response_format",
     "schema"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ({"tool_choice": "required"}, "tool_choice", "at least one"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format",
     "cannot be combined"),
])
def test_bad_schemas_are_400_naming_the_field(servers, body, param, words):
    r = httpx.post(f"{servers['gptoss']}/v1/chat/completions", json={"model": "gptoss", "messages": USER, **body},
                   timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err
