"""verify(): run an export and the NumPy reference model on the same inputs and compare every output.

    report = verify("out_dir")                        # checkpoint from out_dir/mxport.json
    report = verify("out_dir", checkpoint="ckpt", prompts=4, decode_steps=4, tolerances={"logits": 1e-3})
    bool(report); print(report); report.first_failing_layer; report.to_json()

What runs (all fixed by `seed`):

    prompts   N random token sequences, lengths spread from 3 to past the sliding window
    cases     "long":  the longest prompt alone, batch 1, no padding
              "batch": all N prompts in one left-padded batch (attention_mask 0 on the pads)
    per case  prefill, then `decode_steps` cached steps of one token; the next token is the reference's
              argmax, fed to both runners; each runner gets its *own* presents back as its past
    compared  logits (real positions only), present.{i}.key/value (real slots only), hidden_states.{i}
              (residual stream after layer i, real positions) when the export has them or they can be exposed

The loader -> runners -> comparator split follows Polygraphy: this module only builds inputs and collects
`compare()` reports; runners.py runs models, compare.py judges numbers; which modes are exact is the mode table's
(mxport.contract.modes.exact). CLI: mxport/commands/verify.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mxport.contract import io, modes
from mxport.contract.folder import MANIFEST_FILE, Manifest, model_path, read_manifest
from mxport.contract.progress import Progress, given
from mxport.errors import MxportError
from mxport.runtime.judge.compare import (
    FLOAT32_TOLERANCES,
    Tolerance,
    compare,
    resolve_tolerance,
)
from mxport.runtime.judge.report import MAX_FAILURE_LINES, CallResult, QuantizationError, VerifyReport  # noqa: F401
from mxport.runtime.oracle.quantized import Quantization
from mxport.runtime.execution.runners import (
    OrtRunner,
    ReferenceModelRunner,
    expose_hidden_states,
)

# Exact modes (the mode table, mxport.contract.modes.exact): every weight the export uses equals the checkpoint's
# after dequantization and the math is float32, so only summation order differs from the float32 reference.
# Lossy modes with float32 math are checked the same way against the reference on the export's own quantized
# numbers (runtime/oracle/quantized.py). LOSSY_TOLERANCES are for what the reference does not reproduce
# (float16 / bfloat16 math) and for `--reference checkpoint`.
LOSSY_TOLERANCES: dict[str, Tolerance] = {
    io.LOGITS: Tolerance(rel=5e-2, top1=0.9, kl_mean=1e-2),
    io.HIDDEN + "*": Tolerance(rel=5e-2),
    io.PRESENT + "*": Tolerance(rel=5e-2),
    "*": Tolerance(rel=5e-2),
}
# --dtype float16: the reference holds the export's float16-rounded numbers but computes in float32; what is left is
# float16 math (activations, KV cache and logits rounded to float16, unit roundoff 2^-11 ~ 4.9e-4, over every op of
# every layer). docs/VERIFY.md "float16" gives the measured error this bound is set from.
HALF_TOLERANCES: dict[str, Tolerance] = {
    io.LOGITS: Tolerance(rel=1e-2, top1=0.9, kl_mean=1e-3),
    io.HIDDEN + "*": Tolerance(rel=1e-2),
    io.PRESENT + "*": Tolerance(rel=1e-2),
    "*": Tolerance(rel=1e-2),
}
MIN_PROMPT = 3


REFERENCES = modes.VERIFY_REFERENCES


def encoded_experts(manifest: Manifest) -> bool:
    """Float experts encoded to MXFP4 at export (exporter/lower/experts_mxfp4.py records it in the lowering report)."""
    lowering = manifest.lowering
    return bool(lowering.get("applied", {}).get("experts_mxfp4", 0)) if isinstance(lowering, Mapping) else False


def quantization_of(manifest: Manifest, reference: str = "export") -> Quantization | None:
    """How the reference reproduces a lossy export's numbers, or None (exact export, float16/bfloat16 math, or
    reference="checkpoint"). MXFP4 experts that were not encoded at export are the checkpoint's own (exact)."""
    if reference not in REFERENCES:
        raise MxportError(f"--reference {reference!r}: expected one of {', '.join(REFERENCES)}")
    if reference == "checkpoint":
        return None
    stored_mxfp4 = manifest.checkpoint_experts == "mxfp4"  # recorded by gpt-oss-like families; others: float
    if manifest.checkpoint_experts is None and manifest.family == "gpt_oss":  # an older gpt-oss export
        stored_mxfp4 = not encoded_experts(manifest)
    return Quantization.of(manifest, checkpoint_mxfp4=stored_mxfp4)


