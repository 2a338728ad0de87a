"""Test helpers for the server: the real uvicorn server in a thread, and a scripted step model.

The scripted model follows the step-model contract (runtime/execution/step_model.py) and the engine's batching (left padding,
merges, drops) but its next token comes from a script chosen by the prompt's text, so a test can make a
"model" answer with harmony reasoning, a tool call or a final answer. It stores (prompt length, script) in every
cache slot it writes; a row's last slot is never padding, so after any merge it still reads its own values:

    generated so far k = sum(mask[b]) - prompt length;   next token = script[k] (then `filler` forever)
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from mxport.runtime.execution.step_model import CacheShape


class ScriptedStepModel:
    cache_shape = CacheShape(num_layers=1, kv_heads=1, head_dim=2)

    def __init__(self, vocab: int, choose: Callable[[list[int]], int], scripts: Sequence[Sequence[int]],
                 filler: int, delay: float = 0.0) -> None:
        self.vocab, self.choose, self.scripts, self.filler, self.delay = vocab, choose, scripts, filler, delay

    def new_cache(self, batch: int, capacity: int | None = None) -> list[np.ndarray]:
        return [np.zeros((batch, 1, 0, 2), np.float32)] * 2

    def step(self, input_ids, attention_mask, position_ids, cache):
        if self.delay:
            time.sleep(self.delay)
        B, S = input_ids.shape
        past = cache[0]
        logits = np.zeros((B, S, self.vocab), np.float32)
        new = np.zeros((B, 1, S, 2), np.float32)
        for b in range(B):
            if past.shape[2] == 0:  # prefill: remember the prompt length and the script
                prompt = [int(t) for t, m in zip(input_ids[b], attention_mask[b]) if m]
                n0, s = len(prompt), self.choose(prompt)
            else:
                n0, s = (int(v) for v in past[b, 0, -1])
            new[b, 0, :] = (n0, s)
            k = int(attention_mask[b].sum()) - n0
            script = self.scripts[s]
            logits[b, :, script[k] if k < len(script) else self.filler] = 1.0
        present = np.concatenate([past, new], axis=2)
        return logits, [present, present]


def harmony_tiny_export(root, seed: int = 0):
    """A random-weight gpt-oss tiny checkpoint with the harmony tokenizer (demo_config's eos / pad ids), exported
    for the cpu under root/export; returns the export folder."""
    from mxport.commands.demo import demo_config
    from mxport.exporter.export import export
    from mxport.exporter.synth import write_checkpoint

    cfg, tok = demo_config()
    ckpt = write_checkpoint(root / "ckpt", cfg, seed=seed)
    tok.save(ckpt / "tokenizer.json")
    return export(ckpt, root / "export", target="cpu", progress=False)


@contextlib.contextmanager
def run_server(app, limits=None) -> Iterator[str]:
    """The server `mxport serve` runs (runtime/serve/net.py: uvicorn with the bounded h11 protocol) on 127.0.0.1
    with an ephemeral port, in a thread; yields the base URL (http://127.0.0.1:PORT)."""
    from mxport.runtime.serve.limits import ServeLimits
    from mxport.runtime.serve.net import make_server

    server = make_server(app, limits or ServeLimits(), port=0, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_ready(base: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{base}/health").status_code == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{base}/health never answered 200")


class LogLines(logging.Handler):
    """Every record the server logs (mxport.serve, uvicorn), formatted with its traceback if it has one."""

    NAMES = ("mxport.serve", "uvicorn.error", "uvicorn")

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.text.append(logging.Formatter().format(record))


@contextlib.contextmanager
def server_logs() -> Iterator[LogLines]:
    handler = LogLines()
    for name in LogLines.NAMES:
        logging.getLogger(name).addHandler(handler)
    try:
        yield handler
    finally:
        for name in LogLines.NAMES:
            logging.getLogger(name).removeHandler(handler)
