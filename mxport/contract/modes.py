"""The export modes: one table of every value of `--target`, `--experts`, `--dense` and `--dtype`, and one validator.

    MODES["experts"]["int4"]          -> Mode(name, exact, why, targets, native, help)
    check(target="cpu", experts="int4", dense="float32", dtype="float32", accuracy_level=4) -> ExportModes
    exact(experts="mxfp4", dense="float32", dtype="float32")  -> True (verify's float32 tolerances apply)
    canonical("experts", "fp32")      -> "float32" (ALIASES: older spellings read from mxport.json and the CLI)
    parse_label("cpu/int4/int4@0:float16") -> {"target": "cpu", "experts": "int4", "dense": "int4", ...}
    label(target="cpu", experts="int4", dense="int4") -> "cpu/int4/int4"

Export, lowering, verify, bench, training/mode_accuracy.py and the CLI help all read this table: adding a mode is a
row here, the rule that builds it (exporter/lower) and its line in docs/EXPORT.md / docs/LOWERING.md.
Ground floor: the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

from mxport.errors import MxportError

AXES = ("target", "experts", "dense", "dtype")
TARGETS = ("portable", "cpu", "cuda")
ORT = ("cpu", "cuda")  # the targets lowered to ONNX Runtime's contrib ops


@dataclass(frozen=True)
class Mode:
    name: str  # the one spelling (CLI value, mxport.json value)
    exact: bool  # every weight used equals the checkpoint's (after MXFP4 decoding) and the math is float32
    why: str  # one line: what makes it exact or lossy
    targets: tuple[str, ...]  # the --target values that accept it
    native: bool  # needs mxport's native kernels (ops/csrc) to run fast; without them the function body runs
    help: str  # what it is, for the CLI help and the docs
    option: bool = True  # False: a value mxport.json records but the CLI does not take


def _table(*modes: Mode) -> dict[str, Mode]:
    return {m.name: m for m in modes}


MODES: dict[str, dict[str, Mode]] = {
    "target": _table(
        Mode("portable", True, "opset 23 + ai.mxport ops with their function bodies: any ONNX runtime", ("portable",),
             False, "the portable graph (any runtime; experts as stored)"),
        Mode("cpu", True, "its rewrites to ORT contrib ops are exact; the lossy modes are --experts/--dense/--dtype "
             "values", ("cpu",), False, "ONNX Runtime's CPU provider (fused attention, norms, MoE / QMoE)"),
        Mode("cuda", True, "as cpu", ("cuda",), False, "ONNX Runtime's CUDA provider (QMoE fp4 for MXFP4 experts)"),
    ),
    "experts": _table(
        Mode("mxfp4", True, "MXFP4 experts as stored (exact); float experts are encoded to MXFP4 at export (lossy)",
             TARGETS, True, "MXFP4 experts (portable function body; cpu: ai.mxport.MoEMXFP4, mxport's native "
             "kernel; cuda: QMoE fp4); float experts are encoded at export (lossy)"),
        Mode("float32", True, "float experts as stored, or MXFP4 ones decoded exactly; float32 math", TARGETS, False,
             "float32 math on float experts: portable keeps a checkpoint's float experts as stored (ai.mxport.MoE; "
             "its default for them), cpu/cuda run ORT's MoE on float32 experts (from MXFP4: decoded, the most "
             "memory)"),
        Mode("int8", False, "weights map exactly from MXFP4, but ORT's CPU QMoE quantizes activations to int8",
             ORT, False, "ORT's QMoE, 8-bit experts"),
        Mode("int4", False, "4-bit block-wise quantization of the experts", ORT, False, "ORT's QMoE, 4-bit experts"),
        Mode("none", True, "a model without experts: --experts has nothing to act on", TARGETS, False,
             "recorded in mxport.json for a model without experts", option=False),
    ),
    "dense": _table(
        Mode("float32", True, "dense matrices as stored through a float32 MatMul", TARGETS, False,
             "MatMul on the stored matrices, cast to float32 (exact)"),
        Mode("bfloat16", True, "the stored bf16 matrices, float32 accumulation", ("cpu",), True,
             "ai.mxport.LinearBF16 on the stored bf16 (exact, half the memory; mxport's native kernel)"),
        Mode("int8", False, "8-bit block-wise quantization of the dense matrices", ORT, False,
             "ORT's MatMulNBits, 8 bits (router kept float32)"),
        Mode("int4", False, "4-bit block-wise quantization of the dense matrices", ORT, False,
             "ORT's MatMulNBits, 4 bits (router kept float32)"),
        Mode("q4", False, "4 bits in super-blocks of 256, activations quantized to int8", ("cpu",), True,
             "ai.mxport.LinearQ4, mxport's fastest 4-bit decode (its native kernel)"),
    ),
    "dtype": _table(
        Mode("float32", True, "float32 math", TARGETS, False, "float32 activations and math"),
        Mode("float16", False, "float16 activations and weights", ORT, False, "float16 activations and weights"),
        Mode("bfloat16", False, "bfloat16 activations and weights", ("cuda",), False,
             "bfloat16 activations and weights (ORT's CPU provider has no bfloat16 MatMul)"),
    ),
}
# Older spellings, read wherever a mode is read (CLI, mxport.json): alias -> the one name.
ALIASES: dict[str, dict[str, str]] = {
    "target": {},
    "experts": {"fp32": "float32", "float": "float32", "dense": "none"},
    "dense": {"bf16": "bfloat16"},
    "dtype": {},
}
# --experts when none is asked for: keep MXFP4 where a kernel runs it (portable function bodies, CUDA's fp4 QMoE);
# on CPU, float32 (ORT's MoE) is the one exact expert format ORT runs. A checkpoint with float experts exports
# them as stored on portable ("float32", exporter/export.py resolve_experts).
DEFAULT_EXPERTS = {"portable": "mxfp4", "cpu": "float32", "cuda": "mxfp4"}
DEFAULTS = {"target": "portable", "dense": "float32", "dtype": "float32"}
# What `mxport verify --reference` compares an export with: "export" = the NumPy reference on the export's own
# numbers (a lossy mode's quantized weights and activations, runtime/oracle/quantized.py), "checkpoint" = the
# checkpoint as stored.
VERIFY_REFERENCES = ("export", "checkpoint")
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # ORT's accuracy_level of MatMulNBits / QMoE (minimum accuracy of the CPU GEMMs)
DEFAULT_ACCURACY_LEVEL = 4


@dataclass(frozen=True)
class ExportModes:
    """One checked combination, every value in its one spelling."""

    target: str = "portable"
    experts: str = "mxfp4"
    dense: str = "float32"
    dtype: str = "float32"
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL

    @property
    def exact(self) -> bool:
        return exact(experts=self.experts, dense=self.dense, dtype=self.dtype)


def values(axis: str, target: str | None = None) -> tuple[str, ...]:
    """The option values of `axis` (the CLI's) in table order; with `target`, those that target takes."""
    return tuple(name for name, m in MODES[axis].items() if m.option and (target is None or target in m.targets))


def canonical(axis: str, value: str) -> str:
    """The one name of `value` (an alias maps to it; anything else is returned unchanged)."""
    return ALIASES[axis].get(value, value)


def mode(axis: str, value: str) -> Mode | None:
    """The table's row for `value` (aliases read), or None."""
    return MODES[axis].get(canonical(axis, value))


def check(*, target: str = "portable", experts: str | None = None, dense: str = "float32", dtype: str = "float32",
          accuracy_level: int = DEFAULT_ACCURACY_LEVEL) -> ExportModes:
    """The one validator: each value known (aliases read) and accepted by `target`, and the combinations ORT runs.
    `experts=None` is the target's default (DEFAULT_EXPERTS). Raises MxportError naming the option, the value and
    the accepted values."""
    target = _known("target", target)
    asked = {"experts": DEFAULT_EXPERTS[target] if experts is None else experts, "dense": dense, "dtype": dtype}
    for axis in asked:
        asked[axis] = _known(axis, asked[axis])
        row = MODES[axis][asked[axis]]
        if target not in row.targets:
            raise MxportError(f"--{axis} {row.name} ({row.help}) needs --target {' or '.join(row.targets)}; "
                              f"--target {target} takes --{axis} {', '.join(values(axis, target))}")
    if accuracy_level not in ACCURACY_LEVELS:
        raise MxportError(f"--accuracy-level must be {ACCURACY_LEVELS[0]}..{ACCURACY_LEVELS[-1]} (ORT's accuracy_level), "
                          f"found {accuracy_level}")
    if asked["experts"] == "int8" and target == "cpu" and accuracy_level != 4:
        raise MxportError("--experts int8 has no float32-activation kernel in ONNX Runtime (8-bit QMoE always "
                          "quantizes activations to int8): use --accuracy-level 4, or --experts int4 / float32")
    if asked["dense"] == "q4" and accuracy_level != 4:
        raise MxportError("--dense q4 (ai.mxport.LinearQ4) always quantizes activations to int8 (accuracy level 4); "
                          "for float32 activations use --dense int4 --accuracy-level 0")
    return ExportModes(target, asked["experts"], asked["dense"], asked["dtype"], accuracy_level)


def _known(axis: str, value: str) -> str:
    row = mode(axis, value)
    if row is None or not row.option:
        raise MxportError(f"unknown {axis} {value!r}; expected one of {', '.join(values(axis))}")
    return row.name


def exact(*, experts: str, dense: str = "float32", dtype: str = "float32") -> bool:
    """Whether an export in these modes equals the checkpoint up to float32 summation order (verify's question).
    A value the table does not know counts as lossy."""
    rows = (mode("experts", experts), mode("dense", dense), mode("dtype", dtype))
    return all(row is not None and row.exact for row in rows)


def help_text(axis: str) -> str:
    """The CLI help of `--AXIS`: every value with its help, exact or lossy, targets and native kernels."""
    def one(m: Mode) -> str:
        where = "" if axis == "target" or m.targets == TARGETS else f"; --target {'/'.join(m.targets)}"
        return f"{m.name} ({'exact' if m.exact else 'lossy'}{where}): {m.help}"

    text = " | ".join(one(MODES[axis][v]) for v in values(axis))
    if aliases := [f"{a} = {n}" for a, n in ALIASES[axis].items() if n in values(axis)]:
        text += "; older spellings read: " + ", ".join(aliases)
    return text


# ---- labels: how bench, training/mode_accuracy.py and their tables name a combination -------------------------
LABEL_SYNTAX = "TARGET[/EXPERTS[/DENSE]][@ACCURACY_LEVEL][:DTYPE]"


def parse_label(text: str) -> dict:
    """`cpu/int4/int4@0:float16` -> export() options (target, experts, dense, dtype, accuracy_level); a part left
    out takes export()'s default (EXPERTS: the target's DEFAULT_EXPERTS). Checked against the table."""
    head, _, dtype = text.partition(":")
    head, _, level = head.partition("@")
    parts = head.split("/")
    if not 1 <= len(parts) <= 3 or not all(parts) or (level and not level.isdigit()) or ":" in dtype:
        raise MxportError(f"mode {text!r}: expected {LABEL_SYNTAX}, e.g. cpu/int4/int4 or cpu/int4@0")
    target, experts, dense = (parts + [None, DEFAULTS["dense"]][len(parts) - 1 :])[:3]
    modes = check(target=target, experts=experts, dense=dense, dtype=dtype or DEFAULTS["dtype"],
                  accuracy_level=int(level) if level else DEFAULT_ACCURACY_LEVEL)
    options = {"target": modes.target, "experts": experts and modes.experts, "dense": modes.dense,
               "dtype": modes.dtype, "accuracy_level": modes.accuracy_level}
    return options


def label(*, target: str, experts: str, dense: str = "float32", dtype: str = "float32",
          accuracy_level: int = DEFAULT_ACCURACY_LEVEL) -> str:
    """TARGET/EXPERTS[/DENSE][@LEVEL][:DTYPE], defaults left out; a model without experts (EXPERTS 'none'):
    TARGET[ dense-DENSE][@LEVEL][:DTYPE]."""
    experts, dense = canonical("experts", experts), canonical("dense", dense)
    if experts == "none":
        head = target + (f" dense-{dense}" if dense != "float32" else "")
    else:
        head = f"{target}/{experts}" + (f"/{dense}" if dense != "float32" else "")
    return head + (f"@{accuracy_level}" if accuracy_level != 4 else "") + (f":{dtype}" if dtype != "float32" else "")