def default_tolerances(manifest: Manifest, reference: str = "export") -> tuple[dict[str, Tolerance], str]:
    """(tolerances, mode label) for an export's dtype / experts / dense mode as recorded in mxport.json.

    An exact export (every part exact in the mode table) and a lossy one whose numbers the reference reproduces
    (quantization_of: quantized weights and activations, float32 math) get the float32 tolerances: the claim
    checked is the same, "the export computes what it holds". Float16/bfloat16 math is not reproduced: it is
    judged against the checkpoint with LOSSY_TOLERANCES, as is any lossy export with reference="checkpoint"."""
    dtype, experts, dense = manifest.dtype, manifest.experts, manifest.dense
    mode = f"dtype={dtype} experts={experts} dense={dense}"
    level = manifest.accuracy_level
    if level != 4 and (dense != "float32" or experts == "int4"):
        mode += f" accuracy_level={level}"
    encoded = encoded_experts(manifest)
    if not encoded and modes.exact(experts=experts, dense=dense, dtype=dtype):
        return dict(FLOAT32_TOLERANCES), mode + " (exact)"
    lossy = "lossy: float experts encoded to MXFP4 at export" if encoded else "lossy"
    q = quantization_of(manifest, reference)
    if q is not None and q.half:
        return dict(HALF_TOLERANCES), mode + f" ({lossy}; reference on the export's float16 numbers, float32 math)"
    if q is not None:
        return dict(FLOAT32_TOLERANCES), mode + f" ({lossy}; reference on the export's quantized numbers)"
    return dict(LOSSY_TOLERANCES), mode + f" ({lossy})"


def parse_budget(max_kl: float | None, min_top1: float | None) -> Tolerance | None:
    """The user's budget for the quantization error of a lossy export (`--max-kl`, `--min-top1`), or None."""
    if max_kl is not None and not (math.isfinite(max_kl) and max_kl >= 0):
        raise MxportError(f"--max-kl must be a finite number >= 0, found {max_kl}")
    if min_top1 is not None and not (0.0 <= min_top1 <= 1.0):
        raise MxportError(f"--min-top1 must lie in [0, 1], found {min_top1}")
    if max_kl is None and min_top1 is None:
        return None
    return Tolerance(kl_mean=max_kl, top1=min_top1)


def merge_tolerances(
    defaults: Mapping[str, Tolerance], overrides: Mapping[str, Tolerance | float] | None
) -> dict[str, Tolerance]:
    """Overrides go first (first match wins). A float overrides only `rel` of the default for that pattern,
    so `{"logits": 1e-3}` keeps the top-1 requirement."""
    merged: dict[str, Tolerance] = {}
    for pattern, tol in (overrides or {}).items():
        if not isinstance(tol, Tolerance):
            tol = dataclasses.replace(resolve_tolerance(pattern, defaults), rel=float(tol))
        merged[pattern] = tol
    for pattern, tol in defaults.items():
        merged.setdefault(pattern, tol)
    return merged


def parse_tolerance_options(specs: list[str] | None, defaults: Mapping[str, Tolerance]) -> dict[str, Tolerance]:
    """CLI `--tolerance OUTPUT=VALUE` (rel) or `OUTPUT:FIELD=VALUE` (FIELD in rel, abs, top1, kl_mean, kl_max);
    OUTPUT may be a glob (`hidden_states.*`). Later options refine earlier ones for the same OUTPUT."""
    fields = {f.name for f in dataclasses.fields(Tolerance)}
    out: dict[str, Tolerance] = {}
    for spec in specs or ():
        m = re.fullmatch(r"([^=:]+)(?::(\w+))?=(.+)", spec.strip())
        if not m:
            raise MxportError(f"--tolerance {spec!r}: expected OUTPUT=VALUE or OUTPUT:FIELD=VALUE (e.g. logits=1e-3)")
        pattern, fld, value = m.group(1), m.group(2) or "rel", m.group(3)
        if fld not in fields:
            raise MxportError(f"--tolerance {spec!r}: unknown field {fld!r}; expected one of {sorted(fields)}")
        try:
            number = float(value)
        except ValueError:
            raise MxportError(f"--tolerance {spec!r}: {value!r} is not a number") from None
        base = out.get(pattern) or resolve_tolerance(pattern, defaults)
        out[pattern] = dataclasses.replace(base, **{fld: number})
    return out


