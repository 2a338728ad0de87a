"""The models a server serves: each export folder loaded with its own engine, its id, and what it costs in memory.

    ids = model_ids(folders)              # the folder names; two alike are an MxportError naming both folders
    served = load_folder(folder, ...)     # one model: Generator.from_folder's step model + an Engine (engine.py)
    models = load_folders(folders, ...)   # several, one after another, each with memory_mb: weights and RSS delta
    grammars(served)                      # the model's structured-output Grammars, built on first use

`mxport serve A B ...` serves them all from one port: a request's `model` picks one (app.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mxport.contract.folder import DATA_FILE, MODEL_FILE, TOKENIZER_FILE
from mxport.errors import MxportError
from mxport.runtime.chat.format import ChatFormat
from mxport.runtime.chat.session import chat_format
from mxport.runtime.generation.constrain import Grammars
from mxport.runtime.generation.tokenizer import Tokenizer
from mxport.runtime.serve.engine import Engine
from mxport.runtime.serve.limits import bytes_per_token
from mxport.runtime.serve.prefix import PrefixCache

log = logging.getLogger("mxport.serve")
PREFIX_CACHE_MB = 1024.0  # `mxport serve --prefix-cache-mb`'s default


@dataclass
class Served:
    """What the routes need: the model's name, its engine, tokenizer, chat format, stop ids and context."""

    name: str
    engine: Engine
    tokenizer: Tokenizer | None
    chat: ChatFormat | None
    eos_ids: tuple[int, ...] = ()
    max_context: int | None = None
    vocab_size: int | None = None
    bytes_per_token: int | None = None  # limits.bytes_per_token of the tokenizer (None: no early refusal)
    grammars: Any = None  # runtime.generation.constrain.Grammars: built at load (load_folder) or on first use
    memory_mb: dict[str, float] | None = None  # {"weights": file MB, "rss_delta": process RSS growth at load}


def model_ids(folders: Sequence[str | Path]) -> list[str]:
    """Each folder's model id (its name); MxportError when two folders have the same name."""
    seen: dict[str, Path] = {}
    for folder in folders:
        name = Path(folder).resolve().name
        if name in seen:
            raise MxportError(f"{folder} and {seen[name]}: two models named '{name}' (a model's id is its folder's "
                              f"name: rename or copy one folder)")
        seen[name] = Path(folder)
    return list(seen)


def load_folder(folder: str | Path, *, provider: str = "cpu", max_batch: int = 16, max_queue: int = 64,
                model_name: str | None = None, max_context: int | None = None, threads: int | None = None,
                prefix_cache_mb: float = PREFIX_CACHE_MB) -> Served:
    """An export folder on ONNX Runtime (the Generator's loader: the same step model, tokenizer and eos ids);
    `threads`: ORT's intra-op threads (None: one per core); `prefix_cache_mb`: the prefix cache's budget
    (prefix.py; 0 = none)."""
    from mxport.runtime.generation.generate import Generator

    rss = rss_mb()
    gen = Generator.from_folder(folder, provider=provider, max_context=max_context, threads=threads)
    engine = Engine(gen.model, pad_token_id=gen.pad_token_id, max_batch=max_batch, max_queue=max_queue,
                    prefix_cache=PrefixCache(int(prefix_cache_mb * 1_000_000))).start()
    kind = gen.config.family.chat_format if gen.config is not None else None
    per_token = None
    if gen.tokenizer is not None and (Path(folder) / TOKENIZER_FILE).is_file():
        per_token = bytes_per_token(json.loads((Path(folder) / TOKENIZER_FILE).read_text(encoding="utf-8")))
    served = Served(model_name or Path(folder).resolve().name, engine, gen.tokenizer,
                    chat_format(gen.tokenizer, folder, kind),
                    gen.eos_token_ids, gen.max_context, gen.vocab_size, per_token)
    if served.chat is not None:
        try:
            grammars(served)  # llguidance's token table, once per model (a 200k vocabulary takes about a second)
        except MxportError as exc:
            log.warning("structured outputs are off for this model: %s", exc)
    weights = sum(p.stat().st_size for p in (Path(folder) / MODEL_FILE, Path(folder) / DATA_FILE) if p.is_file())
    after = rss_mb()
    served.memory_mb = {"weights": round(weights / 1e6, 1),
                        "rss_delta": round(after - rss, 1) if after is not None and rss is not None else None}
    return served


def grammars(s: Served) -> Grammars:
    """The model's Grammars, built on first use (MxportError when it cannot have them)."""
    if s.grammars is None:
        s.grammars = Grammars(s.tokenizer, s.vocab_size or s.tokenizer.vocab_size, s.chat.name)
    return s.grammars


def load_folders(folders: Sequence[str | Path], **options: Any) -> list[Served]:
    """Every folder (load_folder's options), one after another; a failing one stops the engines already started."""
    model_ids(folders)
    loaded: list[Served] = []
    try:
        for folder in folders:
            loaded.append(load_folder(folder, **options))
    except BaseException:
        for served in loaded:
            served.engine.stop()
        raise
    return loaded


def rss_mb() -> float | None:
    """This process's resident memory in MB (Linux /proc; None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1000
    except OSError:
        pass
    return None
