"""The comparator: how far apart are two runners' outputs, and is that within tolerance?

    report = compare(ort_outputs, reference_outputs)            # default tolerances (float32: rel <= 1e-4)
    report = compare(a, b, {"logits": Tolerance(rel=1e-2, top1=0.99)}, masks={"logits": valid})
    if not report: print(report); print(first_failing_layer(report))
    json.loads(report.to_json())

`a` is the output under test, `b` the reference. Per output (the names both sides have):

    max_abs   max |a - b|                    mean_abs  mean |a - b|
    rel       max |a - b| / max |b|          quantiles of |a - b| (p50, p90, p99, p99.9; numpy "linear")
    logits-like outputs (name "logits"; last axis = vocabulary), per position = all axes but the last:
    top1      fraction of positions where argmax a == argmax b
    kl_mean, kl_max   KL(softmax(b) || softmax(a)) over positions, in nats, computed in float64

A mask (per output name, boolean over the leading axes) restricts the comparison to some positions, e.g. the real
tokens of a left-padded batch: `a[mask]` keeps the trailing axes. A NaN or inf on either side is never agreement
(NaN against NaN included): the output fails, its failure counts the non-finite values of each side and names the
first one's position, and `non_finite` says which side has them. A KL that is not finite fails too.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping

import numpy as np

from mxport.contract import io
from mxport.errors import MxportError

QUANTILES = (0.5, 0.9, 0.99, 0.999)


@dataclass(frozen=True)
class Tolerance:
    """Limits for one output; None = not checked. All limits are inclusive."""

    rel: float | None = None  # max|a-b| / max|b| <= rel
    abs: float | None = None  # max|a-b| <= abs
    top1: float | None = None  # fraction of positions with the same argmax >= top1 (logits only)
    kl_mean: float | None = None  # mean KL(softmax(b) || softmax(a)) <= kl_mean (logits only)
    kl_max: float | None = None  # max KL over positions <= kl_max (logits only)

    def describe(self) -> str:
        parts = [f"{k}{'>=' if k == 'top1' else '<='}{v:g}" for k, v in asdict(self).items() if v is not None]
        return " ".join(parts) or "-"


# Defaults for a float32 export checked against the float32 NumPy reference. Patterns are fnmatch globs; the
# first matching pattern wins, so specific names go first.
FLOAT32_TOLERANCES: dict[str, Tolerance] = {
    io.LOGITS: Tolerance(rel=1e-4, top1=1.0),
    io.HIDDEN + "*": Tolerance(rel=1e-4),
    io.PRESENT + "*": Tolerance(rel=1e-4),
    "*": Tolerance(rel=1e-4),
}


def is_logits(name: str) -> bool:
    return name == io.LOGITS or name.endswith("/" + io.LOGITS) or name.endswith("." + io.LOGITS)


def resolve_tolerance(name: str, tolerances: Mapping[str, Tolerance | float] | None) -> Tolerance:
    """The first pattern in `tolerances` (a float means Tolerance(rel=value)) that matches `name`."""
    table = FLOAT32_TOLERANCES if tolerances is None else tolerances
    for pattern, tol in table.items():
        if fnmatch.fnmatchcase(name, pattern):
            return tol if isinstance(tol, Tolerance) else Tolerance(rel=float(tol))
    return Tolerance()


@dataclass
class OutputStats:
    """Error figures of one output (a = under test, b = reference) and the verdict against its tolerance."""

    name: str
    shape: tuple[int, ...]
    compared: int  # number of compared elements (after masking)
    max_abs: float
    mean_abs: float
    rel: float
    max_ref: float  # max |b|: the denominator of rel
    quantiles: dict[str, float]  # "p50" -> value of |a-b|
    top1: float | None = None
    kl_mean: float | None = None
    kl_max: float | None = None
    tolerance: Tolerance = field(default_factory=Tolerance)
    failures: list[str] = field(default_factory=list)  # why it fails; empty = pass
    non_finite: dict[str, int] = field(default_factory=dict)  # {"test": n, "reference": n}: NaN/inf counts, if any

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["tolerance"] = {k: v for k, v in asdict(self.tolerance).items() if v is not None}
        d["passed"] = self.passed
        return {k: _json_float(v) for k, v in d.items()}


@dataclass
class Report:
    """Per-output statistics; truthy iff every compared output is within its tolerance."""

    outputs: list[OutputStats]
    only_a: list[str] = field(default_factory=list)  # names only the output under test has (not compared)
    only_b: list[str] = field(default_factory=list)  # names only the reference has (not compared)
    title: str = ""

    def __bool__(self) -> bool:
        return all(s.passed for s in self.outputs)

    @property
    def passed(self) -> bool:
        return bool(self)

    def __getitem__(self, name: str) -> OutputStats:
        for s in self.outputs:
            if s.name == name:
                return s
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(s.name == name for s in self.outputs)

    @property
    def failed(self) -> list[OutputStats]:
        return [s for s in self.outputs if not s.passed]

    def to_dict(self) -> dict:
        return {
            "title": self.title,
            "passed": self.passed,
            "outputs": [s.to_dict() for s in self.outputs],
            "only_a": self.only_a,
            "only_b": self.only_b,
            "first_failing_layer": first_failing_layer(self),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def table(self, *, only_failed: bool = False) -> str:
        rows = [s for s in self.outputs if not (only_failed and s.passed)]
        return format_table(rows)

    def __str__(self) -> str:
        head = f"{self.title}: " if self.title else ""
        verdict = "PASS" if self else f"FAIL ({len(self.failed)} of {len(self.outputs)} outputs)"
        lines = [f"{head}{verdict}", self.table()]
        if self.only_a or self.only_b:
            lines.append(f"not compared: only in a {self.only_a}, only in b {self.only_b}")
        layer = first_failing_layer(self)
        if layer is not None:
            lines.append(f"first failing layer: {layer}")
        return "\n".join(lines)


def compare(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    tolerances: Mapping[str, Tolerance | float] | None = None,
    *,
    masks: Mapping[str, np.ndarray] | None = None,
    names: Iterable[str] | None = None,
    title: str = "",
) -> Report:
    """Compare outputs `a` (under test) with `b` (reference), output by output.

    tolerances: {glob pattern: Tolerance or rel float}, first match wins; None = FLOAT32_TOLERANCES.
    masks: {output name: bool array over the leading axes of that output}; only True positions are compared.
    names: restrict to these outputs (each must be in both); default: every name both have, in b's order."""
    if names is None:
        common = [n for n in b if n in a]
    else:
        common = list(names)
        missing = [n for n in common if n not in a or n not in b]
        if missing:
            raise MxportError(f"compare: outputs {missing} are not in both result sets")
    stats = []
    for name in common:
        mask = None if masks is None else masks.get(name)
        stats.append(_compare_one(name, np.asarray(a[name]), np.asarray(b[name]), resolve_tolerance(name, tolerances), mask))
    return Report(
        stats,
        only_a=[n for n in a if n not in b],
        only_b=[n for n in b if n not in a],
        title=title,
    )


