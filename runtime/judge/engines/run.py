"""verify_engine(): another engine and the NumPy reference model on the same token ids, compared per call and per
position (`mxport verify --engine NAME TARGET CHECKPOINT`; the engines: runtime/judge/engines/__init__.py).

    report = verify_engine("genai", "folder", "ckpt")            # EngineReport, truthy when within tolerance
    report = verify_engine("gguf", "m.gguf", "ckpt", budget=Tolerance(kl_mean=1e-2))
    print(report); report.to_json(); report.first_diverging()

What runs: verify's prompt set (make_prompts: the same seeded random ids, lengths from 3 to past the sliding window),
each prompt alone (batch 1: engines hold their own cache), prefill then `decode_steps` cached steps of one token, the
next token the reference's argmax, fed to both. No text round trip: the engine gets the ids. Compared per call:
logits (every position the engine returns) and hidden_states.{i} where the engine exposes them; per position: the
relative error (max |a-b| / max |b| over the vocabulary), KL(reference || engine) and top-1 agreement.

Verdict (the semantics of verify for mxport's own exports): an engine that claims float32 math on the checkpoint's
weights is held to the float32 tolerances (rel <= 1e-4, top-1 = 1). A lossy engine (quantized weights or
activations, half precision: `Engine.lossy` says why) cannot be reproduced by the reference: its error against the
checkpoint is reported (QuantizationError) and fails only against the user's budget (--max-kl, --min-top1); without
one it passes with "lossy, no budget given". A NaN or inf fails either way. A tokenizer that encodes the check
texts differently from the checkpoint's tokenizer.json is reported apart and does not change the verdict.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mxport.contract import io
from mxport.contract.progress import Progress, given
from mxport.errors import MxportError
from mxport.runtime.judge.compare import FLOAT32_TOLERANCES, Tolerance, compare, kl_divergence
from mxport.runtime.judge.engines import Engine, open_engine
from mxport.runtime.judge.engines.report import EngineReport, check_tokenizer
from mxport.runtime.judge.report import CallResult, QuantizationError
from mxport.runtime.judge.verify import make_prompts, merge_tolerances, parse_tolerance_options

LOSSY_REPORTED = {io.LOGITS: Tolerance(), io.HIDDEN + "*": Tolerance(), "*": Tolerance()}  # reported, not judged


def verify_engine(
    name: str,
    target: str | os.PathLike,
    checkpoint: str | os.PathLike,
    *,
    prompts: int = 4,
    decode_steps: int = 4,
    seed: int = 0,
    tolerances: Mapping[str, Tolerance | float] | None = None,
    tolerance_specs: list[str] | None = None,
    threads: int | None = None,
    io_names: dict[str, str] | None = None,
    budget: Tolerance | None = None,
    max_prompt_len: int | None = None,
    reference_dtype: Any = np.float32,
    provider: str = "CPUExecutionProvider",
    progress: Progress | None = None,
) -> EngineReport:
    """Run engine `name` on `target` and the NumPy reference on `checkpoint`; see the module docstring.
    tolerances: as verify's (overrides first); tolerance_specs: `--tolerance` strings, read against the defaults
    of the engine's kind (known once it is open)."""
    from mxport.runtime.execution.runners import ReferenceModelRunner

    checkpoint, target = Path(checkpoint), Path(target)
    if not checkpoint.is_dir():
        raise MxportError(f"checkpoint {checkpoint}: no such folder")
    if not target.exists():
        raise MxportError(f"{target}: no such file or folder (the --engine {name} model)")
    if decode_steps < 0:
        raise MxportError(f"--decode-steps must be >= 0, found {decode_steps}")
    ref = ReferenceModelRunner(checkpoint, dtype=reference_dtype, hidden_states=True)
    cfg = ref.cfg
    prompt_set = make_prompts(cfg, prompts, seed, max_prompt_len)
    limit = cfg.position_limit
    if limit and len(prompt_set[0]) + decode_steps > limit:
        raise MxportError(f"verify: a {len(prompt_set[0])}-token prompt + --decode-steps {decode_steps} passes this "
                          f"model's {limit} positions; use fewer decode steps or --max-prompt-len")
    engine: Engine | None = None
    try:
        engine = open_engine(name, target, cfg,
                             threads=threads, io_names=io_names, max_tokens=len(prompt_set[0]) + decode_steps,
                             provider=provider)
        lossy = engine.lossy
        defaults = LOSSY_REPORTED if lossy else {k: v for k, v in FLOAT32_TOLERANCES.items()
                                                 if not k.startswith(io.PRESENT)}
        # `--tolerance` specs refine the defaults of the engine's kind (float32, or lossy: reported)
        tols = merge_tolerances(defaults, {**parse_tolerance_options(tolerance_specs, defaults), **(tolerances or {})})
        per_call = {p: dataclasses.replace(t, top1=None, kl_mean=None) for p, t in tols.items()}
        mode = f"{name} ({'lossy: ' + lossy if lossy else 'claims float32 math on the checkpoint: exact'})"
        report = EngineReport(str(target), str(checkpoint), mode, engine.describe, [len(p) for p in prompt_set],
                              decode_steps, tolerances=tols)
        report.engine, report.lossy = name, lossy
        report.checked = (f"{name} against the NumPy reference on the checkpoint, "
                          + (f"lossy ({lossy}): its error is reported and fails only against a budget you give "
                             "(--max-kl, --min-top1)" if lossy else "float32 tolerances"))
        report.quantization = QuantizationError(budget=budget) if lossy else None
        report.hidden_states_source = engine.per_layer
        calls = len(prompt_set) * (decode_steps + 1)
        for k, prompt in enumerate(prompt_set):
            if given(progress):
                progress("verify", k * (decode_steps + 1), calls, "call")
            _run_prompt(engine, ref, cfg, f"p{k}", prompt, decode_steps, per_call, report)
        if given(progress):
            progress("verify", calls, calls, "call")
        report.logits_source = engine.logits_source
        report.notes.extend(engine.notes)
        report.tokenizer = check_tokenizer(checkpoint, engine.encode)
    finally:
        if engine is not None:
            engine.close()
        ref.close()
    return report