# ---- inputs ------------------------------------------------------------------------------------------------------
def make_prompts(cfg: Any, n: int, seed: int = 0, max_len: int | None = None) -> list[np.ndarray]:
    """`n` seeded random prompts (int64 ids), lengths spread evenly from 3 up to past the sliding window.

    The longest is `window + max(4, window // 8)` tokens when any layer slides (so cached decode crosses the
    window too), else 16; capped by `max_len` and max_position_embeddings."""
    if n < 1:
        raise MxportError(f"--prompts must be at least 1, found {n}")
    sliding = any(cfg.window(i) for i in range(cfg.num_hidden_layers))
    longest = cfg.sliding_window + max(4, cfg.sliding_window // 8) if sliding else 16
    longest = min(longest, max_len or longest, cfg.max_position_embeddings // 2)
    longest = max(longest, MIN_PROMPT)
    lengths = np.linspace(longest, MIN_PROMPT, n).round().astype(int) if n > 1 else np.array([longest])
    rng = np.random.default_rng(seed)
    return [rng.integers(0, cfg.vocab_size, size=int(L), dtype=np.int64) for L in lengths]


def left_pad(prompts: list[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ids [B, S_max] and attention_mask [B, S_max] (0 on the left pads)."""
    S = max(len(p) for p in prompts)
    ids = np.full((len(prompts), S), pad_id, np.int64)
    mask = np.zeros((len(prompts), S), np.int64)
    for b, p in enumerate(prompts):
        ids[b, S - len(p) :] = p
        mask[b, S - len(p) :] = 1
    return ids, mask


# ---- the run -----------------------------------------------------------------------------------------------------
def verify(
    export_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    prompts: int = 4,
    decode_steps: int = 4,
    seed: int = 0,
    tolerances: Mapping[str, Tolerance | float] | None = None,
    *,
    provider: str = "CPUExecutionProvider",
    threads: int | None = None,
    reference_dtype: Any = np.float32,
    max_prompt_len: int | None = None,
    per_layer: bool = True,
    reference: str = "export",
    budget: Tolerance | None = None,
    reference_experts: str | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Compare the export in `export_dir` (ONNX Runtime, `provider`) with the NumPy reference model of its
    checkpoint (recorded in mxport.json unless given). Raises MxportError on bad input; returns a VerifyReport
    that is falsy when a tolerance fails.

    A lossy export is checked against the reference on its own quantized numbers (reference="export", the
    default: runtime/oracle/quantized.py) with the float32 tolerances, and its quantization error against the
    checkpoint as stored (KL, top-1, relative error of the logits) is reported beside it; that error fails only
    against `budget` (Tolerance(kl_mean=, top1=): `--max-kl`, `--min-top1`). reference="checkpoint": the
    checkpoint as stored, with the lossy tolerances. reference_experts: the older spelling ("mxfp4" = "export",
    "float"/"float32" = "checkpoint"). progress("verify", layers done, layers to do, "layer") hears the reference
    model on the export's numbers, layer by layer over every call (the slow part; mxport.contract.progress)."""
    if reference_experts is not None:
        reference = "export" if reference_experts == "mxfp4" else "checkpoint"
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise MxportError(f"{export_dir}: no such export folder")
    model_path(export_dir)  # model.onnx must be there
    manifest = read_manifest(export_dir)
    if checkpoint is None:
        checkpoint = manifest.checkpoint
        if checkpoint is None:
            raise MxportError(
                f"{export_dir / MANIFEST_FILE}: no checkpoint path recorded; pass --checkpoint CKPT_DIR"
            )
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise MxportError(f"checkpoint {checkpoint}: no such folder (recorded in mxport.json or given with --checkpoint)")
    if decode_steps < 0:
        raise MxportError(f"--decode-steps must be >= 0, found {decode_steps}")
    defaults, mode = default_tolerances(manifest, reference)
    tols = merge_tolerances(defaults, tolerances)
    per_call = {p: dataclasses.replace(t, top1=None, kl_mean=None) for p, t in tols.items()}  # pooled later
    quantization = quantization_of(manifest, reference)

    ref_runner = ReferenceModelRunner(checkpoint, dtype=reference_dtype, hidden_states=True,
                                      window_cache=manifest.window_cache, quantization=quantization)
    cfg = ref_runner.cfg
    stored = None  # the checkpoint as stored, for the quantization error of a lossy export
    if quantization is not None:
        stored = ReferenceModelRunner(checkpoint, dtype=reference_dtype, hidden_states=False,
                                      window_cache=manifest.window_cache)
    _check_same_model(manifest, cfg, export_dir, checkpoint)
    ort_runner = OrtRunner(export_dir, provider=provider, threads=threads)
    report = VerifyReport(str(export_dir), str(checkpoint), mode, provider, [], decode_steps, tolerances=tols)
    report.checked = _what_was_checked(manifest, quantization, reference)
    if quantization is not None:
        report.quantization = QuantizationError(budget=budget)
    tmp = None
    try:
        if any(n.startswith(io.HIDDEN) for n in ort_runner.output_names):
            report.hidden_states_source = "export"
        elif per_layer:
            taps = quantization is not None and quantization.quantizes_activations
            tmp, exposed = _exposed_copy(export_dir, cfg.num_hidden_layers, report.notes, taps)
            if exposed is not None:
                try:
                    ort_runner = OrtRunner(exposed, provider=provider, threads=threads)
                    report.hidden_states_source = "exposed"
                except MxportError as exc:  # e.g. an output type shape inference could not tell
                    report.notes.append(f"per-layer hidden states unavailable: {exc}")
        prompt_set = make_prompts(cfg, prompts, seed, max_prompt_len)
        report.prompt_lengths = [len(p) for p in prompt_set]
        limit = cfg.position_limit  # learned positions (GPT-2): the last position must have an embedding row
        if limit and len(prompt_set[0]) + decode_steps > limit:
            raise MxportError(f"verify: a {len(prompt_set[0])}-token prompt + --decode-steps {decode_steps} passes "
                              f"this model's {limit} positions (n_positions); use fewer decode steps or "
                              f"--max-prompt-len")
        cases = [("long", [prompt_set[0]])]
        if len(prompt_set) > 1:
            cases.append(("batch", prompt_set))
        layers, calls = cfg.num_hidden_layers, len(cases) * (decode_steps + 1)
        if given(progress):  # the reference's layers, counted over every call
            ref_runner.model.progress = lambda _stage, done, _total, _unit="it": progress(
                "verify", len(report.calls) * layers + done, calls * layers, "layer")
        for case, group in cases:
            ids, mask = left_pad(group)
            runs = _run_case(ort_runner, ref_runner, cfg, ids, mask, decode_steps, per_call, stored, quantization,
                             report.notes, case)
            for step, (result, error) in enumerate(runs):
                report.calls.append(CallResult(case, step, result))
                if error is not None:
                    report.quantization.add(f"{case}/{'prefill' if step == 0 else f'decode{step}'}", error)
    finally:
        del ort_runner
        ref_runner.close()
        if stored is not None:
            stored.close()
        if tmp is not None:
            tmp.cleanup()
    return report


def _what_was_checked(manifest: Manifest, quantization: Quantization | None, reference: str) -> str:
    """One sentence: the claim verify checked."""
    if quantization is not None:
        tolerances = ("float16 tolerances (rel 1e-2: the export's float16 math is not reproduced)" if quantization.half
                      else "float32 tolerances")
        return ("ONNX Runtime on this export against the NumPy reference on the export's own quantized numbers ("
                + quantization.describe() + f"), {tolerances}; the quantization error against the checkpoint "
                "as stored is reported beside it (lossy, as asked)")
    if modes.exact(experts=manifest.experts, dense=manifest.dense, dtype=manifest.dtype) \
            and not encoded_experts(manifest):
        return ("ONNX Runtime on this export against the NumPy reference on the checkpoint, float32 tolerances "
                "(exact export)")
    if reference == "checkpoint":
        why = "--reference checkpoint"
    else:
        why = (f"dtype {manifest.dtype} math is not reproduced by the reference" if manifest.dtype != "float32" else
               f"experts {manifest.experts}, dense {manifest.dense} are not reproduced by the reference")
    return (f"ONNX Runtime on this export against the NumPy reference on the checkpoint as stored, lossy tolerances "
            f"({why})")


def _exposed_copy(export_dir: Path, num_layers: int, notes: list[str], taps: bool = False):
    """(TemporaryDirectory, model path) of a copy with hidden_states.{i} outputs (and tap/{value} outputs: the
    inputs of the matrix products, with `taps`), or (None, None) with a note.
    The copy hard-links the weights, so it must live on the export's file system: the system temp folder
    first, else a temporary sibling of the export folder; removed when verify ends."""
    errors = []
    for parent in (None, export_dir.resolve().parent):
        try:
            tmp = tempfile.TemporaryDirectory(prefix=".mxport-verify-", dir=parent)
        except OSError as exc:
            errors.append(str(exc))
            continue
        try:
            return tmp, expose_hidden_states(model_path(export_dir), Path(tmp.name), num_layers, taps)
        except MxportError as exc:
            tmp.cleanup()
            errors.append(str(exc))
            if "cannot hard-link" not in str(exc):
                break
    notes.append("per-layer hidden states unavailable: " + "; ".join(errors))
    return None, None


MAX_TIE_RETRIES = 8  # near-tie roundings tried the other way per round on a failing call (closest first)
MAX_TIE_FLIPS = 4  # rounds: ties rounded the other way at most, kept one at a time where they help most


def _retry_ties(reference, rounding, feeds, got, tols, masks):
    """(outputs, Report, {flipped tie: its distance in steps}) of the best run found by rounding near-ties the other
    way, or None if no flip lowers the error. Per round, each of the MAX_TIE_RETRIES closest ties of the best run so
    far not yet flipped is tried and the one with the smallest worst error kept; stops at a run that passes or after
    MAX_TIE_FLIPS rounds. Ties are numbered in the order a run meets them: a flip leaves earlier numbers alone."""
    def worst(report) -> float:
        return max((s.rel for s in report.outputs), default=0.0)

    ties = {t: d for d, t in rounding.ties}  # of the run that failed: tie number -> distance in steps
    best, flipped = None, {}  # best: (worst error, outputs, Report, flipped)
    for _ in range(MAX_TIE_FLIPS):
        tried = None
        for tie in sorted((t for t in ties if t not in flipped), key=ties.get)[:MAX_TIE_RETRIES]:
            rounding.start(flip=set(flipped) | {tie})
            out = reference.infer(feeds)
            report = compare(got, out, tols, masks=masks)
            if tried is None or worst(report) < tried[0]:
                tried = (worst(report), out, report, {**flipped, tie: ties[tie]}, {t: d for d, t in rounding.ties})
            if report:
                break
        if tried is None or (best is not None and tried[0] >= best[0]):
            break
        best, flipped, ties = tried[:4], tried[3], tried[4]
        if best[2]:
            break
    rounding.start()
    return None if best is None else best[1:]


def _run_case(ort_runner, reference, cfg, ids, mask, decode_steps, tols, stored=None, quantization=None,
              notes=None, case=""):
    """Prefill + cached decode steps; yields (compare() Report, quantization error Report or None) per call.
    `stored`: the reference on the checkpoint as stored, fed the same tokens; its logits against the reference's
    are the quantization error of a lossy export (no tolerance: judged later against the user's budget).

    With int8 activations (`quantization.quantizes_activations`) an activation within TIE_MARGIN (2e-3) of an int8
    step of a rounding tie may round the other way in the export (its float32 sums differ in the last bit): a
    call that fails is run again with such near-ties rounded the other way (_retry_ties: the closest first, one
    more per round where it helps most, at most MAX_TIE_FLIPS); a run that passes is kept and named in the notes.
    A wrong export fails every call whatever its ties round to."""
    feeds = io.make_feeds(ids, mask, cfg=cfg)
    ort_feeds = ref_feeds = stored_feeds = feeds
    rounding = quantization.rounding if quantization is not None and quantization.quantizes_activations else None
    for step in range(decode_steps + 1):
        got = ort_runner.infer({k: v for k, v in ort_feeds.items() if k in ort_runner.input_names})
        if rounding is not None:
            rounding.start()
            rounding.targets = {i: got[io.hidden_name(i)] for i in range(cfg.num_hidden_layers)
                                if io.hidden_name(i) in got}
            rounding.taps = {io.tapped(n): v for n, v in got.items() if io.tapped(n) is not None}
            rounding.fitted = []
        want = reference.infer(ref_feeds)
        if rounding is not None and rounding.fitted and notes is not None:
            flips = sum(n for _, n, _ in rounding.fitted)
            alone = sum(1 for _, n, _ in rounding.fitted if n == 0)
            notes.append(f"{case}/{'prefill' if step == 0 else f'decode{step}'}: {len(rounding.fitted)} token row(s) "
                         f"of the experts fitted to the export's hidden states: {alone} agree computed alone (a "
                         f"one-row product's float32 sums round their near-ties as the export's did), the others met "
                         f"{flips} int8 activation(s) at most {max(d for _, _, d in rounding.fitted):.1e} steps from "
                         "a rounding tie that the export rounded the other way; the reference rounded them so too")
        masks = _masks(got, ref_feeds[io.ATTENTION_MASK], ids.shape[1] if step == 0 else 1)
        result = compare(got, want, tols, masks=masks)
        if not result and rounding is not None and rounding.ties:
            retried = _retry_ties(reference, rounding, ref_feeds, got, tols, masks)
            if retried is not None and retried[1]:
                want, result, flipped = retried
                if notes is not None:
                    far = max(flipped.values())
                    notes.append(f"{case}/{'prefill' if step == 0 else f'decode{step}'}: {len(flipped)} int8 "
                                 f"activation(s) at most {far:.1e} steps from a rounding tie round the other way "
                                 "in the export; the reference rounded them so too and agrees")
        error = None
        if stored is not None:
            base = stored.infer(stored_feeds)
            error = compare(want, base, {"*": Tolerance()}, names=[io.LOGITS], masks=masks)
        yield result, error
        if step == decode_steps:
            break
        nxt = want[io.LOGITS][:, -1].argmax(-1)  # the reference's greedy choice, fed to all
        ort_feeds = io.step_feeds(got, nxt, ort_feeds[io.ATTENTION_MASK])
        ref_feeds = io.step_feeds(want, nxt, ref_feeds[io.ATTENTION_MASK])
        if stored is not None:
            stored_feeds = io.step_feeds(base, nxt, stored_feeds[io.ATTENTION_MASK])


def _masks(outputs: Mapping[str, np.ndarray], mask: np.ndarray, new: int) -> dict[str, np.ndarray]:
    """Real positions of this call ([B,S] for logits/hidden states) and real cache slots ([B,kv,T_i] for
    presents, T_i <= P+S: a window-sized cache holds the last T_i slots): pads are garbage in, garbage out on
    both sides and are not compared."""
    real = mask.astype(bool)  # [B, P+S]
    masks = {}
    for name, value in outputs.items():
        if name == io.LOGITS or io.hidden_layer(name) is not None or io.tapped(name) is not None:
            masks[name] = real[:, -new:]
        elif name.startswith(io.PRESENT):
            masks[name] = np.broadcast_to(real[:, None, real.shape[1] - value.shape[2] :], value.shape[:3])
    return masks


def _check_same_model(manifest: Manifest, cfg: Any, export_dir: Path, checkpoint: Path) -> None:
    """The recorded model config (if any) must describe the checkpoint's model."""
    from mxport.exporter import families

    if not manifest.config:
        return
    theirs = families.config_from_dict(manifest.config, str(export_dir / MANIFEST_FILE))
    keys = ("architecture", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim")
    diff = [f"{k}: export {getattr(theirs, k)} vs checkpoint {getattr(cfg, k)}" for k in keys
            if getattr(theirs, k) != getattr(cfg, k)]
    if diff:
        raise MxportError(f"{export_dir} was not exported from {checkpoint}: " + "; ".join(diff))
