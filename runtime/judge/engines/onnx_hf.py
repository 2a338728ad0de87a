"""`--engine onnx`: any HF-style decoder ONNX under ONNX Runtime, with no mxport metadata: `input_ids`,
`attention_mask`, `position_ids` (optional), `past_key_values.N.key/value` [B, kv_heads, P, head_dim] -> `logits`,
`present.N.key/value` (the optimum, onnxruntime-genai builder and transformers.js conventions, found from the graph's
I/O; `--engine-io OURS=THEIRS` names what differs). An optimum merged decoder's `use_cache_branch` is fed too.
The graph's own presents are its next past; the mask grows one column per token, positions continue.

Per layer: where the graph carries mxport's residual names (`layers.{i}/residual`, an mxport export), a temporary
copy with hidden_states.{i} outputs is run (runners.expose_hidden_states); other graphs give logits only.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mxport.contract import io
from mxport.contract.folder import MANIFEST_FILE, MODEL_FILE
from mxport.errors import MxportError
from mxport.runtime.judge.engines import Engine, Step

# ops whose numbers are not float32 math on float32 weights (quantized weights or activations)
QUANTIZED_OPS = {"MatMulNBits", "QMoE", "MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "DequantizeLinear",
                 "GatherBlockQuantized", "MatMulBnb4", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "LinearQ4",
                 "LinearInt8", "QuantizeLinear"}
PRESENT_FORMS = (io.PRESENT + "%d.", "present_key_values.%d.")


def folder_lossy(model_file: Path) -> str | None:
    """Why a model's numbers are not float32 math on the checkpoint: from mxport.json's mode where mxport made the
    folder (exact modes hold the checkpoint's own bytes: MXFP4, bf16), else from the graph (graph_lossy)."""
    folder = model_file.parent
    if (folder / MANIFEST_FILE).is_file():
        from mxport.contract import modes
        from mxport.contract.folder import read_manifest
        from mxport.runtime.judge.verify import encoded_experts

        m = read_manifest(folder)
        if modes.exact(experts=m.experts, dense=m.dense, dtype=m.dtype) and not encoded_experts(m):
            return None
        return f"mxport export dtype={m.dtype} experts={m.experts} dense={m.dense} (lossy in mxport's mode table)"
    return graph_lossy(model_file)


def graph_lossy(model_file: Path) -> str | None:
    """Why a graph's numbers are not float32 math on float32 weights (its quantized ops, half-precision weights or
    I/O), or None; read without the weights."""
    import onnx

    try:
        proto = onnx.load(str(model_file), load_external_data=False)
    except Exception as exc:
        raise MxportError(f"{model_file}: onnx cannot read the model: {exc}") from exc
    g = proto.graph
    ops = sorted({n.op_type for n in g.node if n.op_type in QUANTIZED_OPS})
    half = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}
    halves = {t.name: half[t.data_type] for t in g.initializer if t.data_type in half and len(t.dims) >= 2}
    # half-precision weights only widened (Cast to float) compute what they hold; read by any other op, the math is
    # half precision
    weights = sorted({halves[i] for n in g.node if n.op_type != "Cast" for i in n.input if i in halves})
    io_half = sorted({half[v.type.tensor_type.elem_type] for v in (*g.input, *g.output)
                      if v.type.tensor_type.elem_type in half})
    why = ([f"quantized ops {', '.join(ops)}"] if ops else []) + ([f"{'/'.join(weights)} weights"] if weights else []) \
        + ([f"{'/'.join(io_half)} I/O"] if io_half else [])
    return "; ".join(why) or None


