"""Step models for generation: one forward call with a KV cache, on ONNX Runtime or any `infer(feeds)` runner.

    step(input_ids [B,S], attention_mask [B,P+S], position_ids [B,S], cache(P)) -> logits [B,S,V], cache(P+S)
    (a sliding layer of a window-cache export holds at most W-1 of those slots; the step model does not care)

`OrtStepModel` keeps the cache in ORT values on the session's device, so it never goes back to host memory
(only the logits do). A layer's cache takes one of two forms:
  - growing: each step binds the presents as outputs (allocated by ORT, P+S slots) and binds them as the next
    step's past inputs; the op copies the past into the present every step.
  - static (transformers' StaticCache, onnxruntime-genai's past_present_share_buffer): one buffer of C >= P+S
    slots per layer is bound as both past and present; com.microsoft.GroupQueryAttention sees the shared
    buffer and writes only the new slots in place (slot P..P+S-1; it reads slots [0, T) where T is the mask's
    width, so the buffer's tail is never read). Used for every layer whose past GroupQueryAttention alone
    reads and whose present it writes (`--target cpu`), on CPU; a buffer too short for a step grows (doubling).
    At 128+32 tokens on qwen3-0.6b's shapes with int4 weights it takes a decode step from 21.4 to 17.5 ms.

`InferStepModel` wraps anything with `infer(feeds) -> dict` (the NumPy reference model, onnx.reference over the
graph, or an OrtRunner) and keeps the cache as numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mxport.contract import io
from mxport.contract.folder import model_path as export_model_path
from mxport.errors import MxportError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass(frozen=True)
class CacheShape:
    """What an empty cache looks like: per layer key and value [B, kv_heads, 0, head_dim]."""

    num_layers: int
    kv_heads: int
    head_dim: int


class StepModel(Protocol):
    cache_shape: CacheShape

    def new_cache(self, batch: int, capacity: int | None = None) -> Any: ...

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
             cache: Any) -> tuple[np.ndarray, Any]: ...


def resolve_provider(provider: str | None) -> str:
    """'cpu' | 'cuda' | 'auto' | a full ORT provider name -> an available ORT provider name, else MxportError."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = (provider or "cpu").strip()
    if wanted.lower() == "auto":
        return PROVIDERS["cuda"] if PROVIDERS["cuda"] in available else PROVIDERS["cpu"]
    name = PROVIDERS.get(wanted.lower(), wanted)
    if name not in available:
        shown = repr(wanted) if name == wanted else f"{wanted!r}: {name}"  # 'cuda': CUDAExecutionProvider
        raise MxportError(
            f"--provider {shown} is not available in this onnxruntime build; available: {', '.join(available)}"
        )
    return name


# ONNX Runtime folds a Cast of a weight once at load unless its output exceeds this option (1 GiB by default); then
# the Cast runs on every call (gpt-oss-20b's bf16 lm_head: 2.3 GB converted per decode step). mxport's sessions
# lift the limit; lowered exports store such weights already cast (exporter/lower/casts.py), for other hosts.
FOLDING_LIMIT_KEY = "optimization.constant_folding_max_output_size_in_bytes"
FOLDING_LIMIT = 1 << 40


def with_folding_limit(session_options: Any = None) -> Any:
    """`session_options` (or new ones) with ORT's constant-folding size limit raised, unless the caller set it."""
    import onnxruntime as ort

    so = session_options if session_options is not None else ort.SessionOptions()
    if not _has_entry(so, FOLDING_LIMIT_KEY):
        so.add_session_config_entry(FOLDING_LIMIT_KEY, str(FOLDING_LIMIT))
    return so


def mxport_options(session_options: Any = None) -> Any:
    """Options for every session mxport creates: the folding limit raised and mxport's native kernels registered
    (ops/native.py; ai.mxport nodes then run natively instead of through their function bodies)."""
    from mxport.ops import native

    so = with_folding_limit(session_options)
    native.register_kernels(so)
    return so


def _has_entry(so: Any, key: str) -> bool:
    try:
        so.get_session_config_entry(key)
        return True
    except Exception:  # ORT raises when the key was never set
        return False


CACHE_FORMS = ("auto", "static", "growing")
MIN_CAPACITY = 256  # slots a static buffer starts with when the caller gives no capacity


