"""What each export mode costs on the trained chat model: numbers against the NumPy reference, and task accuracy.

    python training/mode_accuracy.py [CKPT] [--n 100] [--json work/modes.json] [--modes portable,cpu/int8,...]

Modes are mode labels (mxport.contract.modes.LABEL_SYNTAX: TARGET[/EXPERTS[/DENSE]][@LEVEL][:DTYPE]).

CKPT defaults to the shipped model (mxport/data/chat-tiny). Needs mxport only (no torch). For every mode:

    export CKPT --target/--experts/--dense/--dtype/--accuracy-level  (into a temporary folder)
    verify   `mxport verify`'s rows (random-token prompts: 2 prompts, prefill + 2 cached decode steps)
    in-dist  teacher-forced held-out conversations (prompt + the right reply), logits of the export against the
             NumPy reference model on the reply positions: top-1 agreement, KL mean / max, max / mean abs error
    tasks    greedy replies through mxport's Generator on the held-out questions, per-task accuracy

and, with --reference-tasks, once for the NumPy reference model itself (slow; the exact modes, portable and
cpu/float32, answer as it does).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import chat_format  # noqa: E402
import evaluate  # noqa: E402
import tasks  # noqa: E402
from mxport.contract import modes  # noqa: E402
from mxport.errors import MxportError  # noqa: E402
from mxport.exporter.export import export  # noqa: E402
from mxport.runtime.judge.compare import kl_divergence  # noqa: E402
from mxport.runtime.generation.generate import Generator  # noqa: E402
from mxport.runtime.chat.harmony import Harmony  # noqa: E402
from mxport.runtime.judge.verify import verify  # noqa: E402

# mode labels (mxport.contract.modes.LABEL_SYNTAX), each parsed into export options by the mode table
MODES = ("portable", "cpu/float32", "cpu/int8", "cpu/int4", *(f"cpu/int4@{k}" for k in (0, 1, 2, 3)), "cpu/float32/int8",
         "cpu/float32/int4", "cpu/float32/q4", "cpu/int4/int4", *(f"cpu/int4/int4@{k}" for k in (0, 1, 2, 3)),
         "cpu/float32:float16")


def shipped() -> Path:
    import mxport

    return Path(mxport.__file__).resolve().parent / "data" / "chat-tiny"


def teacher_forced(tokenizer, n_per_task: int, seed: int = 4321) -> list[tuple[list[int], int]]:
    """(ids, reply start) of held-out conversations with their right replies."""
    harmony = Harmony(tokenizer)
    out = []
    for ex, date in tasks.held_out_set(n_per_task, seed):
        prompt = chat_format.prompt_ids(harmony, ex, date)
        out.append((prompt + chat_format.reply_ids(harmony, ex), len(prompt)))
    return out


def reply_logits(gen: Generator, seqs) -> list[np.ndarray]:
    """Logits [reply positions, V] (float32) of each sequence, one prompt per call."""
    return [np.asarray(gen.prompt_logits(np.array(ids))[0, start - 1 : len(ids) - 1], np.float32)
            for ids, start in seqs]


def in_dist(ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    r, g = np.concatenate(ref), np.concatenate(got)
    kl = kl_divergence(r, g)
    return {"top1": float(np.mean(r.argmax(-1) == g.argmax(-1))), "kl_mean": float(kl.mean()),
            "kl_max": float(kl.max()), "max_abs": float(np.abs(r - g).max()),
            "mean_abs": float(np.abs(r - g).mean()), "positions": int(len(r))}


def verify_row(out: Path, ckpt: Path) -> dict:
    report = verify(out, ckpt, prompts=2, decode_steps=2, per_layer=False)
    row = next(r for r in report.worst() if r["name"] == "logits")
    keep = ("max_abs", "mean_abs", "rel", "top1", "kl_mean", "kl_max")
    return {**{k: row[k] for k in keep}, "pass": bool(report)}


def measure(ckpt: Path, labels: list[str], n: int, n_forced: int, save=lambda results: None,
            reference_tasks: bool = False, quiet: bool = False) -> dict:
    reference = Generator.from_folder(ckpt, backend="numpy")
    seqs = teacher_forced(reference.tokenizer, n_forced)
    ref_logits = reply_logits(reference, seqs)
    results = {"checkpoint": str(ckpt), "n_per_task": n, "forced_per_task": n_forced, "reference": None,
               "modes": {}}
    if reference_tasks:  # slow (the NumPy model generates token by token); the exact modes give the same answers
        t0 = time.time()
        score = evaluate.evaluate(evaluate.generator_fn(reference), reference.tokenizer, n)
        results["reference"] = {"tasks": score.table(), "seconds": round(time.time() - t0, 1)}
        print(f"reference (NumPy): {score.line()}", flush=True)
    # a bar over the modes on a terminal only (stderr); each mode's line goes above it, to stdout
    bar = tqdm(labels, desc="modes", unit="mode", file=sys.stderr, dynamic_ncols=True,
               disable=quiet or not sys.stderr.isatty() or None)
    with tempfile.TemporaryDirectory() as tmp, bar:
        for label in bar:
            bar.set_postfix_str(label)
            out = Path(tmp) / label.replace("/", "_").replace(":", "_").replace("@", "_at")
            t0 = time.time()
            options = modes.parse_label(label)
            export(ckpt, out, **options)
            row = {"options": options, "verify": verify_row(out, ckpt)}
            gen = Generator.from_folder(out)
            row["in_dist"] = in_dist(ref_logits, reply_logits(gen, seqs))
            score = evaluate.evaluate(evaluate.generator_fn(gen), gen.tokenizer, n)
            row["tasks"] = score.table()
            row["seconds"] = round(time.time() - t0, 1)
            results["modes"][label] = row
            save(results)
            tqdm.write(f"{label}: verify top-1 {row['verify']['top1']:.4f} KL {row['verify']['kl_mean']:.2e}; "
                       f"in-dist top-1 {row['in_dist']['top1']:.4f} KL {row['in_dist']['kl_mean']:.2e}; "
                       f"{score.line()}  ({row['seconds']} s)", file=sys.stdout)
            sys.stdout.flush()
    return results


def markdown(results: dict) -> str:
    task_names = list(next(iter(results["modes"].values()))["tasks"])
    head = ("| mode | verify max abs | verify mean abs | verify top-1 | verify KL mean | in-dist top-1 | "
            "in-dist KL mean | in-dist max abs | " + " | ".join(task_names) + " |")
    lines = [head, "|" + "---|" * (8 + len(task_names))]
    pct = lambda v: f"{100 * v:.0f} %"  # noqa: E731
    if results["reference"]:
        ref = results["reference"]["tasks"]
        lines.append("| NumPy reference (the checkpoint) | – | – | – | – | – | – | – | "
                     + " | ".join(pct(ref[t]) for t in task_names) + " |")
    for label, row in results["modes"].items():
        v, d, t = row["verify"], row["in_dist"], row["tasks"]
        lines.append(f"| {label} | {v['max_abs']:.2e} | {v['mean_abs']:.2e} | {v['top1']:.4f} | {v['kl_mean']:.1e} | "
                     f"{d['top1']:.4f} | {d['kl_mean']:.1e} | {d['max_abs']:.2e} | "
                     + " | ".join(pct(t[k]) for k in task_names) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", type=Path, default=None)
    p.add_argument("--n", type=int, default=100, help="held-out questions per task (task accuracy)")
    p.add_argument("--forced", type=int, default=10, help="teacher-forced conversations per task (in-dist)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated mode labels, {modes.LABEL_SYNTAX} (default: {', '.join(MODES)})")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--reference-tasks", action="store_true",
                   help="also score the NumPy reference model on the tasks (slow)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (it shows on a terminal only)")
    args = p.parse_args(argv)
    labels = [m.strip() for m in args.modes.split(",") if m.strip()]
    for label in labels:
        try:
            modes.parse_label(label)
        except MxportError as exc:
            p.error(f"--modes: {exc}")
    def save(results: dict) -> None:  # after every mode: a long run that is cut short keeps what it measured
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    results = measure(args.checkpoint or shipped(), labels, args.n, args.forced, save, args.reference_tasks,
                      args.quiet)
    save(results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
