"""The prefix cache (runtime/serve/prefix.py) and the engine's prefill from it: greedy output is the same with and
without it, on gpt-oss tiny with window-sized caches (window 8, prompts longer), with full caches, Qwen3 tiny and
GPT-2 tiny; a prefix that a sliding layer no longer holds is not reused; memory stays within its bytes."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mxport.exporter.export import export
from mxport.exporter.synth import PRESETS
from mxport.runtime.generation.generate import Generator
from mxport.runtime.serve.engine import Engine, Job
from mxport.runtime.serve.prefix import NODE_BYTES, PrefixCache

P1 = [5, 17, 99, 23, 44, 301, 7, 250, 12, 64, 3, 81, 9, 200, 31, 77, 140, 8, 66, 19]  # 20 tokens: > the window


class Collect:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.done = threading.Event()

    def token(self, token_id: int) -> bool:
        self.tokens.append(token_id)
        return False

    def finish(self, reason: str, completion_tokens: int, stop_token: int | None = None) -> None:
        self.done.set()


def run(engine: Engine, prompt: list[int], n: int = 10) -> list[int]:
    handler = Collect()
    engine.submit(Job(prompt, n, handler))
    assert handler.done.wait(60)
    return handler.tokens


def kv(n: int, slots: list[int]) -> list[np.ndarray]:
    """Arrays [1, 1, s, 2] whose slot j holds (n - s + j): the absolute slot, to see which slots a hit returns."""
    return [np.stack([np.arange(n - s, n)] * 2, axis=-1).astype(np.float32)[None, None] for s in slots]


# ---- the cache alone --------------------------------------------------------------------------------------------
def test_lookup_takes_the_longest_valid_prefix():
    cache = PrefixCache(1 << 20)
    cache.store(list(range(10)), kv(10, [10, 10]))  # whole: any prefix is valid
    hit = cache.lookup([0, 1, 2, 3, 99])
    assert hit.length == 4 and [a.shape[2] for a in hit.kv] == [4, 4]
    assert hit.kv[0][0, 0, :, 0].tolist() == [0, 1, 2, 3]
    assert cache.lookup(list(range(10))).length == 9  # one token at least is left to prefill
    assert cache.lookup([7, 1, 2]) is None
    # a sliding layer kept the last 4 of 20 slots: this entry is valid at its full length only
    cache.store(list(range(100, 120)), kv(20, [20, 4]))
    assert cache.lookup(list(range(100, 115)) + [0]) is None
    hit = cache.lookup(list(range(100, 120)) + [0, 1])
    assert hit.length == 20 and hit.kv[1][0, 0, :, 0].tolist() == [16, 17, 18, 19]
    # ... and a shorter exact entry on the same path serves the prefixes it ends at
    cache.store(list(range(100, 110)), kv(10, [10, 4]))
    assert cache.lookup(list(range(100, 115))).length == 10
    assert cache.stats()["hits"] == 4 and cache.stats()["misses"] == 2


def test_bytes_are_bounded_lru_and_covered_entries_are_not_kept_twice():
    one = kv(10, [10, 10])
    size = sum(a.nbytes for a in one) + NODE_BYTES * 10
    cache = PrefixCache(2 * size)
    cache.store(list(range(10)), one)
    cache.store(list(range(20, 30)), kv(10, [10, 10]))
    cache.lookup(list(range(10)) + [5])  # touch the first: the second is now the oldest
    cache.store(list(range(40, 50)), kv(10, [10, 10]))
    assert cache.bytes <= cache.max_bytes and cache.stats()["evictions"] == 1
    assert cache.lookup(list(range(20, 30)) + [1]) is None and cache.lookup(list(range(10)) + [5]) is not None
    assert not cache.store(list(range(5)), kv(5, [5, 5]))  # a whole entry covers it already
    big = PrefixCache(10 * size)
    big.store(list(range(5)), kv(5, [5, 5]))
    big.store(list(range(10)), kv(10, [10, 10]))  # whole: the 5-token entry is its prefix, dropped
    assert big.stats()["entries"] == 1 and big.bytes == size
    assert not PrefixCache(0).store([1, 2], kv(2, [2])) and not PrefixCache(100).store([1, 2], kv(2, [2]))


# ---- the engine -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["gpt-oss-window", "gpt-oss-full", "qwen3", "gpt2"])
def export_dir(request, tiny_config, make_checkpoint, tmp_path_factory):
    cfg = {"qwen3": PRESETS["qwen3-tiny"], "gpt2": PRESETS["gpt2-tiny"]}.get(request.param, tiny_config)
    out = tmp_path_factory.mktemp(f"prefix-{request.param}") / "x"
    return request.param, export(make_checkpoint(cfg), out, target="cpu", progress=False,
                                 window_cache=request.param != "gpt-oss-full")


def test_greedy_output_is_the_same_with_and_without_the_prefix_cache(export_dir):
    name, folder = export_dir
    gen = Generator.from_folder(folder)
    got = {}
    for mb in (0, 1):
        engine = Engine(gen.model, pad_token_id=gen.pad_token_id, prefix_cache=PrefixCache(mb << 20)).start()
        try:
            first = run(engine, P1)
            turns = [first,
                     run(engine, P1 + first + [7, 8, 9]),  # a growing conversation: the whole first row
                     run(engine, P1 + [11, 12]),  # the first prompt, then other tokens
                     run(engine, P1[:5] + [13, 14])]  # a short shared prefix
            stats = engine.stats()["prefix_cache"]
        finally:
            engine.stop()
        got[mb] = turns
    assert got[0] == got[1]
    assert len({t for turn in got[0] for t in turn}) > 3, "a degenerate model proves nothing"
    # the second turn starts from the first row's prompt and the tokens it fed (all but the last generated)
    reused = len(P1) + len(first) - 1 + len(P1)
    if name == "gpt-oss-window":  # the sliding layer kept the last 7 of 20 slots: 5 tokens are not reusable
        assert (stats["hits"], stats["misses"], stats["tokens_reused"]) == (2, 2, reused)
    else:
        assert (stats["hits"], stats["misses"], stats["tokens_reused"]) == (3, 1, reused + 5)


# ---- the server -------------------------------------------------------------------------------------------------
def test_server_conversation_equals_the_generator(tiny_config, make_checkpoint, tmp_path):
    """A conversation of three turns over /v1/completions with token ids, each prompt the previous prompt, its
    reply and more tokens, on gpt-oss tiny with window-sized caches: the replies equal the Generator's (no prefix
    cache) and the second and third turns hit (/health and /metrics say so)."""
    httpx = pytest.importorskip("httpx")
    parser = pytest.importorskip("prometheus_client.parser")
    from serve_helpers import run_server, wait_ready

    from mxport.runtime.serve.app import create_app, load_folder

    folder = export(make_checkpoint(tiny_config), tmp_path / "tiny", target="cpu", progress=False)
    gen = Generator.from_folder(folder)
    with run_server(create_app(lambda: load_folder(folder, model_name="tiny", prefix_cache_mb=1))) as base:
        wait_ready(base, timeout=60)
        prompt, replies, reusable = list(P1), [], 0
        for more in ([7, 8, 9], [10, 11], [12]):
            if replies:  # the previous row's prompt and the tokens it fed (all of its reply but the last)
                reusable += len(prompt) - len(more_before) - 1
            body = {"model": "tiny", "prompt": prompt, "max_tokens": 10, "return_token_ids": True}
            reply = httpx.post(f"{base}/v1/completions", json=body, timeout=60).json()["choices"][0]["token_ids"]
            assert reply == gen.generate(prompt, max_new_tokens=10)[0].token_ids
            replies.append(reply)
            prompt, more_before = prompt + reply + more, more
        stats = httpx.get(f"{base}/health").json()["prefix_cache"]
        text = httpx.get(f"{base}/metrics").text
    assert len({t for reply in replies for t in reply}) > 3, "a degenerate model proves nothing"
    assert stats["hits"] == 2 and stats["misses"] == 1 and 0 < stats["bytes"] <= stats["max_bytes"] == 1_000_000
    assert stats["tokens_reused"] == reusable
    samples = {s.name: s.value for f in parser.text_string_to_metric_families(text) for s in f.samples
               if s.name.startswith("mxport_prefix_cache")}
    assert samples == {"mxport_prefix_cache_hits_total": 2, "mxport_prefix_cache_misses_total": 1,
                       "mxport_prefix_cache_tokens_reused_total": stats["tokens_reused"],
                       "mxport_prefix_cache_bytes": stats["bytes"]}


def test_a_shared_system_prompt_is_stored_at_the_branch_point(tiny_config, make_checkpoint, tmp_path):
    """Window caches (8): users A, B, C share 70 tokens and then differ. A's entries end past the shared part, so
    B finds no valid prefix: B is prefilled up to the branch point, which is stored; C hits there. Greedy output
    equals the engine's without a prefix cache."""
    from mxport.runtime.serve.prefix import BRANCH_TOKENS

    folder = export(make_checkpoint(tiny_config), tmp_path / "tiny", target="cpu", progress=False)
    gen = Generator.from_folder(folder)
    shared = [int(t) for t in np.random.default_rng(3).integers(3, 500, BRANCH_TOKENS + 6)]
    got = {}
    for mb in (0, 1):
        engine = Engine(gen.model, pad_token_id=gen.pad_token_id, prefix_cache=PrefixCache(mb << 20)).start()
        try:
            got[mb] = [run(engine, shared + user) for user in ([1, 2, 3], [4, 5, 6], [7, 8])]
            stats = engine.stats()["prefix_cache"]
        finally:
            engine.stop()
    assert got[0] == got[1]
    assert (stats["hits"], stats["misses"], stats["tokens_reused"]) == (1, 2, len(shared))  # C hit; B only stored