def _compare_one(name: str, a: np.ndarray, b: np.ndarray, tol: Tolerance, mask: np.ndarray | None) -> OutputStats:
    if a.shape != b.shape:
        raise MxportError(f"compare: output {name!r} has shape {a.shape} under test but {b.shape} in the reference")
    shape = tuple(a.shape)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != shape[: mask.ndim]:
            raise MxportError(f"compare: mask for {name!r} has shape {mask.shape}, expected leading axes of {shape}")
        a, b = a[mask], b[mask]  # [N, *trailing]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    failures: list[str] = []

    # A NaN or inf is never agreement, not even against the same value on the other side: broken numbers that
    # happen to be broken alike (a NaN weight in the export and in the reference) must not pass.
    fin_a, fin_b = np.isfinite(a64), np.isfinite(b64)
    non_finite = {side: int((~fin).sum()) for side, fin in (("test", fin_a), ("reference", fin_b)) if not fin.all()}
    if non_finite:
        first = np.argwhere(~(fin_a & fin_b))[0]
        where = ", ".join(f"{side} {n}" for side, n in non_finite.items())
        failures.append(f"non-finite values (NaN/inf): {where}; first at index {tuple(int(i) for i in first)}"
                        + (" of the compared positions" if mask is not None else ""))
    ok = fin_a & fin_b
    err = np.abs(a64[ok] - b64[ok])
    if err.size:
        max_abs, mean_abs = float(err.max()), float(err.mean())
        max_ref = float(np.abs(b64[ok]).max())
        qs = np.quantile(err, QUANTILES)
    else:
        max_abs = mean_abs = max_ref = 0.0
        qs = np.zeros(len(QUANTILES))
    rel = max_abs / max_ref if max_ref > 0 else (0.0 if max_abs == 0 else math.inf)
    quantiles = {_qname(q): float(v) for q, v in zip(QUANTILES, qs)}

    top1 = kl_mean = kl_max = None
    if is_logits(name) and a64.size and a64.ndim >= 1:
        flat_a = a64.reshape(-1, a64.shape[-1])  # [positions, V]
        flat_b = b64.reshape(-1, b64.shape[-1])
        if flat_a.shape[0]:
            top1 = float(np.mean(flat_a.argmax(-1) == flat_b.argmax(-1)))
            with np.errstate(invalid="ignore", over="ignore"):
                kl = kl_divergence(flat_b, flat_a)
            kl_mean, kl_max = float(kl.mean()), float(kl.max())
            if not (math.isfinite(kl_mean) and math.isfinite(kl_max)) and not non_finite:
                failures.append(f"KL is not finite (kl_mean {kl_mean}, kl_max {kl_max})")

    def over(value: float | None, limit: float | None, label: str, at_least: bool = False) -> None:
        if limit is None or value is None:
            return
        if (value < limit) if at_least else not (value <= limit):
            failures.append(f"{label} {value:.3g} {'<' if at_least else '>'} {limit:g}")

    over(rel, tol.rel, "rel")
    over(max_abs, tol.abs, "max_abs")
    over(top1, tol.top1, "top1", at_least=True)
    over(kl_mean, tol.kl_mean, "kl_mean")
    over(kl_max, tol.kl_max, "kl_max")
    return OutputStats(name, shape, int(a64.size), max_abs, mean_abs, rel, max_ref, quantiles, top1, kl_mean,
                       kl_max, tol, failures, non_finite)


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(p) || softmax(q)) per row of [N, V] logits, float64, in nats (>= 0 up to rounding)."""
    lp = _log_softmax(np.asarray(p_logits, np.float64))
    lq = _log_softmax(np.asarray(q_logits, np.float64))
    kl = np.sum(np.exp(lp) * (lp - lq), axis=-1)
    return np.maximum(kl, 0.0)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.sum(np.exp(x), axis=-1, keepdims=True))


def _qname(q: float) -> str:
    return "p" + f"{q * 100:g}"


def _json_float(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "inf" / "nan": JSON has no such numbers
    if isinstance(v, dict):
        return {k: _json_float(x) for k, x in v.items()}
    return v


# ---- per-layer ------------------------------------------------------------------------------------------------
def first_failing_layer(reports: Report | Iterable[Report]) -> int | None:
    """The smallest i whose `hidden_states.{i}` (or an input of its products, `tap/layers.{i}/...`) fails its
    tolerance in any of the reports; None if none fails.

    The residual stream after layer i carries every error made up to layer i, so the first failing one is
    where the numbers first go wrong."""
    if isinstance(reports, Report):
        reports = [reports]
    failing = [io.hidden_layer(s.name) if io.tap_layer(s.name) is None else io.tap_layer(s.name)
               for r in reports for s in r.outputs if not s.passed]
    failing = [i for i in failing if i is not None]
    return min(failing) if failing else None


# ---- printing -------------------------------------------------------------------------------------------------
def format_table(rows: list[OutputStats]) -> str:
    head = ("output", "shape", "max_abs", "mean_abs", "rel", "p99", "top1", "kl_mean", "kl_max", "tolerance", "result")
    body = []
    for s in rows:
        body.append(
            (
                s.name,
                "x".join(map(str, s.shape)),
                f"{s.max_abs:.3g}",
                f"{s.mean_abs:.3g}",
                f"{s.rel:.3g}",
                f"{s.quantiles.get('p99', 0.0):.3g}",
                "-" if s.top1 is None else f"{s.top1:.4f}",
                "-" if s.kl_mean is None else f"{s.kl_mean:.3g}",
                "-" if s.kl_max is None else f"{s.kl_max:.3g}",
                s.tolerance.describe(),
                "ok" if s.passed else "FAIL: " + "; ".join(s.failures),
            )
        )
    return grid(head, body)


def grid(head: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    """A plain-text table: left-aligned columns, a dashed rule under the header."""
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, body)])