def _run_prompt(engine: Engine, ref, cfg, case: str, prompt: np.ndarray, decode_steps: int,
                tols: Mapping[str, Tolerance], report: EngineReport) -> None:
    """Prefill + cached decode steps of one prompt on both sides; appends CallResults and position rows."""
    feeds = io.make_feeds(prompt[None], cfg=cfg)
    step = engine.prefill(prompt)
    for n in range(decode_steps + 1):
        want = ref.infer(feeds)
        got = {io.LOGITS: step.logits[None]}
        names = [io.LOGITS]
        ref_logits = want[io.LOGITS]
        if step.logits.shape[0] != ref_logits.shape[1]:  # an engine giving only the last position's logits
            ref_logits = ref_logits[:, -1:]
        for i, h in (step.hidden or {}).items():
            got[io.hidden_name(i)] = h[None]
            names.append(io.hidden_name(i))
        expected = {io.LOGITS: ref_logits, **{k: want[k] for k in names[1:]}}
        label = f"{case}/{'prefill' if n == 0 else f'decode{n}'}"
        result = compare(got, expected, tols, names=names)
        report.calls.append(CallResult(case, n, result))
        if report.quantization is not None:
            report.quantization.add(label, compare(got, expected, {"*": Tolerance()}, names=[io.LOGITS]))
        start = (len(prompt) + n - 1) if n else len(prompt) - step.logits.shape[0]
        report.positions.setdefault(case, []).extend(position_rows(step.logits, ref_logits[0], start, n))
        if n == decode_steps:
            break
        nxt = int(want[io.LOGITS][0, -1].argmax())
        feeds = io.step_feeds(want, np.array([nxt]), feeds[io.ATTENTION_MASK])
        step = engine.decode(nxt)


def position_rows(got: np.ndarray, want: np.ndarray, start: int, step: int) -> list[dict[str, Any]]:
    """Per position of one call: its index in the sequence, the call (0 = prefill), relative error over the
    vocabulary, KL(reference || engine) and whether the argmax agrees. NaN/inf rows keep rel = inf, top1 False."""
    a, b = np.asarray(got, np.float64), np.asarray(want, np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        err = np.abs(a - b).max(-1)
        scale = np.abs(b).max(-1)
        rel = np.where(scale > 0, err / np.where(scale > 0, scale, 1), np.where(err == 0, 0.0, np.inf))
        kl = kl_divergence(b, a)
    finite = np.isfinite(a).all(-1) & np.isfinite(b).all(-1)
    rel = np.where(finite, rel, np.inf)
    kl = np.where(finite & np.isfinite(kl), kl, np.inf)
    top1 = (a.argmax(-1) == b.argmax(-1)) & finite
    return [{"position": start + j, "call": step, "rel": float(rel[j]), "kl": float(kl[j]), "top1": bool(top1[j])}
            for j in range(a.shape[0])]
