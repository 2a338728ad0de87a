"""The report of `mxport verify --engine`: verify's VerifyReport (per call, worst per output, per layer, the lossy
error against a budget) plus what only an engine run has: per-position figures and the first diverging position,
how the logits were read, and the tokenizer comparison (reported apart from the numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mxport.contract.folder import TOKENIZER_FILE
from mxport.runtime.judge.compare import grid
from mxport.runtime.judge.report import VerifyReport

# Encoded by the checkpoint's tokenizer.json and by the engine's own tokenizer, where it has one.
CHECK_TEXTS = ("Hello, world!", "The quick brown fox jumps over the lazy dog.", "  two  spaces\tand a tab\n",
               "numbers 12345 and 3.14159", "ünïcödé – “quotes” 日本語 🙂")
MAX_POSITION_ROWS = 16  # ranges of positions printed per prompt; --json has every position


@dataclass
class EngineReport(VerifyReport):
    engine: str = ""
    lossy: str | None = None
    logits_source: str = "every position"
    positions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # case -> per-position rows
    tokenizer: dict[str, Any] = field(default_factory=dict)

    def first_diverging(self) -> dict[str, dict[str, Any] | None]:
        """Per prompt: the first position whose argmax differs from the reference's, or (an engine held to
        tolerances) whose relative error passes the logits tolerance; None where none does."""
        limit = None if self.lossy else self.tolerances.get("logits")
        rel = limit.rel if limit is not None else None
        out = {}
        for case, rows in self.positions.items():
            out[case] = next((r for r in rows if not r["top1"] or (rel is not None and not r["rel"] <= rel)), None)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("export_dir")
        d.update(engine=self.engine, target=self.export_dir, engine_version=self.provider, lossy=self.lossy,
                 logits_source=self.logits_source, tokenizer=self.tokenizer,
                 first_diverging={k: v for k, v in self.first_diverging().items()},
                 positions={k: [_finite(r) for r in rows] for k, rows in self.positions.items()})
        d["first_diverging"] = {k: None if v is None else _finite(v) for k, v in d["first_diverging"].items()}
        return d

    def __str__(self) -> str:
        lines = super().__str__().splitlines()
        verdict = lines.pop()  # PASS / FAIL, printed last again
        lines[0] = f"engine     {self.engine}: {self.export_dir}"
        lines[2] = f"runs       {self.provider}; logits: {self.logits_source}"
        lines[3] = (f"inputs     prompts of {self.prompt_lengths} tokens, each alone (batch 1), prefill + "
                    f"{self.decode_steps} cached decode steps; {len(self.calls)} calls compared")
        lines.insert(3, f"mode       {self.mode}")
        extra = ["", "per position (relative error over the vocabulary, KL(reference || engine), top-1):"]
        for case, rows in self.positions.items():
            extra.append(f"{case} ({len(rows)} positions): " + _diverging_text(self.first_diverging()[case]))
        longest = max(self.positions, key=lambda c: len(self.positions[c]), default=None)
        if longest is not None:
            extra += [f"{longest} by position:", _position_table(self.positions[longest])]
        if self.tokenizer:
            extra += ["", tokenizer_text(self.tokenizer)]
        if self.lossy and self.quantization is not None and not self.quantization.budget:
            extra.append("lossy, no budget given: the error above is reported; --max-kl / --min-top1 set one")
        while lines and lines[-1] == "":
            lines.pop()
        return "\n".join(lines + extra + ["", verdict])


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _diverging_text(row: dict[str, Any] | None) -> str:
    if row is None:
        return "no position diverges"
    where = "prefill" if row["call"] == 0 else f"decode step {row['call']}"
    return (f"first diverging position {row['position']} ({where}): rel {row['rel']:.3g}, KL {row['kl']:.3g}, "
            f"top-1 {'same' if row['top1'] else 'differs'}")


def _position_table(rows: list[dict[str, Any]]) -> str:
    """Positions in at most MAX_POSITION_ROWS contiguous ranges: worst rel, worst KL, top-1 agreements."""
    n = len(rows)
    size = max(1, math.ceil(n / MAX_POSITION_ROWS))
    body = []
    for at in range(0, n, size):
        part = rows[at : at + size]
        first, last = part[0]["position"], part[-1]["position"]
        calls = sorted({r["call"] for r in part})
        kind = "prefill" if calls == [0] else "decode" if 0 not in calls else "both"
        body.append((f"{first}" if first == last else f"{first}-{last}", kind,
                     f"{max(r['rel'] for r in part):.3g}", f"{max(r['kl'] for r in part):.3g}",
                     f"{sum(r['top1'] for r in part)}/{len(part)}"))
    return grid(("positions", "call", "rel", "kl", "top1"), body)


def check_tokenizer(checkpoint: Path, encode: Callable[[str], list[int]] | None) -> dict[str, Any]:
    """The checkpoint's tokenizer.json against the engine's tokenizer on CHECK_TEXTS: {"texts", "matched",
    "mismatches": [{"text", "reference", "engine", "at"}]}, or {"skipped": why}."""
    if encode is None:
        return {"skipped": "the engine brings no tokenizer"}
    path = Path(checkpoint) / TOKENIZER_FILE
    if not path.is_file():
        return {"skipped": f"{path} does not exist"}
    from tokenizers import Tokenizer

    try:
        ours = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception type
        return {"skipped": f"{path}: {exc}"}
    mismatches = []
    for text in CHECK_TEXTS:
        want = ours.encode(text, add_special_tokens=False).ids
        try:
            got = [int(t) for t in encode(text)]
        except Exception as exc:  # an engine's tokenizer failing is reported, not raised
            got = [f"error: {exc}"]
        if got != want:
            at = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
            mismatches.append({"text": text, "reference": want, "engine": got, "at": at})
    return {"texts": len(CHECK_TEXTS), "matched": len(CHECK_TEXTS) - len(mismatches), "mismatches": mismatches}


def tokenizer_text(t: dict[str, Any]) -> str:
    if "skipped" in t:
        return f"tokenizer  not compared: {t['skipped']}"
    head = (f"tokenizer  the engine's encodes {t['matched']} of {t['texts']} check texts as the checkpoint's "
            "tokenizer.json does (reported apart: the numbers above were run on the same ids)")
    lines = [head]
    for m in t["mismatches"][:3]:
        lines.append(f"  {m['text']!r}: differs at token {m['at']}: reference {m['reference'][:12]}, "
                     f"engine {m['engine'][:12]}")
    return "\n".join(lines)
