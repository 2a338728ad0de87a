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

Refusals, each one MxportError naming the file, tensor or option: a weight holding NaN or infinity (checked as
ir.save reads it, so there is no second pass; `allow_non_finite=True` exports it and records that in mxport.json),
a tokenizer.json that is not JSON or that `tokenizers` cannot load (checked before anything is built), an output
that is a dangling symbolic link, and a write that fails (a full disk: the temporary folder is removed). Scratch
folders a killed export of the same output left beside it are removed first (mxport.files.remove_stale).

Options: the mode table (mxport.contract.modes). CLI: mxport/commands/export.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import onnx_ir as ir

from mxport import __version__
from mxport.contract.folder import DATA_FILE, MODEL_FILE, TOKENIZER_FILE, TOKENIZER_FILES, Manifest, write_manifest
from mxport.contract.modes import DEFAULT_ACCURACY_LEVEL, DEFAULT_EXPERTS, check
from mxport.contract.progress import Progress, given
from mxport.errors import MxportError
from mxport.files import read_json, remove_stale, replace_dir, temp_dir_beside
from mxport.exporter import decoder_graph
from mxport.exporter.genai_config import write_genai_files
from mxport.exporter.layers import DOMAIN

TOKENIZER_MAX_BYTES = 256 << 20  # tokenizer.json files reach tens of MB (Gemma 3: 33 MB)
SIZE_THRESHOLD = 256  # initializers larger than this many bytes go to the data file (ir.save's default)
# How weight matrices are stored in the portable graph: bf16 bytes + Cast to float32 (exact; see docs/EXPORT.md).
# Names used across mxport: "matrix storage" (this), "--dense" (the form of the linear layers outside the experts,
# a column of the mode table, mxport/contract/modes.py), "float experts" (experts that are not MXFP4), "model
# without experts" (a family without experts; mxport.json records experts "none").
MATRIX_STORAGE = "bfloat16"


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
          last_logits: bool = False, accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
          progress: Progress | None = None) -> ir.Model:
    """The seam for exporter/lower: rewrite the portable model for a target. Identity for the portable defaults.

    The values are the mode table's (mxport.contract.modes), checked there."""
    if target == "portable" and dtype == "float32" and dense == "float32" and not last_logits and (
            experts == "float32" or (experts == "mxfp4" and not float_experts(model))):
        return model  # nothing to rewrite: experts as stored
    from mxport.exporter import lower as lowering

    return lowering.lower(model, target=target, experts=experts, dtype=dtype, dense=dense, last_logits=last_logits,
                          accuracy_level=accuracy_level, progress=progress)


FLOAT_EXPERT_OPS = ("MoE", "MoE_2")  # ai.mxport MoE ops with float expert weights (MoEMXFP4*: MXFP4 ones)


def float_experts(model: ir.Model) -> bool:
    """Whether the graph's MoE layers hold float experts (which --experts mxfp4 encodes at export)."""
    return any(n.domain == DOMAIN and n.op_type in FLOAT_EXPERT_OPS for n in model.graph)


def resolve_experts(experts: str | None, target: str, model: ir.Model) -> str:
    """The --experts value to use: the target's default (modes.DEFAULT_EXPERTS; portable keeps float experts as stored:
    'float32'), or the one asked for, refused where it cannot hold."""
    has_float = float_experts(model)
    if experts is None:
        return "float32" if target == "portable" and has_float else DEFAULT_EXPERTS[target]
    has_moe = any(n.domain == DOMAIN and n.op_type.startswith("MoE") for n in model.graph)
    if experts == "float32" and target == "portable" and has_moe and not has_float:
        raise MxportError("export: --experts float32 on --target portable keeps a checkpoint's float experts as "
                          "stored, and this checkpoint's experts are MXFP4 (use --experts mxfp4, or --target cpu with "
                          "float32 | int8 | int4)")
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


def _save_callback(model: ir.Model, progress: Progress | None):
    """ir.save's per-tensor callback: progress("write", bytes done, bytes total, "B") (mxport.contract.progress)."""
    if not given(progress):
        return None
    sizes = [v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None]
    total = sum(n for n in sizes if n > SIZE_THRESHOLD)  # the tensors ir.save writes to the data file
    done = 0

    def callback(tensor, info) -> None:
        nonlocal done
        done += tensor.nbytes
        progress("write", min(done, total), total, "B")

    return callback


