"""Held-out task accuracy of a model through a generate function: mxport's Generator or torch.

    items = tasks.held_out_set(n per task)  ->  prompts (mxport's harmony rendering)
        -> greedy replies (batched) -> Harmony.parse -> final channel -> tasks.check_answer -> per-task accuracy
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mxport.runtime.chat.harmony import Harmony
from mxport.runtime.generation.tokenizer import Tokenizer

import chat_format
import tasks

MAX_NEW_TOKENS = 128  # the longest reply of the training data is ~80 tokens (vocab 768)

# generate(batch of prompt ids, stop ids, max_new_tokens) -> per prompt: (reply ids without stop, stop id or None)
GenerateFn = Callable[[list[list[int]], tuple[int, ...], int], list[tuple[list[int], int | None]]]


@dataclass
class Score:
    correct: dict[str, int]
    total: dict[str, int]
    failures: list[tuple[str, str, str]]  # (question, expected, final given)

    def accuracy(self, task: str) -> float:
        return self.correct[task] / self.total[task] if self.total.get(task) else float("nan")

    def table(self) -> dict[str, float]:
        return {t: round(self.accuracy(t), 4) for t in self.total}

    def line(self) -> str:
        return "  ".join(f"{t} {100 * self.accuracy(t):5.1f}%" for t in self.total)


def evaluate(generate: GenerateFn, tokenizer: Tokenizer, n_per_task: int, *, seed: int = 1234,
             batch: int = 32, task_names: Sequence[str] = tasks.TASKS,
             max_new_tokens: int = MAX_NEW_TOKENS) -> Score:
    harmony = Harmony(tokenizer)
    items = tasks.held_out_set(n_per_task, seed, tuple(task_names))
    prompts = [chat_format.prompt_ids(harmony, ex, date) for ex, date in items]
    score = Score({t: 0 for t in task_names}, {t: 0 for t in task_names}, [])
    for start in range(0, len(items), batch):
        outs = generate(prompts[start : start + batch], harmony.stop_token_ids, max_new_tokens)
        for (ex, _), (ids, stop) in zip(items[start : start + batch], outs):
            final = harmony.parse(ids, stop).final
            ok = tasks.check_answer(ex.task, final, ex.answer)
            score.total[ex.task] += 1
            score.correct[ex.task] += ok
            if not ok:
                score.failures.append((ex.question, ex.answer, final))
    return score


def generator_fn(gen) -> GenerateFn:
    """mxport's Generator (ORT or NumPy) as a GenerateFn (greedy)."""

    def run(prompts, stops, max_new_tokens):
        outs = gen.generate(prompts, max_new_tokens=max_new_tokens, stop_token_ids=stops)
        return [(list(g.token_ids), g.stop_token_id) for g in outs]

    return run
