"""GET /metrics (runtime/serve/metrics.py) on the real server with a scripted model: the text parses with
prometheus_client's parser and its counts equal what the test sent (4xx included); two apps keep their own counts."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
parser = pytest.importorskip("prometheus_client.parser")

from serve_helpers import ScriptedStepModel, run_server, wait_ready  # noqa: E402

from mxport.runtime.chat.session import chat_format  # noqa: E402
from mxport.runtime.generation.tokenizer import build_harmony_tokenizer  # noqa: E402
from mxport.runtime.serve.app import Served, create_app  # noqa: E402
from mxport.runtime.serve.engine import Engine  # noqa: E402

VOCAB = 512
ANSWER = "<|channel|>final<|message|>Hello there.<|return|>"


def metrics(base: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of GET /metrics."""
    r = httpx.get(f"{base}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(r.text) for s in family.samples}


def requests(got: dict) -> dict[str, float]:
    """mxport_requests_total as {"route status": count}, /health left out (wait_ready polls it)."""
    out = {}
    for (name, labels), value in got.items():
        route, status = dict(labels).get("route"), dict(labels).get("status")
        if name == "mxport_requests_total" and route != "/health":
            out[f"{route} {status}"] = value
    return out


def make_app(tok, name: str):
    model = ScriptedStepModel(VOCAB, lambda prompt: 0, [tok.encode(ANSWER)], filler=tok.encode("a")[0])
    served = Served(name, Engine(model, max_batch=4, max_queue=4).start(), tok, chat_format(tok),
                    (tok.require("<|endoftext|>"),), 4096, VOCAB)
    return create_app(lambda: served)


def test_metrics_count_the_requests_sent():
    tok = build_harmony_tokenizer(VOCAB)
    with run_server(make_app(tok, "m")) as base, run_server(make_app(tok, "other")) as other:
        wait_ready(base)
        wait_ready(other)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        usages = []
        for _ in range(3):
            r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}])
            assert r.choices[0].message.content == "Hello there."
            usages.append(r.usage)
        chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hey"}],
                                                     stream=True, stream_options={"include_usage": True}))
        usages.append(chunks[-1].usage)
        usages.append(client.completions.create(model="m", prompt="Hi", max_tokens=3).usage)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
        assert httpx.post(f"{base}/v1/completions", json={"model": "m", "prompt": "Hi", "temperature": 5}).status_code == 400
        assert httpx.get(f"{base}/v1/no/such/route").status_code == 404
        client.models.list()
        got = metrics(base)
        assert requests(got) == {"/v1/chat/completions 200": 4, "/v1/chat/completions 404": 1,
                                 "/v1/completions 200": 1, "/v1/completions 400": 1, "other 404": 1,
                                 "/v1/models 200": 1}
        assert got[("mxport_requests_total", (("route", "/health"), ("status", "200")))] >= 1  # wait_ready's
        m = (("model", "m"),)
        assert got[("mxport_prompt_tokens_total", m)] == sum(u.prompt_tokens for u in usages)
        assert got[("mxport_generation_tokens_total", m)] == sum(u.completion_tokens for u in usages)
        assert got[("mxport_time_to_first_token_seconds_count", m)] == 5
        # every token after the first is timed, but stop tokens are not handed over: one per chat reply
        assert got[("mxport_time_per_output_token_seconds_count", m)] == sum(u.completion_tokens for u in usages) \
            - 5 - 4
        assert got[("mxport_queue_depth", m)] == 0 and got[("mxport_batch_size", m)] == 0
        # the other app counted only its own requests (wait_ready's /health), nothing of this one's
        assert requests(metrics(other)) == {}
        assert requests(metrics(base)) == {**requests(got), "/metrics 200": 1}
