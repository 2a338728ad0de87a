"""logprobs / top_logprobs and n > 1 on a real tiny export, through the real server: the values are a log-softmax of
the Generator's own logits (replayed step by step with its step model) to 1e-5, taken before any grammar mask;
the n choices are independent rows with seeds seed + i, streamed and not."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serve_helpers import harmony_tiny_export, run_server, wait_ready  # noqa: E402

from mxport.contract.io import position_ids  # noqa: E402
from mxport.runtime.generation.generate import Generator  # noqa: E402
from mxport.runtime.serve.app import create_app, load_folder  # noqa: E402

MODEL = "tiny"
PROMPT = [5, 17, 99, 23, 44, 301, 7, 250, 12, 64, 3, 81]
USER = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return harmony_tiny_export(tmp_path_factory.mktemp("logprobs"), seed=2)


@pytest.fixture(scope="module")
def server(export_dir):
    app = create_app(lambda: load_folder(export_dir, max_batch=8, max_queue=16, model_name=MODEL, max_context=8192))
    with run_server(app) as base:
        wait_ready(base)
        yield base, app.state.mxport["served"]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def generator(export_dir):
    return Generator.from_folder(export_dir)


def replay_logprobs(gen: Generator, prompt: list[int], tokens: list[int]) -> list[np.ndarray]:
    """log_softmax of the Generator's logits before each of `tokens` (prefill, then one step per token)."""
    model = gen.model
    ids, mask = np.asarray([prompt], np.int64), np.ones((1, len(prompt)), np.int64)
    logits, cache = model.step(ids, mask, position_ids(mask, len(prompt)), model.new_cache(1))
    rows = [logits[0, -1]]
    for t in tokens[:-1]:
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
        logits, cache = model.step(np.asarray([[t]], np.int64), mask, position_ids(mask, 1), cache)
        rows.append(logits[0, -1])
    out = []
    for row in rows:
        row = row.astype(np.float64)
        out.append(row - row.max() - np.log(np.exp(row - row.max()).sum()))
    return out


def test_completion_logprobs_equal_the_generators_log_softmax(client, generator):
    got = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0, logprobs=5,
                                    extra_body={"return_token_ids": True})
    choice = got.choices[0]
    ids, lp = choice.model_extra["token_ids"], choice.logprobs
    assert len(ids) == len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 16
    for k, want in enumerate(replay_logprobs(generator, PROMPT, ids)):
        assert int(np.argmax(want)) == ids[k]  # greedy: the top-1 token is the chosen one
        assert abs(lp.token_logprobs[k] - want[ids[k]]) < 1e-5
        top = sorted(want, reverse=True)[:5]
        assert len(lp.top_logprobs[k]) <= 5 and abs(max(lp.top_logprobs[k].values()) - top[0]) < 1e-5
        assert all(any(abs(v - t) < 1e-5 for t in top) for v in lp.top_logprobs[k].values())
    assert lp.text_offset[0] == 0 and "".join(lp.tokens) == choice.text
    tokens, values, offsets = [], [], []
    for c in client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0, logprobs=5,
                                       stream=True):
        if c.choices and c.choices[0].logprobs:
            tokens += c.choices[0].logprobs.tokens
            values += c.choices[0].logprobs.token_logprobs
            offsets += c.choices[0].logprobs.text_offset
    assert (tokens, values, offsets) == (lp.tokens, lp.token_logprobs, lp.text_offset)  # streamed = collected


def _ids_of(tok, entries) -> list[int]:
    """Token ids back from the logprobs' bytes (each token's bytes are unique in the tiny vocab)."""
    by_bytes = {tok.token_bytes(i): i for i in range(tok.vocab_size)}
    return [by_bytes[bytes(e["bytes"])] for e in entries]


