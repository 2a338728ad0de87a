"""The report of `mxport verify`: per call (case, step) compare() results, the worst outputs, per-layer errors,
a verdict, and the text / JSON forms the CLI prints (runtime/judge/verify.py runs the cases).

    report = verify(...)            # VerifyReport: truthy when every output of every call is within tolerance
    report.first_failing_layer; report.worst(); report.layers(); report.to_json(); print(report)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from mxport.contract import io
from mxport.runtime.judge.compare import Report, Tolerance, first_failing_layer, grid, resolve_tolerance

MAX_FAILURE_LINES = 12  # failing outputs listed by the CLI; --json has them all


# ---- report ------------------------------------------------------------------------------------------------------
@dataclass
class CallResult:
    case: str  # "long" | "batch"
    step: int  # 0 = prefill, then decode steps
    report: Report

    @property
    def label(self) -> str:
        return f"{self.case}/{'prefill' if self.step == 0 else f'decode{self.step}'}"


@dataclass
class QuantizationError:
    """A lossy export's quantization error: the reference on the export's numbers against the reference on the
    checkpoint as stored, logits only, pooled over every compared position of every call. It fails verify only
    against the user's budget (Tolerance(kl_mean=--max-kl, top1=--min-top1)); without one it is reported."""

    budget: Tolerance | None = None
    positions: int = 0
    top1: float = 0.0
    kl_mean: float = 0.0
    kl_max: float = 0.0
    rel: float = 0.0

    def add(self, call: str, report: Report) -> None:
        s = report[io.LOGITS]
        n = s.compared // max(s.shape[-1], 1)
        if not n:
            return
        total = self.positions + n
        self.top1 = (self.top1 * self.positions + s.top1 * n) / total
        self.kl_mean = (self.kl_mean * self.positions + s.kl_mean * n) / total
        self.kl_max, self.rel = max(self.kl_max, s.kl_max), max(self.rel, s.rel)
        if not all(map(math.isfinite, (s.kl_mean, s.kl_max, s.rel))):  # NaN never passes, not even a budget
            self.kl_mean = self.kl_max = math.nan
        self.positions = total

    @property
    def failures(self) -> list[str]:
        b, out = self.budget, []
        if not math.isfinite(self.kl_mean):
            out.append(f"quantization error: KL is not finite ({self.kl_mean})")
        if b is not None and b.kl_mean is not None and not self.kl_mean <= b.kl_mean:
            out.append(f"quantization error: kl_mean {self.kl_mean:.3g} > --max-kl {b.kl_mean:g}")
        if b is not None and b.top1 is not None and not self.top1 >= b.top1:
            out.append(f"quantization error: top1 {self.top1:.4g} < --min-top1 {b.top1:g}")
        return out

    def to_dict(self) -> dict[str, Any]:
        budget = {} if self.budget is None else {k: v for k, v in (("max_kl", self.budget.kl_mean),
                                                                    ("min_top1", self.budget.top1)) if v is not None}
        return _finite({"positions": self.positions, "top1": self.top1, "kl_mean": self.kl_mean,
                        "kl_max": self.kl_max, "rel": self.rel, "budget": budget or None,
                        "passed": not self.failures, "failures": self.failures})

    def __str__(self) -> str:
        budget = self.to_dict()["budget"]
        if budget:
            verdict = ("; over budget " if self.failures else "; within budget ") + ", ".join(
                f"--{k.replace('_', '-')} {v:g}" for k, v in budget.items())
        else:
            verdict = "; fails only against a budget you give (--max-kl, --min-top1)"
        return (f"quantization error (lossy, against the checkpoint as stored; logits over {self.positions} "
                f"positions): kl_mean {self.kl_mean:.3g}, kl_max {self.kl_max:.3g}, top1 {self.top1:.4f}, "
                f"rel {self.rel:.3g}{verdict}")


