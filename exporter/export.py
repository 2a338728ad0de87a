"""`export()`: a checkpoint folder of any family -> an export folder (model.onnx + model.onnx.data, mxport.json,
tokenizer, genai_config.json).

    checkpoint ──open_checkpoint──► build (decoder_graph.build + the family's wiring: portable ir.Model, lazy weights)
                                       │
                                       ▼
                                    lower(model, target, experts, dtype)      exporter/lower (only when asked)
                                       │
                                       ▼
                                    save: ir.save streams the weights tensor by tensor into model.onnx.data,
                                          inside a temporary sibling folder renamed onto out_dir at the end

Memory: every weight is an ir.LazyTensor that reads its one tensor from the checkpoint (mmap) when ir.save
writes it, so peak RSS stays near the largest tensor whatever the model size. Identical input gives identical
bytes (names, node order and the external data layout depend on the checkpoint only).

CLI: `mxport export CKPT_DIR -o OUT_DIR [--target T] [--experts E] [--dtype D] [--force] [--hidden-states]
[--no-progress]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import onnx_ir as ir

from mxport import __version__
from mxport.contract.folder import DATA_FILE, MODEL_FILE, TOKENIZER_FILES, Manifest, read_manifest, write_manifest
from mxport.errors import MxportError
from mxport.files import replace_dir, temp_dir_beside
from mxport.exporter import decoder_graph
from mxport.exporter.genai_config import write_genai_files
from mxport.exporter.layers import DOMAIN

SIZE_THRESHOLD = 256  # initializers larger than this many bytes go to the data file (ir.save's default)
# How weight matrices are stored in the portable graph: bf16 bytes + Cast to float32 (exact; see docs/EXPORT.md).
# Names used across mxport: "matrix storage" (this), "--dense" (the form of the linear layers outside the experts:
# float32, bf16 as stored (LinearBF16), int8 / int4 (ORT's MatMulNBits) or q4 (mxport's LinearQ4)), "float experts"
# (experts that are not MXFP4), "dense model" (a family without experts).
MATRIX_STORAGE = "bfloat16"


def _lowering():
    """exporter/lower (imported on first use): its TARGETS, EXPERTS, DTYPES, ACCURACY_LEVELS and `lower()`."""
    from mxport.exporter import lower

    return lower


def _options() -> dict[str, tuple[str, ...]]:
    lower = _lowering()
    known = {"target": ("portable",), "experts": ("mxfp4",), "dtype": ("float32",)}
    for option, attr in (("target", "TARGETS"), ("experts", "EXPERTS"), ("dtype", "DTYPES")):
        known[option] += tuple(v for v in getattr(lower, attr) if v not in known[option])
    return known


def _validate(target: str, experts: str, dtype: str) -> None:
    for option, value in (("target", target), ("experts", experts), ("dtype", dtype)):
        allowed = _options()[option]
        if value not in allowed:
            raise MxportError(f"export: unknown {option} {value!r}; expected one of {', '.join(allowed)}")


# ---- the steps ------------------------------------------------------------------------------------------------
def build_portable(ckpt, *, hidden_states: bool = False, storage: str = MATRIX_STORAGE,
                   window_cache: bool = True) -> ir.Model:
    """The portable graph (opset 23 + ai.mxport 1) with the ai.mxport function bodies attached."""
    b, inputs, outputs = decoder_graph.build(ckpt, storage=storage, hidden_states=hidden_states, window_cache=window_cache)
    return b.model(inputs, outputs, name=ckpt.family.name, functions=_functions(b))


def _functions(b) -> list[ir.Function]:
    """ai.mxport function bodies for every custom op the graph uses (mxport.ops.functions())."""
    from mxport import ops

    used = sorted({n.op_type for n in b.nodes if n.domain == DOMAIN})
    protos = ops.functions(used=set(used))
    have = {p.name for p in protos if p.domain == DOMAIN}
    if missing := [op for op in used if op not in have]:
        raise MxportError(
            f"export: custom ops {', '.join(f'{DOMAIN}::{m}' for m in missing)} have no function body "
            "in mxport.ops.functions() (ops/ not complete?)"
        )
    for p in protos:  # the bodies may use other opsets (e.g. the standard one at a different version)
        for opset in p.opset_import:
            if opset.domain not in b.opsets:
                b.use_domain(opset.domain, opset.version)
    return [ir.serde.deserialize_function(p) for p in protos]


def lower(model: ir.Model, *, target: str, experts: str, dtype: str, dense: str = "float32",
          last_logits: bool = False, accuracy_level: int = 4) -> ir.Model:
    """The seam for exporter/lower: rewrite the portable model for a target. Identity for the portable defaults.

    dense: "float32" (MatMul, exact) or a quantized form for dense weights that exporter/lower offers (DENSE)."""
    if target == "portable" and dtype == "float32" and dense == "float32" and not last_logits and (
            experts == "float" or (experts == "mxfp4" and not float_experts(model))):
        return model  # nothing to rewrite: experts as stored
    lowering = _lowering()
    extra = {"dense": dense} if dense != "float32" else {}
    if last_logits:
        extra["last_logits"] = True
    if accuracy_level != 4:
        extra["accuracy_level"] = accuracy_level
    return lowering.lower(model, target=target, experts=experts, dtype=dtype, **extra)


FLOAT_EXPERT_OPS = ("MoE", "MoE_2")  # ai.mxport MoE ops with float expert weights (MoEMXFP4*: MXFP4 ones)


def float_experts(model: ir.Model) -> bool:
    """Whether the graph's MoE layers hold float experts (which --experts mxfp4 encodes at export)."""
    return any(n.domain == DOMAIN and n.op_type in FLOAT_EXPERT_OPS for n in model.graph)


