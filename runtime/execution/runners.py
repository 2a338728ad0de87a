"""Runners: one interface over everything that can run a model (Polygraphy's loaders -> runners -> comparator).

    runner = OrtRunner("out_dir")                       # ONNX Runtime session over out_dir/model.onnx
    runner = OnnxReferenceRunner("out_dir")             # onnx.reference, custom ops by mxport.ops.reference_kernels()
    runner = OnnxReferenceRunner("out_dir", kernels=False)   # ... custom ops by their ONNX function bodies only
    runner = ReferenceModelRunner("ckpt_dir")           # the NumPy reference model on the checkpoint itself

    feeds = make_feeds(ids, mask, cfg=cfg)              # first step: empty past [B, kv, 0, D]
    out = runner.infer(feeds)                           # {"logits": ..., "present.0.key": ..., ...}
    feeds = step_feeds(out, next_ids, feeds["attention_mask"])   # next step: presents become the past

Every runner speaks the model I/O names of docs/ARCHITECTURE.md ("Model I/O"); outputs come back as float32
numpy arrays whatever the graph's I/O dtype (float16 I/O is cast at the boundary).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from mxport.errors import MxportError
from mxport.folders import read_manifest  # noqa: F401  (re-exported: the manifest's one reader)
from mxport.runtime.execution.session import mxport_options, resolve_provider

MODEL_FILE = "model.onnx"
# The residual stream after layer i, as the families' graph wiring names it (exporter/families/gpt_oss/graph.py, exporter/families/qwen3/graph.py)
RESIDUAL_NAMES = ("layers.{i}/moe_residual", "layers.{i}/mlp_residual")
MANIFEST = "mxport.json"


@runtime_checkable
class Runner(Protocol):
    """Anything with `infer(feeds) -> outputs`, named as in ARCHITECTURE.md "Model I/O"."""

    name: str
    input_names: list[str]
    output_names: list[str]

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


# ---- locating an export ----------------------------------------------------------------------------------------
def model_path(export_dir_or_model: str | os.PathLike) -> Path:
    """`dir/model.onnx` for an export folder, or the .onnx file itself; MxportError naming the path otherwise."""
    p = Path(export_dir_or_model)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise MxportError(f"{p}: no such ONNX model (expected an export folder holding {MODEL_FILE}, or an .onnx file)")
    return p


# ---- ONNX Runtime ----------------------------------------------------------------------------------------------
_ORT_NP = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class OrtRunner:
    """An ONNX Runtime InferenceSession over an export folder (or a model.onnx path)."""

    def __init__(
        self,
        export_dir_or_model_path: str | os.PathLike,
        provider: str = "CPUExecutionProvider",
        threads: int | None = None,
        *,
        session_options: Any = None,
    ) -> None:
        import onnxruntime as ort

        self.path = model_path(export_dir_or_model_path)
        provider = resolve_provider(provider)  # short names (cpu, cuda, auto) too, one error for all commands
        so = mxport_options(session_options or ort.SessionOptions())
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=[provider])
        except Exception as exc:  # ORT raises its own types (Fail, InvalidGraph, ...)
            raise MxportError(f"{self.path}: onnxruntime cannot load the model: {exc}") from exc
        self.name = f"onnxruntime[{provider.removesuffix('ExecutionProvider')}]"
        self.provider = provider
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = list(self._inputs)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        feeds = _check_feeds(self.name, feeds, self.input_names)
        cast = {}
        for name, value in feeds.items():
            want = _ORT_NP.get(self._inputs[name].type)
            cast[name] = value if want is None or value.dtype == want else value.astype(want)
        names = list(output_names or self.output_names)
        values = self.session.run(names, cast)
        return {n: _as_f32(v) for n, v in zip(names, values)}


# ---- onnx.reference --------------------------------------------------------------------------------------------
class OnnxReferenceRunner:
    """onnx.reference.ReferenceEvaluator over the exported graph: the pure-Python "numpy backend" of an export.

    kernels=True runs the ai.mxport nodes with mxport.ops.reference_kernels() (NumPy); kernels=False runs their ONNX
    function bodies (the model-local functions stored in model.onnx), which checks the bodies themselves.
    Loads the whole model into memory: meant for tiny models and tests."""

    def __init__(self, export_dir_or_model_path: str | os.PathLike, kernels: bool = True) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        self.path = model_path(export_dir_or_model_path)
        try:
            model = onnx.load(str(self.path), load_external_data=True)
        except Exception as exc:
            raise MxportError(f"{self.path}: onnx cannot load the model: {exc}") from exc
        new_ops = None
        if kernels:
            from mxport import ops

            new_ops = ops.reference_kernels()
        self.evaluator = ReferenceEvaluator(model, new_ops=new_ops)
        self.name = "onnx.reference" + ("+kernels" if kernels else "[functions]")
        self.input_names = list(self.evaluator.input_names)
        self.output_names = list(self.evaluator.output_names)
        self._input_types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}

    def infer(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        import onnx

        feeds = _check_feeds(self.name, feeds, self.input_names)
        cast = {}
        for name, value in feeds.items():
            want = onnx.helper.tensor_dtype_to_np_dtype(self._input_types[name])
            cast[name] = value if value.dtype == want else value.astype(want)
        names = list(output_names or self.output_names)
        values = self.evaluator.run(names, cast)
        return {n: _as_f32(v) for n, v in zip(names, values)}


# ---- the NumPy reference model ---------------------------------------------------------------------------------
class ReferenceModelRunner:
    """runtime.reference_model.ReferenceModel on a checkpoint folder, as a runner (hidden_states.{i} included
    when `hidden_states`; `window_cache` as the export it stands for: read it from mxport.json)."""

    def __init__(self, checkpoint_dir: Any, dtype: Any = np.float32, *, hidden_states: bool = True,
                 window_cache: bool = False, experts: str = "float") -> None:
        from mxport.runtime.oracle.model import ReferenceModel

        self.model = ReferenceModel(checkpoint_dir, dtype=dtype, output_hidden_states=hidden_states,
                                    window_cache=window_cache, experts=experts)
        self.cfg = self.model.cfg
        self.name = f"reference[{np.dtype(dtype).name}]"
        n = self.cfg.num_hidden_layers
        kv = [f"{i}.{t}" for i in range(n) for t in ("key", "value")]
        self.input_names = ["input_ids", "attention_mask", "position_ids", *(f"past_key_values.{s}" for s in kv)]
        self.output_names = ["logits", *(f"present.{s}" for s in kv)]
        if hidden_states:
            self.output_names += [f"hidden_states.{i}" for i in range(n)]

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = _check_feeds(self.name, feeds, self.input_names, required=("input_ids",))
        return self.model.infer(feeds)

    def close(self) -> None:
        self.model.close()


# ---- per-layer outputs for exports without them -------------------------------------------------------------
def expose_hidden_states(model: str | os.PathLike, out_dir: str | os.PathLike, num_layers: int) -> Path:
    """A copy of `model` (an .onnx path) in `out_dir` with outputs `hidden_states.{i}` added, i < num_layers.

    The residual stream after layer i is the value the exporter names `layers.{i}/moe_residual` or
    `layers.{i}/mlp_residual` (RESIDUAL_NAMES; lowering keeps
    that name when it fuses the Add into SkipSimplifiedLayerNormalization); failing that, the value computed
    last by the nodes named `layers.{i}/...` among those used outside layer i, if an Add computes it.
    Only the graph is copied (external data is not loaded); the data files are hard-linked next to the copy
    (so `out_dir` must be on the same file system as the export).
    Raises MxportError when a layer's residual cannot be identified."""
    import onnx

    src = Path(model)
    proto = onnx.load(str(src), load_external_data=False)
    graph = proto.graph
    graph_outputs = {o.name for o in graph.output}
    if any(o.startswith("hidden_states.") for o in graph_outputs):
        raise MxportError(f"{src}: already has hidden_states outputs")
    def layer(node_name: str) -> int | None:
        head = node_name.split("/", 1)[0]
        return int(head[len("layers."):]) if head.startswith("layers.") and head[len("layers."):].isdigit() else None

    produced: dict[str, tuple[int, int | None, str]] = {}  # value -> (node index, layer, op type)
    used_outside: set[str] = set()
    for idx, node in enumerate(graph.node):
        li = layer(node.name)
        for name in node.input:
            made = produced.get(name)
            if made is not None and made[1] != li:
                used_outside.add(name)
        for name in node.output:
            produced[name] = (idx, li, node.op_type)
    new_outputs, new_nodes = [], []
    for i in range(num_layers):
        value = next((v for v in (n.format(i=i) for n in RESIDUAL_NAMES) if v in produced), RESIDUAL_NAMES[0].format(i=i))
        if value not in produced:  # not the exporter's naming: the last Add of layer i that leaves the layer
            candidates = [
                (idx, v) for v, (idx, li, op) in produced.items()
                if li == i and v in used_outside and v not in graph_outputs
            ]
            if not candidates or produced[max(candidates)[1]][2] != "Add":
                raise MxportError(
                    f"{src}: cannot find the residual stream after layer {i} (no value {value!r}, and the last "
                    f"value of the nodes 'layers.{i}/...' used by later nodes is not an Add)"
                )
            value = max(candidates)[1]
        out = f"hidden_states.{i}"
        # A Cast, not an Identity: half-precision exports carry a float16 residual, and the comparison is in float32.
        new_nodes.append(onnx.helper.make_node("Cast", [value], [out], name=f"verify/{out}", to=onnx.TensorProto.FLOAT))
        new_outputs.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    graph.node.extend(new_nodes)
    graph.output.extend(new_outputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    locations = {
        entry.value
        for init in graph.initializer
        for entry in init.external_data
        if entry.key == "location"
    }
    for loc in locations:  # ONNX Runtime refuses data outside the model's folder, symlinks resolved: hard links
        link = out_dir / loc
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link((src.parent / loc).resolve(), link)
            except OSError as exc:
                raise MxportError(f"cannot hard-link {src.parent / loc} into {out_dir}: {exc}") from exc
    dst = out_dir / src.name
    onnx.save_model(proto, str(dst))
    return dst


# ---- feeds -----------------------------------------------------------------------------------------------------
def position_ids(mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """Positions of the last `new_tokens` slots of `mask` [B, P+S]: cumsum(mask) - 1 clipped at 0."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, mask.shape[1] - new_tokens :].astype(np.int64)


def past_length(past: Mapping[str, np.ndarray]) -> int:
    """Past slots the attention_mask must cover: the longest layer cache (sliding layers with a window-sized
    cache hold fewer; the model checks each layer against the mask)."""
    return max((v.shape[2] for k, v in past.items() if k.startswith("past_key_values.")), default=0)


def make_feeds(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    past: Mapping[str, np.ndarray] | Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    *,
    cfg: Any,
) -> dict[str, np.ndarray]:
    """Feeds for one call: input_ids [B,S], attention_mask [B,P+S] (default all ones), position_ids, and the past
    per layer: given as {past_key_values.{i}.key: ...}, as [(key, value)] per layer, or None = empty
    [B, kv_heads, 0, head_dim] float32 tensors (first step)."""
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise MxportError(f"input_ids: expected integers of shape [B,S], found {ids.dtype} {ids.shape}")
    B, S = ids.shape
    n = cfg.num_hidden_layers
    if past is None:
        empty = np.zeros((B, cfg.num_key_value_heads, 0, cfg.head_dim), np.float32)
        past_feeds = {f"past_key_values.{i}.{t}": empty for i in range(n) for t in ("key", "value")}
    elif isinstance(past, Mapping):
        past_feeds = {f"past_key_values.{i}.{t}": past[f"past_key_values.{i}.{t}"] for i in range(n) for t in ("key", "value")}
    else:
        if len(past) != n:
            raise MxportError(f"past: expected {n} (key, value) pairs, found {len(past)}")
        past_feeds = {f"past_key_values.{i}.{t}": kv[j] for i, kv in enumerate(past) for j, t in enumerate(("key", "value"))}
    P = past_length(past_feeds)
    mask = np.ones((B, P + S), np.int64) if attention_mask is None else np.asarray(attention_mask, np.int64)
    if mask.ndim != 2 or mask.shape[0] != B or mask.shape[1] < P + S:
        raise MxportError(f"attention_mask: expected shape [B, P+S] = {(B, P + S)}, found {mask.shape}")
    return {
        "input_ids": ids.astype(np.int64),
        "attention_mask": mask,
        "position_ids": position_ids(mask, S),
        **past_feeds,
    }


def step_feeds(
    prev_outputs: Mapping[str, np.ndarray], next_ids: np.ndarray, mask: np.ndarray
) -> dict[str, np.ndarray]:
    """Feeds for the next cached decode call: `present.{i}.*` of the previous call become `past_key_values.{i}.*`,
    `mask` (the previous call's attention_mask [B, P+S]) gets a 1 per new token, positions continue."""
    ids = np.asarray(next_ids, np.int64)
    if ids.ndim == 1:
        ids = ids[:, None]
    past = {k.replace("present.", "past_key_values.", 1): v for k, v in prev_outputs.items() if k.startswith("present.")}
    if not past:
        raise MxportError("step_feeds: the previous outputs have no present.{i}.key/value to use as the cache")
    B, S = ids.shape
    mask = np.concatenate([np.asarray(mask, np.int64), np.ones((B, S), np.int64)], axis=1)
    P = past_length(past)
    if mask.shape[1] < P + S:
        raise MxportError(f"step_feeds: mask covers {mask.shape[1] - S} past slots but the cache holds {P}")
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask, S), **past}


def _check_feeds(
    who: str, feeds: Mapping[str, np.ndarray], input_names: Sequence[str], required: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    unknown = sorted(set(feeds) - set(input_names))
    if unknown:
        raise MxportError(f"{who}: unknown feeds {unknown[:4]}; the model's inputs are {list(input_names)[:4]}...")
    missing = [n for n in (input_names if required is None else required) if n not in feeds]
    if missing:
        raise MxportError(f"{who}: missing feeds {missing[:4]}")
    return {k: np.asarray(v) for k, v in feeds.items()}


def _as_f32(v: Any) -> np.ndarray:
    v = np.asarray(v)
    return v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) and v.dtype != np.float32 else v