class OrtStepModel:
    """An ORT InferenceSession over model.onnx with the KV cache kept in ORT values (IOBinding).

    cache: "auto" (static on CPU where the graph allows it, else growing), "static" (where the graph allows it,
    on any provider) or "growing" (every layer)."""

    def __init__(self, model_path: str | Path, provider: str | None = "cpu",
                 session_options: Any = None, cache: str = "auto") -> None:
        import onnxruntime as ort

        if cache not in CACHE_FORMS:
            raise MxportError(f"cache={cache!r}: expected one of {', '.join(CACHE_FORMS)}")
        path = export_model_path(model_path)
        self.provider = resolve_provider(provider)
        self.device = "cuda" if self.provider == PROVIDERS["cuda"] else "cpu"
        try:
            self.session = ort.InferenceSession(str(path), sess_options=mxport_options(session_options),
                                                providers=[self.provider])
        except Exception as exc:  # ORT raises its own exception types (InvalidGraph, Fail, ...)
            raise MxportError(f"{path}: onnxruntime cannot load the model ({exc})") from None
        self.path = path
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = list(inputs)
        self.past_names, self.present_names = _cache_names(list(inputs), [o.name for o in self.session.get_outputs()],
                                                           str(path))
        key0 = inputs[self.past_names[0]].shape if self.past_names else [None, 1, None, 1]
        kv_heads, head_dim = key0[1], key0[3]
        if not isinstance(kv_heads, int) or not isinstance(head_dim, int):
            raise MxportError(f"{path}: {self.past_names[0]} needs static kv_heads and head_dim, found shape {key0}")
        self.cache_shape = CacheShape(len(self.past_names) // 2, kv_heads, head_dim)
        # a --dtype float16 export takes a float16 cache (bfloat16 has no numpy dtype here; ORT CPU refuses it anyway)
        past_type = inputs[self.past_names[0]].type if self.past_names else "tensor(float)"
        self._cache_dtype = np.float16 if past_type == "tensor(float16)" else np.float32
        self._ort = ort
        shareable = shared_buffer_layers(path, self.past_names, self.present_names)
        use = cache == "static" or (cache == "auto" and self.device == "cpu")
        self.static = [use and ok for ok in shareable]  # per past input: bound as one buffer with its present
        self._bound: tuple[Any, list[Any]] | None = None  # (IOBinding, the cache it binds) kept between steps
        out = next(o for o in self.session.get_outputs() if o.name == io.LOGITS)
        declared = out.shape if out.type == "tensor(float)" and len(out.shape) == 3 else [None, None, None]
        self._logits_dims = ((declared[1] if isinstance(declared[1], int) else None, declared[2])
                             if isinstance(declared[2], int) else None)

    def new_cache(self, batch: int, capacity: int | None = None) -> list[Any]:
        """An empty cache for `batch` rows; static layers get buffers of `capacity` slots (the prompt plus the
        tokens to generate, if known: a longer step grows them)."""
        empty = self._buffer(batch, 0)
        if capacity is None or not any(self.static):
            return [empty] * len(self.past_names)
        return [self._buffer(batch, capacity) if static else empty for static in self.static]

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
             cache: list[Any]) -> tuple[np.ndarray, list[Any]]:
        total, new = attention_mask.shape[1], input_ids.shape[1]
        cache = list(cache)
        for i, value in enumerate(cache):
            if self.static[i] and value.shape()[2] < total:
                cache[i] = self._grow(value, total - new, total)
        logits = self._logits_array(input_ids.shape)
        binding = self._binding(cache, logits is not None)
        feeds = [(io.INPUT_IDS, np.ascontiguousarray(input_ids, np.int64)),
                 (io.ATTENTION_MASK, np.ascontiguousarray(attention_mask, np.int64))]
        if io.POSITION_IDS in self.input_names:
            feeds.append((io.POSITION_IDS, np.ascontiguousarray(position_ids, np.int64)))
        for name, array in feeds:  # bound by address: `feeds` keeps them alive through the run
            binding.bind_cpu_input(name, array)
        if logits is None:
            binding.bind_output(io.LOGITS, "cpu")
        else:  # ORT writes straight into a numpy array of ours (get_outputs would wrap every present)
            binding.bind_output(io.LOGITS, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        self.session.run_with_iobinding(binding)
        if logits is not None and all(self.static):
            return logits, cache
        outputs = binding.get_outputs()  # in binding order: the presents (_binding), then the logits
        if logits is None:
            logits = outputs[-1].numpy()
        return logits, [cache[i] if self.static[i] else out for i, out in enumerate(outputs[:len(cache)])]

    def _binding(self, cache: list[Any], own_logits: bool) -> Any:
        """An IOBinding with the cache bound. When every layer is static and the logits go to our own arrays, the
        binding is kept, and the next step with the same buffers (every decode step) rebinds only its inputs
        and logits: 112 fewer bind calls per step on a 28-layer model."""
        if self._bound is not None and len(self._bound[1]) == len(cache) and \
                all(a is b for a, b in zip(self._bound[1], cache)):
            return self._bound[0]
        binding = self.session.io_binding()
        for name, value in zip(self.past_names, cache):
            binding.bind_ortvalue_input(name, value)
        for i, name in enumerate(self.present_names):
            if self.static[i]:
                binding.bind_ortvalue_output(name, cache[i])  # the same buffer: GQA writes the new slots in place
            else:
                binding.bind_output(name, self.device, 0)  # allocated by ORT on the device, fed back next step
        self._bound = (binding, cache) if own_logits and all(self.static) else None
        return binding

    def _logits_array(self, ids_shape: tuple[int, ...]) -> np.ndarray | None:
        """An empty float32 array of the logits' shape [B, S (or 1: --last-logits), V], or None when the graph
        does not declare V (then ORT allocates the output)."""
        dims = self._logits_dims
        if dims is None:
            return None
        return np.empty((ids_shape[0], ids_shape[1] if dims[0] is None else dims[0], dims[1]), np.float32)

    def cache_arrays(self, cache: list[Any], total: int) -> list[np.ndarray]:
        """The cache as numpy arrays of the slots in use (a static buffer's first `total` slots), for batch
        surgery; OrtValues of any length made from them are valid caches again."""
        arrays = []
        for static, value in zip(self.static, cache):
            array = value.numpy()
            arrays.append(array[:, :, :total] if static else array)
        return arrays

    def _buffer(self, batch: int, slots: int) -> Any:
        shape = [batch, self.cache_shape.kv_heads, slots, self.cache_shape.head_dim]
        return self._ort.OrtValue.ortvalue_from_shape_and_type(shape, self._cache_dtype, self.device, 0)

    def _grow(self, value: Any, used: int, total: int) -> Any:
        """A static buffer with room for `total` slots (at least double the old one), holding value's first `used`."""
        batch, heads, slots, dim = value.shape()
        buffer = self._buffer(batch, max(total, 2 * slots, MIN_CAPACITY))
        if used:  # update_inplace copies host memory into the buffer on its device
            grown = np.zeros(buffer.shape(), self._cache_dtype)
            grown[:, :, :used] = value.numpy()[:, :, :used]
            buffer.update_inplace(grown)
        return buffer


def shared_buffer_layers(model_path: str | Path, past_names: list[str], present_names: list[str]) -> list[bool]:
    """io.shared_buffer_layers over the graph of the .onnx file at `model_path` (external data not loaded)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    nodes = ((n.domain, n.op_type, list(n.input), list(n.output)) for n in graph.node)
    return io.shared_buffer_layers(nodes, past_names, present_names)


def cache_arrays(model: Any, cache: list[Any], total: int) -> list[np.ndarray]:
    """Any step model's cache as numpy arrays of the slots in use (`total` = the mask's width)."""
    if hasattr(model, "cache_arrays"):
        return model.cache_arrays(cache, total)
    return [np.asarray(value) for value in cache]


class InferStepModel:
    """Any runner with infer(feeds) -> dict (model I/O names of ARCHITECTURE.md); the cache is numpy."""

    def __init__(self, runner: Any, cache_shape: CacheShape) -> None:
        if not hasattr(runner, "infer"):
            raise TypeError(f"{type(runner).__name__} has no infer(feeds) method")
        self.runner = runner
        self.cache_shape = cache_shape

    def new_cache(self, batch: int, capacity: int | None = None) -> list[np.ndarray]:
        c = self.cache_shape
        return [io.empty_cache(batch, c.kv_heads, c.head_dim)] * (2 * c.num_layers)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
             cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        n = self.cache_shape.num_layers
        feeds = {
            io.INPUT_IDS: np.asarray(input_ids, np.int64),
            io.ATTENTION_MASK: np.asarray(attention_mask, np.int64),
            io.POSITION_IDS: np.asarray(position_ids, np.int64),
            **dict(zip((name for i in range(n) for name in io.past_names(i)), cache)),
        }
        out = self.runner.infer(feeds)
        presents = [np.asarray(out[name]) for i in range(n) for name in io.present_names(i)]
        return np.asarray(out[io.LOGITS], np.float32), presents


def _cache_names(inputs: list[str], outputs: list[str], where: str) -> tuple[list[str], list[str]]:
    """past_key_values.{i}.key/value inputs and present.{i}.key/value outputs, in layer order, checked to pair."""
    layers = sorted({at[0] for n in inputs if n.startswith(io.PAST) and (at := io.cache_layer(n))})
    past = [name for i in layers for name in io.past_names(i)]
    present = [name for i in layers for name in io.present_names(i)]
    missing = [n for n in past if n not in inputs] + [n for n in present if n not in outputs]
    if io.LOGITS not in outputs:
        missing.append(io.LOGITS)
    for name in (io.INPUT_IDS, io.ATTENTION_MASK):
        if name not in inputs:
            missing.append(name)
    if layers != list(range(len(layers))) or missing:
        raise MxportError(f"{where}: graph does not follow the model I/O contract; missing {missing or layers}")
    return past, present