def resolve_experts(experts: str | None, target: str, model: ir.Model) -> str:
    """The --experts value to use: the target's default (DEFAULT_EXPERTS; portable keeps float experts as stored:
    'float'), or the one asked for, refused where it cannot hold."""
    has_float = float_experts(model)
    if experts is None:
        return "float" if target == "portable" and has_float else DEFAULT_EXPERTS.get(target, "mxfp4")
    has_moe = any(n.domain == DOMAIN and n.op_type.startswith("MoE") for n in model.graph)
    if experts == "float" and has_moe and not has_float:
        raise MxportError("export: --experts float keeps a checkpoint's float experts, and this checkpoint's experts "
                          "are MXFP4 (use --experts mxfp4, or --target cpu with fp32 | int8 | int4)")
    return experts


def _manifest(ckpt, checkpoint_dir: Path, model: ir.Model, **options) -> Manifest:
    cfg = ckpt.config
    return Manifest(
        mxport_version=__version__,
        checkpoint=str(checkpoint_dir.resolve()),
        family=ckpt.family.name,
        layout=ckpt.layout,
        config=ckpt.family.config_to_dict(cfg),
        **options,
        matrix_storage=MATRIX_STORAGE,
        checkpoint_experts=("mxfp4" if cfg.experts_mxfp4 else "float (float32 experts, ai.mxport.MoE)")
        if hasattr(cfg, "experts_mxfp4") else None,
        opset_imports=dict(sorted(model.opset_imports.items())),
        inputs=tuple(v.name for v in model.graph.inputs),
        outputs=tuple(v.name for v in model.graph.outputs),
        eos_token_ids=tuple(cfg.eos_token_ids),
        pad_token_id=cfg.pad_token_id,
    )