class OnnxEngine(Engine):
    def __init__(self, target: Path, cfg: Any, *, threads: int | None = None, io_names: dict[str, str],
                 provider: str = "CPUExecutionProvider", max_tokens: int = 256) -> None:
        super().__init__(name="onnx", target=str(target))
        from mxport.runtime.execution.runners import OrtRunner, expose_hidden_states

        self.path = _model_file(target)
        self.cfg = cfg
        self.lossy = folder_lossy(self.path)
        runner = OrtRunner(self.path, provider=provider, threads=threads)
        self.names = _resolve(runner.input_names, runner.output_names, io_names, cfg.num_hidden_layers, self.path)
        self._tmp = None
        try:
            self._tmp = tempfile.TemporaryDirectory(prefix=".mxport-engine-", dir=self.path.parent)
            exposed = expose_hidden_states(self.path, Path(self._tmp.name), cfg.num_hidden_layers)
            runner = OrtRunner(exposed, provider=provider, threads=threads)
            self.per_layer = "exposed (the graph's layers.{i}/residual values)"
        except (MxportError, OSError) as exc:
            why = "no layers.{i}/residual values (mxport's names)" if "cannot find the residual" in str(exc) else exc
            self.notes.append(f"per-layer hidden states unavailable: {why}; logits only")
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
        self.runner = runner
        shapes = {i.name: i.shape for i in runner.session.get_inputs()}
        key_shape = shapes[self.names["past"][0][0]]
        kv, dim = cfg.num_key_value_heads, cfg.head_dim
        if len(key_shape) != 4 or any(isinstance(d, int) and d != w for d, w in ((key_shape[1], kv), (key_shape[3], dim))):
            raise MxportError(f"{self.path}: input {self.names['past'][0][0]!r} has shape {key_shape}; expected "
                              f"[batch, {kv} kv heads, past, {dim}] (the checkpoint's cache layout)")
        from mxport.runtime.execution.step_model import shared_buffer_layers

        # a past read and a present written by one GroupQueryAttention alone (the genai builder's graphs, mxport's
        # --target cpu): GQA's shared-buffer mode, which a sliding window needs; its buffer holds every slot
        static = shared_buffer_layers(self.path, [k for k, _ in self.names["past"]],
                                      [k for k, _ in self.names["present"]])
        empty, full = np.zeros((1, kv, 0, dim), np.float32), np.zeros((1, kv, max_tokens + 1, dim), np.float32)
        self._empty = [(full, full) if shared else (empty, empty) for shared in static]
        if any(static):
            self.notes.append(f"{sum(static)} of {len(static)} layers' caches are GroupQueryAttention shared buffers "
                              f"of {max_tokens + 1} slots (past = present)")
        self.describe = f"onnxruntime {_ort_version()} on {self.path} ({provider})"
        self._past: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._length = 0

    def _call(self, ids: np.ndarray) -> Step:
        n = self.names
        S, P = len(ids), self._length
        past = self._past or self._empty
        feeds = {n["input_ids"]: np.asarray(ids, np.int64)[None]}
        if n["attention_mask"]:
            feeds[n["attention_mask"]] = np.ones((1, P + S), np.int64)
        if n["position_ids"]:
            feeds[n["position_ids"]] = np.arange(P, P + S, dtype=np.int64)[None]
        if n["use_cache_branch"]:
            feeds[n["use_cache_branch"]] = np.array([P > 0])
        for (k_name, v_name), (k, v) in zip(n["past"], past):
            feeds[k_name], feeds[v_name] = k, v
        out = self.runner.infer(feeds)
        self._past = [(out[k], out[v]) for k, v in n["present"]]
        self._length = P + S
        logits = out[n["logits"]]
        logits = logits.reshape(-1, logits.shape[-1])
        if logits.shape[0] != S:
            if logits.shape[0] != 1:
                raise MxportError(f"{self.path}: {n['logits']!r} has {logits.shape[0]} rows for {S} tokens")
            self.logits_source = "last position of each call (the graph returns only those)"
        hidden = {i: out[io.hidden_name(i)][0] for i in range(self.cfg.num_hidden_layers)
                  if io.hidden_name(i) in out} or None
        return Step(logits, hidden)

    def reset(self) -> None:
        self._past, self._length = None, 0

    def close(self) -> None:
        self.runner = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _model_file(target: Path) -> Path:
    """The .onnx file itself, or the folder's model.onnx, else its only .onnx file."""
    if target.is_file():
        return target
    if not target.is_dir():
        raise MxportError(f"{target}: no such ONNX model or folder")
    if (target / MODEL_FILE).is_file():
        return target / MODEL_FILE
    found = sorted(target.glob("*.onnx"))
    if len(found) != 1:
        raise MxportError(f"{target}: expected {MODEL_FILE} or exactly one .onnx file, found "
                          f"{[f.name for f in found] or 'none'}")
    return found[0]


def _resolve(inputs: list[str], outputs: list[str], given: dict[str, str], layers: int, path: Path) -> dict[str, Any]:
    """The graph's names for the contract's: given ones first (`--engine-io`), else found by convention."""
    def pick(ours: str, names: list[str], required: bool) -> str | None:
        theirs = given.get(ours, ours)
        if theirs == "-":
            return None
        if theirs in names:
            return theirs
        if required or ours in given:
            raise MxportError(f"{path}: no {'input' if names is inputs else 'output'} {theirs!r} (the graph has "
                              f"{names[:8]}); name it with --engine-io {ours}=NAME")
        return None

    def per_layer(kind: str, names: list[str], forms: tuple[str, ...]) -> list[tuple[str, str]]:
        patterns = [(given.get(f"{kind}%d.key", f + "key"), given.get(f"{kind}%d.value", f + "value")) for f in forms]
        for kp, vp in patterns:
            if kp and vp and all(kp % i in names and vp % i in names for i in range(layers)):
                return [(kp % i, vp % i) for i in range(layers)]
        found = sorted({int(m.group(1)) for n in names for m in [re.search(r"(\d+)", n)] if m and "key" in n})
        raise MxportError(f"{path}: expected {layers} layers of {patterns[0][0]} / {patterns[0][1]} "
                          f"(found per-layer names for layers {found[:8]}); name them with --engine-io "
                          f"{kind}%d.key=NAME.%d.key")

    names = {
        "input_ids": pick(io.INPUT_IDS, inputs, True),
        "attention_mask": pick(io.ATTENTION_MASK, inputs, False),
        "position_ids": pick(io.POSITION_IDS, inputs, False),
        "logits": pick(io.LOGITS, outputs, True),
        "use_cache_branch": "use_cache_branch" if "use_cache_branch" in inputs else None,
        "past": per_layer(io.PAST, inputs, (io.PAST + "%d.",)),
        "present": per_layer(io.PRESENT, outputs, PRESENT_FORMS),
    }
    known = {v for k, v in names.items() if isinstance(v, str)} | {n for kv in names["past"] for n in kv}
    unknown = [n for n in inputs if n not in known]
    if unknown:
        raise MxportError(f"{path}: inputs {unknown[:4]} are not model I/O verify can feed (input_ids, "
                          "attention_mask, position_ids, past_key_values.N.key/value, use_cache_branch); map them "
                          "with --engine-io")
    return names