def _check_out_dir(out_dir: Path, force: bool, checkpoint_dir: Path) -> None:
    if out_dir.is_symlink() and not out_dir.exists():
        raise MxportError(f"export: output {out_dir} is a symbolic link to {os.readlink(out_dir)}, which does not "
                          "exist (or loops): remove the link or point it at a folder")
    try:
        ckpt, out = checkpoint_dir.resolve(), out_dir.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop further up
        raise MxportError(f"export: cannot resolve the output {out_dir} ({exc})") from None
    if out == ckpt or out in ckpt.parents:
        raise MxportError(f"export: output {out_dir} would replace the checkpoint folder {checkpoint_dir}")
    if out_dir.exists() and not out_dir.is_dir():
        raise MxportError(f"export: output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise MxportError(f"export: output directory {out_dir} is not empty (use --force / force=True to replace it)")


def check_tokenizer_files(checkpoint_dir: Path) -> None:
    """The tokenizer files export copies, checked first: each JSON one a JSON object within the size limit, and
    tokenizer.json loadable by `tokenizers` (what every runner of the export folder loads). MxportError naming
    the file."""
    for name in TOKENIZER_FILES:
        file = checkpoint_dir / name
        if not name.endswith(".json") or not file.is_file():
            continue
        data = read_json(file, max_bytes=TOKENIZER_MAX_BYTES, what="tokenizer file",
                         source=f"{file}: broken tokenizer file")
        if not isinstance(data, dict):
            raise MxportError(f"{file}: broken tokenizer file: expected a JSON object, found "
                              f"{type(data).__name__}")
        if name == TOKENIZER_FILE:
            from tokenizers import Tokenizer

            try:
                Tokenizer.from_file(str(file))
            except Exception as exc:  # tokenizers raises its own Exception type for files it cannot load
                detail = " ".join(str(exc).split())
                raise MxportError(f"{file}: the tokenizers library cannot load it ({detail:.200})") from None


def _cause(exc: BaseException) -> BaseException:
    """The MxportError or OSError under an exception: ir.save wraps what a lazy tensor raised in SerdeErrors."""
    seen = exc
    while not isinstance(seen, (MxportError, OSError)) and seen.__cause__ is not None:
        seen = seen.__cause__
    return seen if isinstance(seen, (MxportError, OSError)) else exc


def _write_error(exc: OSError, out_dir: Path) -> MxportError:
    """One line for a failed write (the temporary folder is already gone)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return MxportError(f"export: no space left on the device of {out_dir.parent} while writing {out_dir} "
                           f"({exc.strerror or exc}); the partial export was removed")
    return MxportError(f"export: cannot write {out_dir}: {exc.strerror or exc}"
                       + (f" ({exc.filename})" if exc.filename else "") + "; the partial export was removed")


# ---- the API --------------------------------------------------------------------------------------------------
def export(
    checkpoint_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    target: str = "portable",
    experts: str | None = None,
    dtype: str = "float32",
    progress: Progress | None = None,
    hidden_states: bool = False,
    force: bool = False,
    dense: str = "float32",
    last_logits: bool = False,
    window_cache: bool = True,
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    allow_non_finite: bool = False,
) -> Path:
    """Export the checkpoint at `checkpoint_dir` into `out_dir`; returns out_dir. Raises MxportError on bad input.

    target / experts / dense / dtype / accuracy_level: the mode table's values (mxport.contract.modes, checked by
    its `check`). `experts=None` takes the target's default (modes.DEFAULT_EXPERTS): the fastest exact form that
    target's kernels run; float experts stay as stored on portable ("float32"); "mxfp4" on float experts encodes
    them (lossy).
    `progress(stage, done, total, unit)` (mxport.contract.progress) hears the lowering rules' rewrites (the
    quantizing ones take longest) and the bytes written.
    `window_cache`: sliding-window layers keep only their last W-1 cache slots (layers.window_masks); False
    keeps every slot in every layer's cache (one cache length for all layers).
    `accuracy_level` (cpu): of the quantized GEMMs, ORT's meaning: 4 = int8 activations (fast), 0 = float32.
    `allow_non_finite`: export weights holding NaN or infinity instead of refusing them (recorded in mxport.json)."""
    from mxport.exporter.checkpoint import open_checkpoint

    modes = check(target=target, experts=experts, dense=dense, dtype=dtype, accuracy_level=accuracy_level)
    target, dense, dtype = modes.target, modes.dense, modes.dtype
    experts = None if experts is None else modes.experts
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    _check_out_dir(out_dir, force, checkpoint_dir)
    check_tokenizer_files(checkpoint_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(out_dir)  # what a killed export of this output left
    except OSError as exc:
        raise MxportError(f"export: cannot create the output's folder {out_dir.parent} ({exc.strerror})") from None
    with open_checkpoint(checkpoint_dir, check_finite=not allow_non_finite) as ckpt:
        model = build_portable(ckpt, hidden_states=hidden_states, window_cache=window_cache)
        experts = resolve_experts(experts, target, model)
        has_experts = any(n.domain == DOMAIN and n.op_type.startswith("MoE") for n in model.graph)
        model = lower(model, target=target, experts=experts, dtype=dtype, dense=dense, last_logits=last_logits,
                      accuracy_level=accuracy_level, progress=progress)
        lowering_report = model.metadata_props.get("mxport.lowering")  # exporter/lower: rewrites, refusals
        # a model without experts (a dense family) records "none": --experts has nothing to act on; last_logits
        # what the lowering did (a refused head keeps all positions: the report names it)
        last_logits = last_logits and bool(lowering_report and json.loads(lowering_report).get("last_logits"))
        options = dict(target=target, experts=experts if has_experts else "none", dtype=dtype, hidden_states=hidden_states, dense=dense,
                       last_logits=last_logits, window_cache=window_cache, accuracy_level=accuracy_level,
                       allow_non_finite=allow_non_finite)
        meta = _manifest(ckpt, checkpoint_dir, model, **options,
                         lowering=json.loads(lowering_report) if lowering_report else None)
        try:
            tmp = temp_dir_beside(out_dir)
        except OSError as exc:
            raise MxportError(f"export: cannot create a temporary folder beside {out_dir} ({exc.strerror})") \
                from None
        try:
            ir.save(model, tmp / MODEL_FILE, external_data=DATA_FILE, size_threshold_bytes=SIZE_THRESHOLD,
                    callback=_save_callback(model, progress))
            write_manifest(tmp, meta)
            for name in TOKENIZER_FILES:
                if (checkpoint_dir / name).is_file():
                    shutil.copyfile(checkpoint_dir / name, tmp / name)
            write_genai_files(tmp, ckpt.config, meta, model)  # genai_config.json: onnxruntime-genai runs the folder
            replace_dir(tmp, out_dir)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            cause = _cause(exc)
            if isinstance(cause, OSError):
                raise _write_error(cause, out_dir) from None
            if isinstance(cause, MxportError):
                raise cause from None
            raise
    return out_dir
