"""`mxport chat` and ChatSession with function tools on the toy export: the tools reach the prompt, a tool call is
printed, answered (interactive) or ends the turn (stdin), and the result goes back to the model as harmony."""

import io
import json
import re
import sys

import numpy as np
import pytest

import gen_toy
from mxport.cli import main
from mxport.commands import chat as chat_module
from mxport.runtime.chat.harmony import HarmonyFormat, Message
from mxport.runtime.chat.session import ChatSession
from mxport.runtime.generation.generate import Generator

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOLS_TEXT = ("# Tools\n\n## functions\n\nnamespace functions {\n\n// Weather in a city.\n"
              "type get_weather = (_: {\ncity: string,\n}) => any;\n\n} // namespace functions")
CALL = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
FINAL = "<|channel|>final<|message|>Sunny.<|return|>"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return gen_toy.write_toy_export(tmp_path_factory.mktemp("toy") / "export", max_positions=2048)


@pytest.fixture(scope="module")
def toy_gen(toy):
    return Generator.from_folder(toy)


class _Scripted:
    """Wraps a step model: generation k (one prefill, then single-token steps) emits the ids of replies[k], token by
    token, by putting all logit mass on them; records each prefill's input ids."""

    def __init__(self, model, replies):
        self.model, self.replies = model, replies
        self.cache_shape = model.cache_shape
        self.prompts: list[list[int]] = []
        self._pos = 0

    def new_cache(self, batch, capacity=None):
        return self.model.new_cache(batch)

    def step(self, input_ids, attention_mask, position_ids, cache):
        logits, cache = self.model.step(input_ids, attention_mask, position_ids, cache)
        if input_ids.shape[1] > 1:
            self.prompts.append([int(i) for i in input_ids[0]])
            self._pos = 0
        else:
            self._pos += 1
        k = len(self.prompts) - 1
        if k < len(self.replies) and self._pos < len(self.replies[k]):
            logits = np.array(logits, copy=True)
            logits[:, -1, self.replies[k][self._pos]] = 1e9
        return logits, cache


def _scripted(gen, *texts):
    model = _Scripted(gen.model, [gen.tokenizer.encode(t) for t in texts])
    return Generator(model, gen.tokenizer, eos_token_ids=gen.eos_token_ids, max_context=gen.max_context), model


def test_session_renders_tools_and_answers_a_call(toy_gen):
    gen, model = _scripted(toy_gen, CALL, FINAL)
    chat = ChatSession(gen, HarmonyFormat(gen.tokenizer, current_date="2025-06-28"),
                       [{"role": "developer", "content": "Be brief."}], tools=TOOLS)
    prompt = toy_gen.tokenizer.decode(chat.prompt_ids("Weather in Paris?"))
    assert ("Calls to these tools must go to the commentary channel: 'functions'.<|end|><|start|>developer<|message|>"
            f"# Instructions\n\nBe brief.\n\n{TOOLS_TEXT}<|end|>") in prompt

    shown = []
    reply = chat.send("Weather in Paris?", max_new_tokens=120,
                      on_event=lambda ev: shown.append(ev.text) if ev.kind in ("content", "reasoning") else None)
    assert reply.tool_called and shown == []  # the call's arguments are not streamed as text
    (call,) = reply.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert chat.messages[-1]["harmony"] == (
        Message("assistant", call.arguments, "commentary", "functions.get_weather", "json"),)

    reply = chat.send_tool_results([("get_weather", '{"sky": "clear"}')], max_new_tokens=120)
    assert (reply.tool_called, reply.content, reply.tool_calls) == (False, "Sunny.", [])
    second = toy_gen.tokenizer.decode(model.prompts[1])
    assert second.endswith(
        "<|start|>user<|message|>Weather in Paris?<|end|>"
        f"<|start|>assistant{CALL}"
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"sky": "clear"}<|end|>'
        "<|start|>assistant")
    assert second.startswith(prompt.removesuffix("<|start|>user<|message|>Weather in Paris?<|end|><|start|>assistant"))


def _tools_file(tmp_path, tools=TOOLS):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(tools))
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _patch_model(monkeypatch, *texts):
    """Make `mxport chat` build its Generator around the scripted toy model."""
    made = {}
    real = Generator.from_folder

    def from_folder(folder, **kw):
        gen, made["model"] = _scripted(real(folder, **kw), *texts)
        return gen

    monkeypatch.setattr(chat_module.Generator, "from_folder", staticmethod(from_folder))
    return made


def test_cli_one_shot_prints_the_call_and_stops(toy, tmp_path, capsys, monkeypatch):
    made = _patch_model(monkeypatch, CALL, FINAL)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Weather in Paris?\n"))
    code, out, err = _run(capsys, "chat", toy, "--tools", _tools_file(tmp_path), "--max-new-tokens", "120",
                          "--date", "2025-06-28")
    assert code == 0, err
    assert out == '\n[tool call] get_weather {"city": "Paris"}\n'
    (prompt,) = made["model"].prompts  # one generation: nobody can answer the call from a pipe
    assert TOOLS_TEXT in Generator.from_folder(toy).tokenizer.decode(prompt)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_cli_interactive_asks_for_the_tool_result(toy, tmp_path, capsys, monkeypatch):
    made = _patch_model(monkeypatch, CALL, FINAL)
    monkeypatch.setattr(sys, "stdin", _Terminal('Weather in Paris?\n{"sky": "clear"}\n\n'))
    code, out, err = _run(capsys, "chat", toy, "--tools", _tools_file(tmp_path), "--max-new-tokens", "120",
                          "--date", "2025-06-28")
    assert code == 0, err
    # prompt, call (its arguments are not streamed), prompt for the result, the final answer, prompt, empty -> quit
    assert out == ('> \n[tool call] get_weather {"city": "Paris"}\n'
                   "[tool result] get_weather> Sunny.\n> ")
    first, second = made["model"].prompts
    tok = Generator.from_folder(toy).tokenizer
    assert tok.decode(second).endswith(
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"sky": "clear"}<|end|>'
        "<|start|>assistant")


@pytest.mark.parametrize("content, match", [
    (None, "cannot read the file"),
    ("[{", "not valid JSON"),
    ('{"name": "f"}', "expected a JSON list"),
    ('[{"type": "function", "function": {"name": "a b"}}]', r"tool\[0\]: 'name' must be"),
])
def test_cli_bad_tools_file_exits_2_naming_it(toy, tmp_path, capsys, monkeypatch, content, match):
    path = tmp_path / "tools.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
    code, out, err = _run(capsys, "chat", toy, "--tools", path)
    assert code == 2 and out == ""
    assert err.count("error:") == 1 and f"--tools {path}: " in err
    assert re.search(match, err), err
