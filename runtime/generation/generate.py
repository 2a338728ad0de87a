"""Generator: prompts -> tokens (greedy or sampled), streamed, batched, on ONNX Runtime or a NumPy backend.

One loop serves every backend (runtime.execution.step_model step models):

    prompts (lists of ids, different lengths)
      │ left-pad to S0; attention_mask 0 on pads; position_ids = cumsum(mask) - 1, clipped at 0
      ▼
    prefill: step(ids [B,S0], mask [B,S0], pos [B,S0], empty cache) -> logits[:, -1], cache
      ▼
    loop: choose next ids [B] -> stop checks per row (stop ids, stop strings, max_new_tokens)
          -> step(ids [B,1], mask + [1], pos = sum(mask) - 1, cache)
          finished rows keep stepping with a pad token until every row is done; their output is ignored.

Streaming yields `Delta`s (row, token id, text delta); text deltas never split a UTF-8 character and never
show a stop string (text that could still become one is held back until it cannot).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mxport.contract.folder import CONFIG_FILE, MANIFEST_FILE, TOKENIZER_FILE, folder_kind, read_manifest
from mxport.contract.io import position_ids
from mxport.errors import MxportError
from mxport.runtime.generation.stops import StopMatcher
from mxport.runtime.generation.sampling import SamplingConfig, sample
from mxport.runtime.execution.step_model import CacheShape, InferStepModel, OrtStepModel, StepModel
from mxport.runtime.generation.tokenizer import Tokenizer


@dataclass(frozen=True)
class Delta:
    """One generated token of row `index` and the text it completes (may be '')."""

    index: int
    token_id: int
    text: str
    finish_reason: str | None = None  # set on a row's last Delta: "stop_token" | "stop_string" | "length"


@dataclass
class Generation:
    """A finished row. token_ids excludes a stop token (that is in stop_token_id); text excludes stop strings."""

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    stop_token_id: int | None = None
    seconds: float = 0.0  # wall time of the whole generate() call
    prefill_seconds: float = 0.0


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    sampling: SamplingConfig = SamplingConfig()
    stop_token_ids: tuple[int, ...] | None = None  # None -> the model's eos ids
    stop_strings: tuple[str, ...] = ()
    skip_special_tokens: bool = False  # in the decoded text

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise MxportError(f"--max-new-tokens must be >= 1, found {self.max_new_tokens}")
        if any(not s for s in self.stop_strings):
            raise MxportError(f"--stop: stop strings must be non-empty, found {list(self.stop_strings)}")


class Generator:
    """Generation over a step model (ORT or NumPy), with an optional tokenizer for text in and out."""

    def __init__(self, model: StepModel, tokenizer: Tokenizer | None = None, *,
                 eos_token_ids: Sequence[int] = (), max_context: int | None = None, pad_token_id: int = 0,
                 vocab_size: int | None = None, name: str = "model", config=None, folder: Path | None = None) -> None:
        self.model = model
        self.config = config  # the family config (a DecoderConfig) when known: its family names the chat format
        self.folder = folder  # where the tokenizer and chat template live
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
        self.max_context = max_context
        self.pad_token_id = int(pad_token_id)
        self.vocab_size = vocab_size
        self.name = name

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str | Path, *, backend: str = "ort", provider: str | None = "cpu",
                    max_context: int | None = None, tokenizer: Tokenizer | None = None,
                    threads: int | None = None) -> Generator:
        """An exported folder (model.onnx + mxport.json + tokenizer.json) or, with backend='numpy', a checkpoint
        folder (config.json + *.safetensors) run by the NumPy reference model. `threads`: ORT's intra-op threads
        (None: ORT's default, one per core)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MxportError(f"{folder}: not a folder (expected an exported folder or a checkpoint folder)")
        kind = folder_kind(folder)
        if backend not in ("ort", "numpy"):
            raise MxportError(f"--backend {backend!r}: expected 'ort' or 'numpy'")
        if kind == "checkpoint" and backend != "numpy":
            raise MxportError(
                f"{folder}: is a checkpoint (config.json + safetensors, no model.onnx); export it first "
                f"(`mxport export {folder} -o OUT`) or run it with --backend numpy"
            )
        config, eos, pad = _folder_config(folder, kind)
        if kind == "export" and backend == "ort":
            model: StepModel = OrtStepModel(folder, provider, session_options=_threads(threads))
            name = f"onnxruntime {model.provider}"
        elif kind == "export":
            model = InferStepModel(_onnx_reference_runner(folder), _cache_shape(config, folder))
            name = "onnx.reference (mxport kernels)"
        else:
            model = InferStepModel(_reference_model_runner(folder), _cache_shape(config, folder))
            name = "NumPy reference model"
        if tokenizer is None and (folder / TOKENIZER_FILE).is_file():
            tokenizer = Tokenizer.from_file(folder / TOKENIZER_FILE)
        vocab = config.vocab_size if config is not None else None
        if pad is None or (vocab is not None and not 0 <= pad < vocab):
            pad = 0
        limit = max_context or (config.max_position_embeddings if config is not None else None)
        return cls(model, tokenizer, eos_token_ids=eos, max_context=limit, pad_token_id=pad, vocab_size=vocab,
                   name=name, config=config, folder=folder)

    # ---- the API --------------------------------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise MxportError(f"{self.name}: a text prompt needs a tokenizer (tokenizer.json); pass token ids")
            return self.tokenizer.encode(prompt)
        return [int(i) for i in prompt]

    def generate(self, prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
                 config: GenerationConfig | None = None, **options: Any) -> list[Generation]:
        """Generate for each prompt; returns one Generation per prompt. options override GenerationConfig."""
        config = _config(config, options)
        batch = self._batch(prompts)
        t0 = time.perf_counter()
        ids: list[list[int]] = [[] for _ in batch]
        ends: list[Delta | None] = [None] * len(batch)
        prefill = [0.0]
        for delta in self._run(batch, config, prefill):
            ids[delta.index].append(delta.token_id)
            if delta.finish_reason:
                ends[delta.index] = delta
        seconds = time.perf_counter() - t0
        results = []
        for row, prompt in enumerate(batch):
            end = ends[row]
            toks = ids[row]
            stop_id = None
            if end is not None and end.finish_reason == "stop_token":
                stop_id = toks.pop()
            text = self._full_text(toks, config)
            results.append(Generation(prompt, toks, text, end.finish_reason if end else "length", stop_id,
                                      seconds, prefill[0]))
        return results

    def stream(self, prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
               config: GenerationConfig | None = None, **options: Any) -> Iterator[Delta]:
        """Yield Deltas as tokens are chosen (one per row per step; a stop token's Delta has text '')."""
        config = _config(config, options)
        yield from self._run(self._batch(prompts), config, [0.0])

    def prompt_logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits [B, S, V] of a rectangular batch of prompts (no padding), one forward call."""
        input_ids = np.asarray(input_ids, np.int64)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        self._check_context(input_ids.shape[1], 0)
        mask = np.ones_like(input_ids)
        positions = position_ids(mask, input_ids.shape[1])
        logits, _ = self.model.step(input_ids, mask, positions, self.model.new_cache(input_ids.shape[0]))
        return logits

    # ---- the loop -------------------------------------------------------------------------------------------
    def _batch(self, prompts: Any) -> list[list[int]]:
        if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts and
                                        isinstance(prompts[0], (int, np.integer))):
            prompts = [prompts]
        if isinstance(prompts, np.ndarray):
            prompts = list(prompts.reshape(-1, prompts.shape[-1])) if prompts.ndim > 1 else [prompts]
        batch = [self.encode(p) for p in prompts]
        if not batch or any(len(p) == 0 for p in batch):
            raise MxportError("every prompt needs at least one token")
        if self.vocab_size is not None:
            bad = [t for p in batch for t in p if not 0 <= t < self.vocab_size]
            if bad:
                raise MxportError(f"prompt token ids must be in [0, {self.vocab_size}), found {bad[:5]}")
        return batch

    def _check_context(self, prompt_len: int, max_new_tokens: int) -> None:
        if self.max_context is not None and prompt_len + max_new_tokens > self.max_context:
            raise MxportError(
                f"context length exceeded: prompt of {prompt_len} tokens + --max-new-tokens {max_new_tokens} "
                f"> {self.max_context} (the model's max_position_embeddings or --max-context); "
                "shorten the prompt or lower --max-new-tokens"
            )

    def _run(self, batch: list[list[int]], config: GenerationConfig, prefill_time: list[float]) -> Iterator[Delta]:
        B, S0 = len(batch), max(len(p) for p in batch)
        self._check_context(S0, config.max_new_tokens)
        stop_ids = set(self.eos_token_ids if config.stop_token_ids is None else config.stop_token_ids)
        rng = config.sampling.rng()

        input_ids = np.full((B, S0), self.pad_token_id, np.int64)
        mask = np.zeros((B, S0), np.int64)
        for b, p in enumerate(batch):
            input_ids[b, S0 - len(p):] = p
            mask[b, S0 - len(p):] = 1
        positions = position_ids(mask, S0)

        texts = [_TextState(self.tokenizer, config) for _ in batch]
        done = [False] * B
        counts = [0] * B
        # static caches are sized for the prompt and up to 1024 new tokens (more grows them, doubling): a large
        # --max-new-tokens does not reserve the whole context up front
        cache = self.model.new_cache(B, capacity=S0 + min(config.max_new_tokens, 1024))
        t0 = time.perf_counter()
        logits, cache = self.model.step(input_ids, mask, positions, cache)
        prefill_time[0] = time.perf_counter() - t0
        while True:
            next_ids = sample(logits[:, -1, :], config.sampling, rng)
            for b in range(B):
                if done[b]:
                    continue
                tid = int(next_ids[b])
                counts[b] += 1
                if tid in stop_ids:
                    done[b] = True
                    yield Delta(b, tid, texts[b].finish(), "stop_token")
                    continue
                text, hit = texts[b].add(tid)
                reason = "stop_string" if hit else ("length" if counts[b] >= config.max_new_tokens else None)
                if reason:
                    done[b] = True
                    text += texts[b].finish()
                yield Delta(b, tid, text, reason)
            if all(done):
                return
            step_ids = np.where(done, self.pad_token_id, next_ids).astype(np.int64)[:, None]
            mask = np.concatenate([mask, np.ones((B, 1), np.int64)], axis=1)
            positions = position_ids(mask, 1)
            logits, cache = self.model.step(step_ids, mask, positions, cache)

    def _full_text(self, token_ids: list[int], config: GenerationConfig) -> str:
        """The non-streamed text: decode everything, cut at the first stop string."""
        if self.tokenizer is None:
            return ""
        text = self.tokenizer.decode(token_ids, config.skip_special_tokens)
        cut = min((i for s in config.stop_strings if (i := text.find(s)) >= 0), default=None)
        return text if cut is None else text[:cut]


class _TextState:
    """Per-row streaming text: incremental decoding plus stop-string hold-back (runtime/generation/stops.py: linear
    in the text, whatever the stop strings' lengths; the server uses the same matcher)."""

    def __init__(self, tokenizer: Tokenizer | None, config: GenerationConfig) -> None:
        self.decoder = tokenizer.incremental(config.skip_special_tokens) if tokenizer is not None else None
        self.matcher = StopMatcher(config.stop_strings)
        self.stopped = False

    def add(self, token_id: int) -> tuple[str, bool]:
        """-> (text to show now, whether a stop string was completed)."""
        if self.decoder is None:
            return "", False
        text, hit = self.matcher.feed(self.decoder.add(token_id))
        self.stopped = self.stopped or hit
        return text, hit

    def finish(self) -> str:
        if self.decoder is None or self.stopped:
            return ""
        text, hit = self.matcher.feed(self.decoder.flush())
        self.stopped = hit
        return text if hit else text + self.matcher.flush()
        cut = min((i for s in self.stops if (i := self.pending.find(s)) >= 0), default=None)
        if cut is not None:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out, True
        # hold back the longest tail that is a proper prefix of some stop string
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out, False


def _config(config: GenerationConfig | None, options: dict[str, Any]) -> GenerationConfig:
    config = config or GenerationConfig()
    sampling_keys = {"temperature", "top_k", "top_p", "seed"}
    s_opts = {k: options.pop(k) for k in list(options) if k in sampling_keys}
    if s_opts:
        sampling = SamplingConfig(**{**config.sampling.__dict__, **s_opts})
        options["sampling"] = sampling
    for key in ("stop_token_ids", "stop_strings"):
        if options.get(key) is not None:
            options[key] = tuple(options[key])
    unknown = set(options) - set(GenerationConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown generation options {sorted(unknown)}")
    return GenerationConfig(**{**config.__dict__, **options})


# ---- folders ----------------------------------------------------------------------------------------------------

def _folder_config(folder: Path, kind: str):
    """(model config or None, eos ids, pad id) from mxport.json (export) or config.json (checkpoint)."""
    from mxport.exporter import families

    if kind == "export":
        meta = read_manifest(folder)
        config = families.config_from_dict(meta.config, str(folder / MANIFEST_FILE)) if meta.config else None
        eos = list(meta.eos_token_ids) or (list(config.eos_token_ids) if config is not None else [])
    else:
        config = families.read_config(folder / CONFIG_FILE)
        eos = list(config.eos_token_ids)
    pad = config.pad_token_id if config is not None else None
    return config, [int(e) for e in eos], pad


def _cache_shape(config, folder: Path) -> CacheShape:
    if config is None:
        raise MxportError(f"{folder}: {MANIFEST_FILE} has no model config; the numpy backend needs it")
    return CacheShape(config.num_hidden_layers, config.num_key_value_heads, config.head_dim)


def _onnx_reference_runner(folder: Path):
    from mxport.runtime.execution.runners import OnnxReferenceRunner

    return OnnxReferenceRunner(folder)


def _reference_model_runner(folder: Path):
    from mxport.runtime.execution.runners import ReferenceModelRunner

    return ReferenceModelRunner(folder, hidden_states=False, window_cache=True)  # like transformers' cache


def _threads(threads: int | None) -> Any:
    """Session options with `threads` intra-op threads (None: ORT's defaults)."""
    if threads is None:
        return None
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    return so
