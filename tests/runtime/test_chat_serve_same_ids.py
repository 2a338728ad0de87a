"""`mxport chat` and `mxport serve` render the same ids for the same conversation, through the same code: a
ChatSession (what `mxport chat` runs) and the server's request path (parse_request -> prepare) share one ChatFormat
object, and both call its render. Harmony and a Qwen3 chat template, with a reasoning turn, a tool call and its
result."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("fastapi")

from serve_helpers import ScriptedStepModel  # noqa: E402

from mxport.exporter.families.qwen3.tokenizer import write_synth_files  # noqa: E402
from mxport.exporter.synth import PRESETS  # noqa: E402
from mxport.runtime.chat.harmony import HarmonyFormat  # noqa: E402
from mxport.runtime.chat.session import ChatSession  # noqa: E402
from mxport.runtime.chat.template import TemplateFormat  # noqa: E402
from mxport.runtime.generation.generate import Generator  # noqa: E402
from mxport.runtime.generation.tokenizer import Tokenizer, build_harmony_tokenizer  # noqa: E402
from mxport.runtime.serve.app import Served, prepare  # noqa: E402
from mxport.runtime.serve.protocol import parse_request  # noqa: E402

VOCAB = 512
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
HARMONY_REPLIES = (
    '<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary '
    'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>',
    "<|channel|>analysis<|message|>It is sunny.<|end|><|start|>assistant<|channel|>final<|message|>Sunny.<|return|>",
)
TEMPLATE_REPLIES = (
    '<think>\nNeed the weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    "</tool_call><|im_end|>",
    "<think>\nIt is sunny.\n</think>\n\nSunny.<|im_end|>",
)


def _session(tok, fmt, replies, opening, reasoning):
    """A ChatSession whose model writes `replies` in turn."""
    turn = itertools.count()
    model = ScriptedStepModel(VOCAB, lambda prompt: next(turn), [tok.encode(r) for r in replies], filler=0)
    gen = Generator(model, tok, eos_token_ids=(), max_context=4096)
    return ChatSession(gen, fmt, opening, tools=[WEATHER], reasoning=reasoning)


def _server_ids(tok, fmt, messages, reasoning):
    """The prompt ids of a /v1/chat/completions body, as the server's request path computes them."""
    body = {"model": "m", "messages": messages, "tools": [WEATHER], "reasoning_effort": reasoning}
    ids, _, _, param = prepare(Served("m", None, tok, fmt), parse_request(body, chat=True), chat=True)
    assert param == "messages"
    return ids


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_tokenizer")
    write_synth_files(PRESETS["qwen3-tiny"], folder)
    return folder


@pytest.mark.parametrize("kind", ["harmony", "template"])
def test_chat_and_serve_render_the_same_ids(kind, qwen3_folder, monkeypatch):
    if kind == "harmony":
        tok = build_harmony_tokenizer(VOCAB)
        fmt, replies, reasoning = HarmonyFormat(tok, current_date="2025-06-28"), HARMONY_REPLIES, "high"
    else:
        tok = Tokenizer.from_file(qwen3_folder)
        fmt, replies, reasoning = TemplateFormat(tok, qwen3_folder), TEMPLATE_REPLIES, "on"
    renders = []
    render = type(fmt).render
    monkeypatch.setattr(type(fmt), "render", lambda self, *a, **kw: renders.append(self) or render(self, *a, **kw))

    opening = [{"role": "developer", "content": "Be brief."}]
    chat = _session(tok, fmt, replies, opening, reasoning)
    first = chat.send("Weather in Paris?", max_new_tokens=200)
    first_ids = chat.last_prompt_ids
    assert first.tool_called and first.reasoning == "Need the weather."
    (call,) = first.tool_calls
    second = chat.send_tool_results([(call.name, '{"sky": "clear"}')], max_new_tokens=200)
    second_ids = chat.last_prompt_ids
    assert (second.content, second.reasoning, second.tool_called) == ("Sunny.", "It is sunny.", False)
    third_ids = chat.prompt_ids("Thanks!")

    # the same conversation as an OpenAI client sends it (reasoning and tool calls as the server returns them)
    user = [*opening, {"role": "user", "content": "Weather in Paris?"}]
    assistant_call = {"role": "assistant", "content": None, "reasoning_content": "Need the weather.",
                      "tool_calls": [{"id": "call_1", "type": "function",
                                      "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    with_result = [*user, assistant_call, {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'}]
    answered = [*with_result, {"role": "assistant", "content": "Sunny.", "reasoning_content": "It is sunny."},
                {"role": "user", "content": "Thanks!"}]
    n_session = len(renders)
    server = [_server_ids(tok, fmt, m, reasoning) for m in (user, with_result, answered)]
    assert server == [first_ids, second_ids, third_ids]
    assert n_session == 3 and len(renders) == 6 and all(r is fmt for r in renders)  # one object renders both