class _Progress:
    """A one-line progress bar on stderr, fed by ir.save's per-tensor callback."""

    def __init__(self, model: ir.Model, enabled: bool) -> None:
        self.enabled = enabled
        sizes = [v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None]
        self.total = sum(n for n in sizes if n > SIZE_THRESHOLD)  # the tensors ir.save writes to the data file
        self.done, self.start = 0, time.monotonic()

    def __call__(self, tensor, info) -> None:
        if not self.enabled:
            return
        self.done += tensor.nbytes
        frac = self.done / max(self.total, 1)
        bar = "#" * int(30 * frac)
        sys.stderr.write(
            f"\rexport [{bar:<30}] {info.index + 1}/{info.total} tensors "
            f"{self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB {time.monotonic() - self.start:.0f}s"
        )
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _check_out_dir(out_dir: Path, force: bool, checkpoint_dir: Path) -> None:
    ckpt, out = checkpoint_dir.resolve(), out_dir.resolve()
    if out == ckpt or out in ckpt.parents:
        raise MxportError(f"export: output {out_dir} would replace the checkpoint folder {checkpoint_dir}")
    if out_dir.exists() and not out_dir.is_dir():
        raise MxportError(f"export: output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise MxportError(f"export: output directory {out_dir} is not empty (use --force / force=True to replace it)")


# Expert format when none is asked for: keep MXFP4 where a kernel runs it (portable function bodies, CUDA's fp4
# QMoE); on CPU, ORT has no MXFP4 kernel, and float32 (com.microsoft.MoE) is its one exact expert format. A
# checkpoint with float experts exports them as stored on portable ("float", resolve_experts); --experts mxfp4
# encodes them at export (lossy; exporter/lower/experts_mxfp4.py).
DEFAULT_EXPERTS = {"portable": "mxfp4", "cpu": "fp32", "cuda": "mxfp4"}


# ---- the API --------------------------------------------------------------------------------------------------
def export(
    checkpoint_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    target: str = "portable",
    experts: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
    hidden_states: bool = False,
    force: bool = False,
    dense: str = "float32",
    last_logits: bool = False,
    window_cache: bool = True,
    accuracy_level: int = 4,
) -> Path:
    """Export the checkpoint at `checkpoint_dir` into `out_dir`; returns out_dir. Raises MxportError on bad input.

    `experts=None` takes the target's default (DEFAULT_EXPERTS): the fastest exact form that target's kernels run;
    float experts stay as stored on portable ("float"); "mxfp4" on float experts encodes them (lossy).
    `window_cache`: sliding-window layers keep only their last W-1 cache slots (layers.window_masks); False
    keeps every slot in every layer's cache (one cache length for all layers).
    `accuracy_level` (cpu): of the quantized GEMMs, ORT's meaning: 4 = int8 activations (fast), 0 = float32."""
    from mxport.exporter.checkpoint import open_checkpoint

    _validate(target, DEFAULT_EXPERTS.get(target, "mxfp4") if experts is None else experts, dtype)
    if accuracy_level not in _lowering().ACCURACY_LEVELS:  # exporter/lower's own list
        raise MxportError(f"export: --accuracy-level must be 0..4 (ORT's accuracy_level), found {accuracy_level}")
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    _check_out_dir(out_dir, force, checkpoint_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open_checkpoint(checkpoint_dir) as ckpt:
        model = build_portable(ckpt, hidden_states=hidden_states, window_cache=window_cache)
        experts = resolve_experts(experts, target, model)
        has_experts = any(n.domain == DOMAIN and n.op_type.startswith("MoE") for n in model.graph)
        model = lower(model, target=target, experts=experts, dtype=dtype, dense=dense, last_logits=last_logits,
                      accuracy_level=accuracy_level)
        # a model without experts (a dense family) records "none": --experts has nothing to act on
        options = dict(target=target, experts=experts if has_experts else "none", dtype=dtype, hidden_states=hidden_states, dense=dense,
                       last_logits=last_logits, window_cache=window_cache, accuracy_level=accuracy_level)
        lowering_report = model.metadata_props.get("mxport.lowering")  # exporter/lower: rewrites, refusals
        meta = _manifest(ckpt, checkpoint_dir, model, **options,
                         lowering=json.loads(lowering_report) if lowering_report else None)
        tmp = temp_dir_beside(out_dir)
        try:
            bar = _Progress(model, progress)
            ir.save(
                model, tmp / MODEL_FILE, external_data=DATA_FILE, size_threshold_bytes=SIZE_THRESHOLD, callback=bar
            )
            bar.finish()
            write_manifest(tmp, meta)
            for name in TOKENIZER_FILES:
                if (checkpoint_dir / name).is_file():
                    shutil.copyfile(checkpoint_dir / name, tmp / name)
            write_genai_files(tmp, ckpt.config, meta, model)  # genai_config.json: onnxruntime-genai runs the folder
            replace_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out_dir


# ---- CLI ------------------------------------------------------------------------------------------------------
def register(parser: argparse.ArgumentParser) -> None:
    options = _options()
    parser.add_argument("checkpoint", metavar="CKPT_DIR", help="checkpoint folder (config.json + *.safetensors)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="export folder to write")
    parser.add_argument("--target", default="portable", help=f"one of {', '.join(options['target'])}")
    parser.add_argument("--experts", default=None,
                        help=f"one of {', '.join(options['experts'])} (default: "
                        + ", ".join(f"{t} {e}" for t, e in DEFAULT_EXPERTS.items())
                        + "; float experts (Qwen3-MoE): portable float, as stored; mxfp4 encodes them, lossy)")
    parser.add_argument("--dtype", default="float32", help=f"one of {', '.join(options['dtype'])}")
    parser.add_argument("--dense", default="float32",
                        help="dense weights: float32 (exact) | bf16 (ai.mxport.LinearBF16 on the stored bf16, exact; --target cpu) | "
                        "int8 | int4 (MatMulNBits; needs --target cpu/cuda) | q4 (ai.mxport.LinearQ4, 4 bits in "
                        "super-blocks, mxport's fastest int4 decode; --target cpu)")
    parser.add_argument("--last-logits", action="store_true",
                        help="logits of the last position only, [B,1,V] (faster prefill for generation)")
    parser.add_argument("--accuracy-level", type=int, default=4, metavar="N",
                        help="CPU quantized GEMMs (int4 experts, --dense int8/int4), ORT's meaning: 4 = int8 "
                        "activations (fast, default), 0 = float32 activations (more exact, less memory, slower)")
    parser.add_argument("--full-cache", action="store_true",
                        help="sliding-window layers keep every cache slot (default: only the last window-1, "
                        "as transformers does; the full-attention layers always keep all)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    parser.add_argument("--hidden-states", action="store_true", help="add outputs hidden_states.{i} per layer")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    out = export(
        args.checkpoint,
        args.output,
        target=args.target,
        experts=args.experts,
        dtype=args.dtype,
        progress=not args.no_progress,
        hidden_states=args.hidden_states,
        force=args.force,
        dense=args.dense,
        last_logits=args.last_logits,
        window_cache=not args.full_cache,
        accuracy_level=args.accuracy_level,
    )
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"exported {args.checkpoint} -> {out} ({size / 1e6:.1f} MB, {time.monotonic() - start:.1f}s)")
    lowering = read_manifest(out).lowering or {}
    refused = lowering.get("refused", [])
    reasons = Counter((r["rule"], r["reason"]) for r in refused)  # lowering rules that left nodes portable
    for (rule, reason), count in sorted(reasons.items()):
        what = "attention node(s) keep rotary outside GroupQueryAttention" if rule == "rotary_in_attention" \
            else f"node(s) kept portable by {rule}"
        print(f"note: {count} {what}: {reason}", file=sys.stderr)
    for rule, op_type in (("linear_bf16", "LinearBF16"), ("linear_q4", "LinearQ4")):
        if lowering.get("applied", {}).get(rule):
            print(f"note: {op_type} runs natively in mxport's sessions; for onnxruntime-genai on this machine run "
                  f"`mxport kernels --into {out}` (without it the function body runs, at float32 speed)",
                  file=sys.stderr)
    return 0
