"""Runners: one interface over everything that can run a model (Polygraphy's loaders -> runners -> comparator).

    runner = OrtRunner("out_dir")                       # ONNX Runtime session over out_dir/model.onnx
    runner = OnnxReferenceRunner("out_dir")             # onnx.reference, custom ops by mxport.ops.reference_kernels()
    runner = OnnxReferenceRunner("out_dir", kernels=False)   # ... custom ops by their ONNX function bodies only
    runner = ReferenceModelRunner("ckpt_dir")           # the NumPy reference model on the checkpoint itself
    runner = ReferenceModelRunner("ckpt_dir", quantization=q)   # ... on a lossy export's numbers (oracle/quantized.py)

    out = runner.infer(make_feeds(ids, mask, cfg=cfg))  # {"logits": ..., "present.0.key": ..., ...}
    hidden = expose_hidden_states(model, tmp, layers)   # a copy of an export with hidden_states.{i} outputs

Every runner speaks the model I/O contract (mxport/contract/io.py: names, make_feeds / step_feeds); outputs come
back as float32 numpy arrays whatever the graph's I/O dtype (float16 I/O is cast at the boundary).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mxport.contract import io
from mxport.contract.folder import model_path
from mxport.errors import MxportError
from mxport.runtime.execution.step_model import mxport_options, resolve_provider


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
    """runtime.oracle.model.ReferenceModel on a checkpoint folder, as a runner (hidden_states.{i} included
    when `hidden_states`; `window_cache` as the export it stands for: read it from mxport.json)."""

    def __init__(self, checkpoint_dir: Any, dtype: Any = np.float32, *, hidden_states: bool = True,
                 window_cache: bool = False, experts: str = "float", quantization: Any = None) -> None:
        from mxport.runtime.oracle.model import ReferenceModel

        self.model = ReferenceModel(checkpoint_dir, dtype=dtype, output_hidden_states=hidden_states,
                                    window_cache=window_cache, experts=experts, quantization=quantization)
        self.cfg = self.model.cfg
        self.name = f"reference[{np.dtype(dtype).name}]"
        n = self.cfg.num_hidden_layers
        self.input_names = [io.INPUT_IDS, io.ATTENTION_MASK, io.POSITION_IDS,
                            *(name for i in range(n) for name in io.past_names(i))]
        self.output_names = [io.LOGITS, *(name for i in range(n) for name in io.present_names(i))]
        if hidden_states:
            self.output_names += [io.hidden_name(i) for i in range(n)]

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = _check_feeds(self.name, feeds, self.input_names, required=(io.INPUT_IDS,))
        return self.model.infer(feeds)

    def close(self) -> None:
        self.model.close()


# ---- per-layer outputs for exports without them -------------------------------------------------------------
def expose_hidden_states(model: str | os.PathLike, out_dir: str | os.PathLike, num_layers: int,
                         taps: bool = False) -> Path:
    """A copy of `model` (an .onnx path) in `out_dir` with outputs `hidden_states.{i}` added, i < num_layers,
    and with `taps`, tap/{value} for each input of a matrix product the graph names as the contract does
    (io.LAYER_TAPS per layer, io.FINAL_NORM; those a family's graph lacks are left out).

    The residual stream after layer i is the value the exporter names `layers.{i}/residual` (io.residual_name;
    older exports: io.OLDER_RESIDUALS; lowering keeps
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
    if any(io.hidden_layer(o) is not None for o in graph_outputs):
        raise MxportError(f"{src}: already has hidden_states outputs")
    scopes = {io.layer_scope(i): i for i in range(num_layers)}

    def layer(node_name: str) -> int | None:
        return scopes.get(node_name.split("/", 1)[0])

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
    exposed: list[tuple[str, str]] = []  # (value, output name), in order: each layer's residual and taps, the head's
    for i in range(num_layers):
        value = next((v for v in (io.residual_name(i, role) for role in (io.RESIDUAL, *io.OLDER_RESIDUALS))
                      if v in produced), io.residual_name(i))
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
        exposed.append((value, io.hidden_name(i)))
        if taps:
            exposed += [(v, io.tap_name(v)) for v in (io.tap_value(i, role) for role in io.LAYER_TAPS) if v in produced]
    if taps and io.FINAL_NORM in produced:
        exposed.append((io.FINAL_NORM, io.tap_name(io.FINAL_NORM)))
    for value, out in exposed:
        # A Cast, not an Identity: half-precision exports carry float16 values; the comparison is in float32.
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