def test_chat_logprobs_come_before_the_grammar_mask(server, generator):
    """Chat with a json_schema: each token's logprob is the raw log-softmax (not renormalised over the tokens the
    grammar allowed), top_logprobs lists the raw top tokens; the streamed entries equal the collected ones."""
    base, served = server
    body = {"model": MODEL, "messages": USER, "max_tokens": 120, "temperature": 0, "logprobs": True,
            "top_logprobs": 3, "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": {
                "type": "object", "properties": {"colour": {"enum": ["red", "blue"]}}, "required": ["colour"],
                "additionalProperties": False}}}}
    r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120).json()
    entries = r["choices"][0]["logprobs"]["content"]
    ids = _ids_of(served.tokenizer, entries)
    prompt = served.chat.render(USER, (), None, None)
    forced = 0
    for e, t, want in zip(entries, ids, replay_logprobs(generator, prompt, ids)):
        assert abs(e["logprob"] - want[t]) < 1e-5
        assert [round(x["logprob"], 5) for x in e["top_logprobs"]] == [round(x, 5) for x in sorted(want)[::-1][:3]]
        forced += int(np.argmax(want)) != t  # greedy under the mask: the grammar chose another token
        assert e["token"] == bytes(e["bytes"]).decode("utf-8", errors="replace")
    assert forced > 0 and len(entries) == r["usage"]["completion_tokens"] - (r["choices"][0]["finish_reason"] == "stop")
    json.loads(r["choices"][0]["message"]["content"])
    streamed = []
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={**body, "stream": True}, timeout=120) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                for c in json.loads(line[6:])["choices"]:
                    streamed += (c.get("logprobs") or {}).get("content") or []
    assert len(streamed) == len(entries)  # the same request again: its prompt's KV comes from the prefix cache,
    for a, b in zip(streamed, entries):  # so the values agree to float rounding, not bit for bit
        assert a["token"] == b["token"] and a["bytes"] == b["bytes"] and abs(a["logprob"] - b["logprob"]) < 1e-5
        assert [x["token"] for x in a["top_logprobs"]] == [x["token"] for x in b["top_logprobs"]]


def test_n_choices_are_seeded_rows(client):
    def ask(n: int, seed: int, **kw):
        return client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=seed, n=n,
                                         extra_body={"return_token_ids": True}, **kw)

    three = ask(3, 7)
    ids = [c.model_extra["token_ids"] for c in three.choices]
    assert [c.index for c in three.choices] == [0, 1, 2] and len({tuple(i) for i in ids}) == 3
    assert [c.model_extra["token_ids"] for c in ask(3, 7).choices] == ids  # the set is reproducible
    assert [ask(1, 7 + i).choices[0].model_extra["token_ids"] for i in range(3)] == ids  # row i: seed + i
    used = sum(len(i) + (c.finish_reason == "stop") for i, c in zip(ids, three.choices))  # a stop token counts
    assert three.usage.completion_tokens == used
    streamed: dict[int, list[int]] = {0: [], 1: [], 2: []}
    finished, usage = set(), None
    for c in ask(3, 7, stream=True, stream_options={"include_usage": True}):
        for ch in c.choices:
            streamed[ch.index] += ch.model_extra.get("token_ids") or []
            if ch.finish_reason:
                finished.add(ch.index)
        usage = c.usage or usage
    assert [streamed[i] for i in range(3)] == ids and finished == {0, 1, 2}
    assert usage.completion_tokens == three.usage.completion_tokens


def test_chat_n_streamed_with_logprobs(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=10, n=2, temperature=1.0,
                                                 seed=1, stream=True, logprobs=True))
    got = {0: [], 1: []}
    for c in chunks:
        for ch in c.choices:
            got[ch.index] += ch.logprobs.content if ch.logprobs else []
    plain = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=10, n=2, temperature=1.0, seed=1,
                                           logprobs=True)
    assert [[e.token for e in got[i]] for i in (0, 1)] == [[e.token for e in c.logprobs.content] for c in plain.choices]
    assert all(e.top_logprobs == [] for c in plain.choices for e in c.logprobs.content)


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"prompt": PROMPT, "n": 9}, "n"),
    ("/v1/completions", {"prompt": PROMPT, "n": 8, "max_tokens": 5000}, "n"),
    ("/v1/completions", {"prompt": PROMPT, "n": 0}, "n"),
    ("/v1/completions", {"prompt": PROMPT, "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"prompt": PROMPT, "logprobs": True}, "logprobs"),
    ("/v1/completions", {"prompt": PROMPT, "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": USER, "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": USER, "logprobs": 3}, "logprobs"),
])
def test_bounds_are_400_naming_the_field(server, path, body, param):
    r = httpx.post(f"{server[0]}{path}", json={"model": MODEL, **body}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
