"""What an export folder holds, read from model.onnx alone (external data is not loaded).

    s = summarize("out")       # Summary: ops, custom ops, functions, inputs/outputs, bytes by dtype, mxport.json
    print(format_summary(s))   # the text `mxport inspect OUT_DIR` prints (mxport/commands/inspect.py)

The text holds the op histogram (domain::op counts, main graph), the custom ops used and the model-local functions,
inputs/outputs with dtypes and shapes, and initializer bytes by dtype (from shapes, not from the data file).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from mxport.contract.folder import MODEL_FILE, manifest_dict, manifest_file, read_manifest
from mxport.errors import MxportError


@dataclass
class Summary:
    ops: Counter  # "domain::op" -> nodes in the main graph ("" domain written as "ai.onnx")
    custom_ops: list[str]  # "domain::op" outside the standard domain
    functions: list[str]  # "domain::name" of the model-local functions
    inputs: list[tuple[str, str, list]]  # (name, dtype, shape with symbolic dims as strings)
    outputs: list[tuple[str, str, list]]
    bytes_by_dtype: dict[str, int]  # initializer bytes per dtype name
    external_bytes: int  # bytes that live in external data files
    opset_imports: dict[str, int]
    meta: dict | None  # mxport.json, when present


def _dims(value_info: onnx.ValueInfoProto) -> list:
    shape = value_info.type.tensor_type.shape
    return [
        d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "?") for d in shape.dim
    ]


def _dtype_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower()


def _nbytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    bits = {onnx.TensorProto.FLOAT4E2M1: 4, onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(tensor.data_type)
    if bits:
        return (count * bits + 7) // 8
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def summarize(export_dir: str | Path) -> Summary:
    """Read `export_dir/model.onnx` without its external data. Raises MxportError if it is missing or invalid."""
    export_dir = Path(export_dir)
    path = export_dir / MODEL_FILE if export_dir.is_dir() else export_dir
    if not path.is_file():
        raise MxportError(f"inspect: {path} not found (expected an export folder with {MODEL_FILE})")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common type
        raise MxportError(f"inspect: {path} is not a readable ONNX model ({exc})") from None
    ops = Counter(f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in model.graph.node)
    bytes_by_dtype: Counter = Counter()
    external = 0
    for t in model.graph.initializer:
        n = _nbytes(t)
        bytes_by_dtype[_dtype_name(t.data_type)] += n
        external += n if t.data_location == onnx.TensorProto.EXTERNAL else 0
    return Summary(
        ops=ops,
        custom_ops=sorted(k for k in ops if not k.startswith("ai.onnx::")),
        functions=sorted(f"{f.domain}::{f.name}" for f in model.functions),
        inputs=[(v.name, _dtype_name(v.type.tensor_type.elem_type), _dims(v)) for v in model.graph.input],
        outputs=[(v.name, _dtype_name(v.type.tensor_type.elem_type), _dims(v)) for v in model.graph.output],
        bytes_by_dtype=dict(sorted(bytes_by_dtype.items(), key=lambda kv: -kv[1])),
        external_bytes=external,
        opset_imports={o.domain or "ai.onnx": o.version for o in model.opset_import},
        meta=manifest_dict(read_manifest(path)) if manifest_file(path).is_file() else None,
    )


def _io_lines(rows: list[tuple[str, str, list]], limit: int = 8) -> list[str]:
    """One line per I/O; long runs of per-layer cache names are elided in the middle."""
    lines = [f"  {name:<32} {dtype:<8} [{', '.join(map(str, dims))}]" for name, dtype, dims in rows]
    if len(lines) > 2 * limit:
        lines = lines[:limit] + [f"  ... {len(lines) - 2 * limit + 1} more ..."] + lines[-limit + 1 :]
    return lines


def _options_text(meta: dict, shared: dict) -> str:
    """The export options that change how the model is fed or what it costs (only those that were recorded).
    `shared`: _shared_fields of the recorded config."""
    parts = []
    if meta.get("dense", "float32") != "float32":
        parts.append(f"dense={meta['dense']}")
    if "accuracy_level" in meta and meta["accuracy_level"] != 4:
        parts.append(f"accuracy_level={meta['accuracy_level']}")
    if meta.get("last_logits"):
        parts.append("logits=last position")
    if "window_cache" in meta:
        window = shared.get("sliding_window")
        parts.append(f"sliding caches=last {window - 1} slots" if meta["window_cache"] and window else
                     "caches=every slot")
    return "".join(f" {p}" for p in parts)


SHARED = ("num_hidden_layers", "hidden_size", "vocab_size", "sliding_window")


def _shared_fields(cfg: dict | None) -> dict:
    """num_hidden_layers / hidden_size / vocab_size / sliding_window of a recorded config, whatever the family
    calls them; a config its family's parser refuses (a broken mxport.json) shows its raw values, no window."""
    from mxport.exporter import families

    try:
        parsed = families.config_from_dict(cfg) if cfg else None
    except MxportError:
        parsed = None
    if parsed is None:
        return {k: cfg.get(k) for k in SHARED[:3]} if isinstance(cfg, dict) else {}
    return {k: getattr(parsed, k) for k in SHARED}


def format_summary(s: Summary) -> str:
    out = []
    if s.meta:
        shared = _shared_fields(s.meta.get("config"))  # the family's own spellings (GPT-2's n_layer) read by its parser
        family = f"family={s.meta['family']} " if "family" in s.meta else ""
        out.append(
            f"export: {family}target={s.meta.get('target')} experts={s.meta.get('experts')} "
            f"dtype={s.meta.get('dtype')} layers={shared.get('num_hidden_layers')} hidden={shared.get('hidden_size')} "
            f"vocab={shared.get('vocab_size')}" + _options_text(s.meta, shared)
        )
    out.append("opsets: " + ", ".join(f"{d} {v}" for d, v in sorted(s.opset_imports.items())))
    out.append(f"ops ({sum(s.ops.values())} nodes):")
    out += [f"  {count:6d}  {op}" for op, count in sorted(s.ops.items(), key=lambda kv: (-kv[1], kv[0]))]
    out.append("custom ops: " + (", ".join(s.custom_ops) or "none"))
    out.append("functions: " + (", ".join(s.functions) or "none"))
    out.append(f"inputs ({len(s.inputs)}):")
    out += _io_lines(s.inputs)
    out.append(f"outputs ({len(s.outputs)}):")
    out += _io_lines(s.outputs)
    total = sum(s.bytes_by_dtype.values())
    out.append(f"initializers: {total / 1e6:.3f} MB ({s.external_bytes / 1e6:.3f} MB external)")
    out += [
        f"  {dtype:<10} {n / 1e6:12.3f} MB  {100 * n / max(total, 1):5.1f}%" for dtype, n in s.bytes_by_dtype.items()
    ]
    return "\n".join(out)
