"""The continuous-batching engine: rows that join and leave a running batch decode exactly as when run alone.

The tiny preset's sliding window is 8 and the default export keeps window-sized caches (a sliding layer holds the
last 7 slots), so merging rows of different lengths exercises the left padding of both cache forms.
"""

from __future__ import annotations

import threading

import pytest

from mxport.exporter.export import export
from mxport.runtime.generation.generate import Generator
from mxport.runtime.generation.sampling import SamplingConfig
from mxport.runtime.serve.engine import Engine, Job, QueueFull, wait_idle

PROMPTS = [
    [5, 17, 99, 23, 44, 301, 7, 250, 12, 64, 3, 81, 9],  # longer than the window
    [40, 41],
    [300, 2, 77, 18, 5],
    [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28],
]
NEW = 24


class Collect:
    """A handler that records tokens; on_token(job_index, count) lets a test submit more jobs mid-run."""

    def __init__(self, on_token=None) -> None:
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.done = threading.Event()
        self.on_token = on_token

    def token(self, token_id: int) -> bool:
        self.tokens.append(token_id)
        if self.on_token:
            self.on_token(len(self.tokens))
        return False

    def finish(self, reason: str, completion_tokens: int, stop_token: int | None = None) -> None:
        self.reason = reason
        self.done.set()


@pytest.fixture(scope="module", params=["window", "full"])
def export_dir(request, tiny_config, make_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"engine-{request.param}") / "x"
    return export(make_checkpoint(tiny_config), out, target="cpu", progress=False,
                  window_cache=request.param == "window")


def alone(gen: Generator, prompt: list[int], n: int, **sampling) -> list[int]:
    return gen.generate(prompt, max_new_tokens=n, stop_token_ids=[], **sampling)[0].token_ids


def test_rows_joining_and_leaving_equal_alone(export_dir):
    gen = Generator.from_folder(export_dir)
    engine = Engine(gen.model, pad_token_id=gen.pad_token_id, max_batch=8).start()
    try:
        handlers = [Collect() for _ in PROMPTS]
        lengths = [NEW, 6, NEW - 3, 10]  # rows leave at different steps

        def job(i):
            return Job(PROMPTS[i], lengths[i], handlers[i])

        # row 0 starts alone; row 1 joins after its 3rd token, row 2 after its 9th (past the window), row 3 when
        # row 1 has left (the batch has shrunk and been trimmed)
        handlers[0].on_token = lambda n: engine.submit(job(1)) if n == 3 else (
            engine.submit(job(2)) if n == 9 else None)
        handlers[1].on_token = lambda n: engine.submit(job(3)) if n == lengths[1] else None
        engine.submit(job(0))
        for h in handlers:
            assert h.done.wait(60), "a job did not finish"
        assert engine.max_rows_seen >= 3
        for i, h in enumerate(handlers):
            assert h.reason == "length"
            assert h.tokens == alone(gen, PROMPTS[i], lengths[i]), f"row {i} differs from its run alone"
        assert wait_idle(engine) and engine.active == 0
    finally:
        engine.stop()


def test_jobs_admitted_together_are_prefilled_together_and_equal_alone(export_dir):
    gen = Generator.from_folder(export_dir)
    engine = Engine(gen.model, pad_token_id=gen.pad_token_id, max_batch=8).start()
    try:
        started, gate = threading.Event(), threading.Event()
        first = Collect(on_token=lambda n: (started.set(), gate.wait(10)) if n == 1 else None)  # holds the engine
        engine.submit(Job(PROMPTS[0], 12, first))
        assert started.wait(30)
        handlers = [Collect() for _ in PROMPTS[1:]]
        for p, h in zip(PROMPTS[1:], handlers):  # they wait, then are admitted in one prefill call
            engine.submit(Job(p, 12 + len(p) % 5, h))
        gate.set()
        for h in [first, *handlers]:
            assert h.done.wait(60)
        assert engine.max_prefill_rows == len(PROMPTS) - 1
        assert first.tokens == alone(gen, PROMPTS[0], 12)
        for p, h in zip(PROMPTS[1:], handlers):
            assert h.tokens == alone(gen, p, 12 + len(p) % 5)
    finally:
        engine.stop()


def test_sampled_rows_follow_their_own_seed(export_dir):
    gen = Generator.from_folder(export_dir)
    engine = Engine(gen.model, pad_token_id=gen.pad_token_id).start()
    try:
        cfgs = [SamplingConfig(0.8, 20, 0.95, seed=1), SamplingConfig(1.2, 0, 0.9, seed=7), SamplingConfig()]
        handlers = [Collect() for _ in cfgs]
        for i, cfg in enumerate(cfgs):
            engine.submit(Job(PROMPTS[i], 12, handlers[i], cfg))
        for h in handlers:
            assert h.done.wait(60)
        for i, cfg in enumerate(cfgs):
            want = alone(gen, PROMPTS[i], 12, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                         seed=cfg.seed)
            assert handlers[i].tokens == want
    finally:
        engine.stop()


def test_stop_ids_cancel_and_queue_limit(export_dir):
    gen = Generator.from_folder(export_dir)
    first = alone(gen, PROMPTS[0], 8)
    engine = Engine(gen.model, pad_token_id=gen.pad_token_id, max_batch=1, max_queue=1).start()
    try:
        stop = Collect()
        engine.submit(Job(PROMPTS[0], 50, stop, stop_ids=frozenset({first[4]})))
        assert stop.done.wait(30) and stop.reason == "stop"
        assert stop.tokens == first[: first.index(first[4])]  # the stop token itself is not handed over

        gate = threading.Event()
        long = Collect(on_token=lambda n: gate.wait(10) if n == 2 else None)  # holds the engine at its 2nd token
        job = Job(PROMPTS[1], 10_000, long)
        engine.submit(job)
        queued = Job(PROMPTS[2], 3, Collect())
        engine.submit(queued)  # waits: the one batch slot is taken
        with pytest.raises(QueueFull):
            engine.submit(Job(PROMPTS[2], 3, Collect()))
        job.cancel()
        gate.set()
        assert long.done.wait(30) and long.reason == "cancelled"
        assert queued.handler.done.wait(30) and queued.handler.reason == "length"
        assert wait_idle(engine)
    finally:
        engine.stop()

