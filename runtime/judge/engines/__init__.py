"""Engines mxport did not write, under the NumPy reference as the referee (`mxport verify --engine NAME`).

    engine = open_engine("genai", "folder", cfg)        # or "onnx", "gguf", "transformers"
    first = engine.prefill(ids)                         # Step: logits [S, V] of every position (+ hidden states)
    nxt = engine.decode(token)                          # Step: logits [1, V] of one cached decode step
    engine.reset(); engine.close()

One small interface over every engine: given token ids (int64, one sequence), the logits of every prompt
position, then the logits of cached decode steps, one token each; per-layer hidden states where the engine can
expose them (`per_layer`); the engine's own tokenizer where it has one (`encode(text) -> ids`), which verify
only compares with the checkpoint's (a mismatch is reported apart, never a numeric failure). `lossy` names why
the engine's numbers are not the checkpoint's by design (quantized weights or activations), or is None when it
claims float32 math on the checkpoint's own weights. runtime/judge/engines/run.py runs the reference beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mxport.contract import io
from mxport.errors import MxportError

NAMES = ("genai", "onnx", "gguf", "transformers")


@dataclass
class Step:
    """What one engine call gives back: logits [S, V] (S = the tokens of the call) and, where exposed, the residual
    stream after layer i as hidden[i] [S, H] (None: logits only)."""

    logits: np.ndarray
    hidden: dict[int, np.ndarray] | None = None


@dataclass
class Engine:
    """The base of every engine adapter: subclasses set the fields in __init__ and implement `_call` and `reset`
    (or `prefill` / `decode` themselves)."""

    name: str = ""
    target: str = ""
    describe: str = ""  # one line: what runs (library and version, file, options)
    lossy: str | None = None  # why its numbers differ by design; None = claims float32 math on the checkpoint
    logits_source: str = "every position"  # how logits are obtained (a note when only the last position is)
    per_layer: str = "none"  # where hidden states come from, or "none" with the reason in notes
    notes: list[str] = field(default_factory=list)
    encode: Callable[[str], list[int]] | None = None  # the engine's own tokenizer, if it brings one

    def prefill(self, ids: np.ndarray) -> Step:
        """A new sequence: forget the last one, run the prompt `ids` [S] (int64)."""
        self.reset()
        return self._call(np.asarray(ids, np.int64))

    def decode(self, token: int) -> Step:
        """One cached step of one token after the sequence so far."""
        return self._call(np.array([token], np.int64))

    def _call(self, ids: np.ndarray) -> Step:  # pragma: no cover - interface
        """Run `ids` after the sequence so far (the engine's own cache)."""
        raise NotImplementedError

    def reset(self) -> None:  # pragma: no cover - interface
        """Forget the sequence: the next call is a prefill."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def open_engine(name: str, target: str | Path, cfg: Any, *, threads: int | None = None, io_names: dict[str, str] | None = None,
                max_tokens: int = 256, provider: str = "CPUExecutionProvider") -> Engine:
    """The engine `name` over `target` (a folder or file; for "transformers", a checkpoint folder), for a model of
    config `cfg` (the reference's DecoderConfig: cache shapes for ONNX, the vocabulary for every engine).
    `max_tokens`: the longest sequence (prompt + decode steps) it must hold."""
    target = Path(target)
    if name == "genai":
        from mxport.runtime.judge.engines.genai import GenaiEngine

        return GenaiEngine(target, cfg, threads=threads, max_tokens=max_tokens)
    if name == "onnx":
        from mxport.runtime.judge.engines.onnx_hf import OnnxEngine

        return OnnxEngine(target, cfg, threads=threads, io_names=io_names or {}, provider=provider,
                          max_tokens=max_tokens)
    if name == "gguf":
        from mxport.runtime.judge.engines.gguf import GgufEngine

        return GgufEngine(target, cfg, threads=threads, max_tokens=max_tokens)
    if name == "transformers":
        from mxport.runtime.judge.engines.transformers import TransformersEngine

        return TransformersEngine(target, cfg, threads=threads)
    raise MxportError(f"--engine {name!r}: expected one of {', '.join(NAMES)}")


_IO_KEYS = (io.INPUT_IDS, io.ATTENTION_MASK, io.POSITION_IDS, io.LOGITS, io.PAST + "%d.key",
            io.PAST + "%d.value", io.PRESENT + "%d.key", io.PRESENT + "%d.value")


def parse_io_names(specs: list[str] | None) -> dict[str, str]:
    """`--engine-io OURS=THEIRS` (repeatable): the graph's names for the model I/O contract's names. OURS is one of
    input_ids, attention_mask, position_ids, logits, past_key_values.%d.key/.value, present.%d.key/.value
    (`%d` = the layer, in THEIRS too); THEIRS may be `-` for an input the graph does not have."""
    out: dict[str, str] = {}
    for spec in specs or ():
        ours, sep, theirs = spec.partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if not sep or not theirs:
            raise MxportError(f"--engine-io {spec!r}: expected OURS=THEIRS (e.g. logits=output_logits)")
        if ours not in _IO_KEYS:
            raise MxportError(f"--engine-io {spec!r}: {ours!r} is not one of {', '.join(_IO_KEYS)}")
        if ("%d" in ours) != ("%d" in theirs) and theirs != "-":
            raise MxportError(f"--engine-io {spec!r}: a per-layer name needs %d on both sides")
        if theirs == "-" and ours not in (io.ATTENTION_MASK, io.POSITION_IDS):
            raise MxportError(f"--engine-io {spec!r}: only attention_mask and position_ids may be absent (-)")
        if not re.fullmatch(r"[\w./:%\-]+", theirs):
            raise MxportError(f"--engine-io {spec!r}: {theirs!r} is not a tensor name")
        out[ours] = theirs
    return out