@dataclass
class VerifyReport:
    """All comparisons of one verify run; truthy iff every one passed."""

    export_dir: str
    checkpoint: str
    mode: str  # "dtype=float32 experts=mxfp4 (exact)"
    provider: str
    prompt_lengths: list[int]
    decode_steps: int
    calls: list[CallResult] = field(default_factory=list)
    hidden_states_source: str = "none"  # "export" | "exposed" | "none"
    notes: list[str] = field(default_factory=list)
    # The full tolerances. Per call, compare() checks everything except top1 and kl_mean, which are averages over
    # positions: they are checked once, pooled over every position of every call (a decode call of batch 1 has
    # a single position, where top-1 agreement can only be 0 or 1).
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    checked: str = ""  # one sentence: the claim checked (verify.py: _what_was_checked)
    quantization: QuantizationError | None = None  # a lossy export's error against the checkpoint as stored

    def __bool__(self) -> bool:
        if self.quantization is not None and self.quantization.failures:
            return False
        return all(c.report for c in self.calls) and not any(r["failed_in"] for r in self.worst())

    @property
    def passed(self) -> bool:
        return bool(self)

    @property
    def first_failing_layer(self) -> int | None:
        return first_failing_layer([c.report for c in self.calls])

    def worst(self) -> list[dict[str, Any]]:
        """Per output name: the worst max/mean/rel/p99/kl_max over all calls, top1 and kl_mean pooled over all
        positions of all calls, the calls that failed ("pooled" for a failed pooled check) and why."""
        rows: dict[str, dict[str, Any]] = {}
        for call in self.calls:
            for s in call.report.outputs:
                tol = resolve_tolerance(s.name, self.tolerances) if self.tolerances else s.tolerance
                r = rows.setdefault(
                    s.name,
                    {"name": s.name, "max_abs": 0.0, "mean_abs": 0.0, "rel": 0.0, "p99": 0.0, "top1": None,
                     "kl_mean": None, "kl_max": None, "positions": 0, "tolerance": tol.describe(),
                     "failed_in": [], "failures": [], "non_finite": {}, "_tol": tol},
                )
                for side, n in s.non_finite.items():
                    r["non_finite"][side] = r["non_finite"].get(side, 0) + n
                r["max_abs"] = max(r["max_abs"], s.max_abs)
                r["mean_abs"] = max(r["mean_abs"], s.mean_abs)
                r["rel"] = max(r["rel"], s.rel)
                r["p99"] = max(r["p99"], s.quantiles.get("p99", 0.0))
                if s.top1 is not None:
                    n = s.compared // max(s.shape[-1], 1)  # positions in this call
                    total = r["positions"] + n
                    r["top1"] = ((r["top1"] or 0.0) * r["positions"] + s.top1 * n) / total
                    r["kl_mean"] = ((r["kl_mean"] or 0.0) * r["positions"] + s.kl_mean * n) / total
                    r["kl_max"] = s.kl_max if r["kl_max"] is None else max(r["kl_max"], s.kl_max)
                    r["positions"] = total
                if not s.passed:
                    r["failed_in"].append(call.label)
                    r["failures"].extend(f"{call.label}: {f}" for f in s.failures)
        for r in rows.values():
            tol = r.pop("_tol")
            if r["top1"] is not None and tol.top1 is not None and r["top1"] < tol.top1:
                r["failed_in"].append("pooled")
                r["failures"].append(f"pooled over {r['positions']} positions: top1 {r['top1']:.4g} < {tol.top1:g}")
            if r["kl_mean"] is not None and tol.kl_mean is not None and not r["kl_mean"] <= tol.kl_mean:
                r["failed_in"].append("pooled")
                r["failures"].append(f"pooled over {r['positions']} positions: kl_mean {r['kl_mean']:.3g} > {tol.kl_mean:g}")
        return list(rows.values())

    def non_finite(self) -> list[dict[str, Any]]:
        """The outputs with a NaN or inf on either side: [{"name", "test", "reference"}] (counts over all calls),
        in output order."""
        return [{"name": r["name"], "test": r["non_finite"].get("test", 0),
                 "reference": r["non_finite"].get("reference", 0)} for r in self.worst() if r["non_finite"]]

    @property
    def first_non_finite_layer(self) -> int | None:
        """The smallest i whose hidden_states.{i} holds a NaN or inf on either side (where the numbers broke)."""
        layers = [io.hidden_layer(r["name"]) for r in self.non_finite()]
        return min((i for i in layers if i is not None), default=None)

    def layers(self) -> list[dict[str, Any]]:
        """Per layer i: worst rel of hidden_states.{i}, of present.{i}.key/value and of the inputs of its matrix
        products (tap/layers.{i}/..., exposed when the export quantizes activations), and whether any failed."""
        table: dict[int, dict[str, Any]] = {}
        for row in self.worst():
            name = row["name"]
            i, kind = io.hidden_layer(name), "hidden"
            if i is None and io.tap_layer(name) is not None:
                i, kind = io.tap_layer(name), "inputs"
            if i is None:
                at = io.cache_layer(name) if name.startswith(io.PRESENT) else None
                if at is None:
                    continue
                i, kind = at
            t = table.setdefault(i, {"layer": i, "hidden_rel": None, "key_rel": None, "value_rel": None,
                                     "inputs_rel": None, "passed": True})
            key = f"{kind}_rel"
            t[key] = row["rel"] if t[key] is None or row["rel"] is None else max(t[key], row["rel"])
            t["passed"] &= not row["failed_in"]
        return [table[i] for i in sorted(table)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "export_dir": self.export_dir,
            "checkpoint": self.checkpoint,
            "mode": self.mode,
            "checked": self.checked,
            "quantization_error": None if self.quantization is None else self.quantization.to_dict(),
            "provider": self.provider,
            "prompt_lengths": self.prompt_lengths,
            "decode_steps": self.decode_steps,
            "hidden_states_source": self.hidden_states_source,
            "first_failing_layer": self.first_failing_layer,
            "non_finite": self.non_finite(),
            "first_non_finite_layer": self.first_non_finite_layer,
            "summary": [_finite(r) for r in self.worst()],
            "layers": [_finite(r) for r in self.layers()],
            "calls": [{"call": c.label, **c.report.to_dict()} for c in self.calls],
            "notes": self.notes,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def __str__(self) -> str:
        lines = [
            f"export     {self.export_dir}",
            f"checkpoint {self.checkpoint}",
            f"mode       {self.mode}; provider {self.provider}",
            f"inputs     prompts of {self.prompt_lengths} tokens (alone: the longest; batch: left-padded), "
            f"prefill + {self.decode_steps} cached decode steps; {len(self.calls)} calls compared",
            f"per-layer  hidden_states: {self.hidden_states_source}",
            *([f"checked    {self.checked}"] if self.checked else []),
            "",
            "worst over all calls, per output:",
            _worst_table([r for r in self.worst() if io.hidden_layer(r["name"]) is None and io.tap_layer(r["name"]) is None
                          and not r["name"].startswith(io.PRESENT)]),
        ]
        layer_rows = self.layers()
        if layer_rows:
            lines += ["", "per layer (worst relative error over all calls):", _layer_table(layer_rows)]
        failed = [r for r in self.worst() if r["failed_in"]]
        if failed:  # one line per failing output: its first failure and how many more (all of them in --json)
            lines += ["", f"failures ({len(failed)} outputs; first failure of each):"]
            for r in failed[:MAX_FAILURE_LINES]:
                more = len(r["failures"]) - 1
                lines.append(f"  {r['name']}: {r['failures'][0]}" + (f" (+{more} more)" if more else ""))
            if len(failed) > MAX_FAILURE_LINES:
                lines.append(f"  ... {len(failed) - MAX_FAILURE_LINES} more outputs")
        if bad := self.non_finite():  # NaN/inf never count as agreement: name them before anything else
            shown = ", ".join(f"{r['name']} (" + ", ".join(f"{side} {r[side]}" for side in ("test", "reference")
                                                         if r[side]) + ")" for r in bad[:MAX_FAILURE_LINES])
            more = f" and {len(bad) - MAX_FAILURE_LINES} more" if len(bad) > MAX_FAILURE_LINES else ""
            lines += ["", f"non-finite outputs (NaN/inf, never agreement): {shown}{more}"]
            if (first := self.first_non_finite_layer) is not None:
                lines.append(f"first layer with non-finite values: {first}")
        if self.quantization is not None:
            lines += ["", str(self.quantization)] + [f"  {f}" for f in self.quantization.failures]
        for note in self.notes:
            lines.append(f"note: {note}")
        layer = self.first_failing_layer
        lines.append("")
        if layer is not None:
            lines.append(f"first failing layer: {layer}")
        lines.append("PASS" if self else "FAIL")
        return "\n".join(lines)


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def _worst_table(rows: list[dict[str, Any]]) -> str:
    head = ("output", "max_abs", "mean_abs", "rel", "p99", "top1", "kl_mean", "kl_max", "tolerance", "result")
    body = [
        (r["name"], _fmt(r["max_abs"]), _fmt(r["mean_abs"]), _fmt(r["rel"]), _fmt(r["p99"]), _fmt(r["top1"], ".4f"),
         _fmt(r["kl_mean"]), _fmt(r["kl_max"]), r["tolerance"], _verdict(r["failed_in"]))
        for r in rows
    ]
    return grid(head, body)


def _verdict(failed_in: list[str]) -> str:
    if not failed_in:
        return "ok"
    calls = [c for c in failed_in if c != "pooled"]
    parts = ([f"{len(calls)} calls"] if calls else []) + (["pooled"] if "pooled" in failed_in else [])
    return "FAIL: " + ", ".join(parts)


def _layer_table(rows: list[dict[str, Any]]) -> str:
    inputs = any(r.get("inputs_rel") is not None for r in rows)  # the column only where products' inputs were read
    head = ("layer", "hidden_rel", "key_rel", "value_rel", *(("inputs_rel",) if inputs else ()), "result")
    body = [
        (str(r["layer"]), _fmt(r["hidden_rel"]), _fmt(r["key_rel"]), _fmt(r["value_rel"]),
         *((_fmt(r.get("inputs_rel")),) if inputs else ()), "ok" if r["passed"] else "FAIL")
        for r in rows
    ]
    return grid(head, body)


