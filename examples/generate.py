"""Generate from an exported folder with nothing but onnxruntime, numpy and tokenizers (no mxport import).

    mxport demo                                   # exports the built-in trained tiny gpt-oss into ~/.cache/mxport/demo
    python examples/generate.py ~/.cache/mxport/demo/chat-tiny/export

    # in a fresh venv:  pip install onnxruntime numpy tokenizers

The loop follows the model I/O contract (docs/ARCHITECTURE.md, "Model I/O"):
    prefill  input_ids [B,S], attention_mask [B,S] (0 for left padding), position_ids, every past [B,KV,0,D]
    step     the chosen ids [B,1], the mask one column longer, positions continue, each present.{i}.* fed back as
             past_key_values.{i}.* (a sliding layer's present in a window-cache export is already its last slots)
It stops at mxport.json's eos_token_ids. An export with native ai.mxport kernels (`--experts mxfp4 --dense
bfloat16`) needs the kernel library beside it (`mxport kernels --into FOLDER`, named in genai_config.json).
mxport's own Generator (`mxport run`, docs/GENERATION.md) adds streaming detokenization, stop strings, sampling
options and the chat formats in full (tools, histories); this script shows the loop.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

HARMONY_SYSTEM = ("You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n"
                  "Current date: 2025-06-28\n\nReasoning: low\n\n"
                  "# Valid channels: analysis, commentary, final. Channel must be included for every message.")


class Model:
    """An export folder: its ONNX Runtime session, tokenizer and stop ids."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "mxport.json").read_text())
        self.eos = set(self.meta.get("eos_token_ids") or [])
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        options = ort.SessionOptions()
        genai = self.folder / "genai_config.json"
        library = json.loads(genai.read_text())["model"]["decoder"]["session_options"].get(
            "custom_ops_library") if genai.is_file() else None
        if library:  # native ai.mxport kernels copied into the folder by `mxport kernels --into`
            options.register_custom_ops_library(str(self.folder / library))
        self.session = ort.InferenceSession(str(self.folder / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.pasts = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0) -> list[tuple[list[int], str]]:
        """Token ids of each prompt (a batch, left-padded) -> (new ids, finish reason) per prompt."""
        rng = np.random.default_rng(seed)
        B, S = len(prompts), max(len(p) for p in prompts)
        ids = np.zeros((B, S), np.int64)
        mask = np.zeros((B, S), np.int64)
        for b, p in enumerate(prompts):
            ids[b, S - len(p):], mask[b, S - len(p):] = p, 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        for past in self.pasts:  # [B, kv_heads, 0, head_dim], in the dtype the graph takes
            dtype = np.float16 if "float16" in past.type else np.float32
            feeds[past.name] = np.zeros((B, past.shape[1], 0, past.shape[3]), dtype)
        out: list[list[int]] = [[] for _ in prompts]
        done = [False] * B
        reasons = ["length"] * B
        for _ in range(max_new_tokens):
            feeds["position_ids"] = np.maximum(np.cumsum(feeds["attention_mask"], 1) - 1, 0)[:, -feeds["input_ids"].shape[1]:]
            names = [o.name for o in self.session.get_outputs()]
            results = dict(zip(names, self.session.run(None, feeds)))
            logits = results["logits"][:, -1].astype(np.float64)
            chosen = [self._choose(row, temperature, top_p, rng) for row in logits]
            for b, token in enumerate(chosen):
                if done[b]:
                    continue
                if token in self.eos:
                    done[b], reasons[b] = True, "stop"
                else:
                    out[b].append(token)
            if all(done):
                break
            feeds = {"input_ids": np.array(chosen, np.int64)[:, None],
                     "attention_mask": np.concatenate([feeds["attention_mask"], np.ones((B, 1), np.int64)], 1),
                     **{name.replace("present.", "past_key_values.", 1): value
                        for name, value in results.items() if name.startswith("present.")}}
        return list(zip(out, reasons))

    @staticmethod
    def _choose(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
        if temperature <= 0:
            return int(np.argmax(logits))
        p = np.exp((logits - logits.max()) / temperature)
        p /= p.sum()
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]  # the nucleus
        return int(rng.choice(keep, p=p[keep] / p[keep].sum()))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def chat_turn(model: Model, question: str, max_new_tokens: int) -> tuple[str, str, int] | None:
    """One chat turn in the family's format -> (reasoning, answer, tool calls), or None (no chat format).
    gpt-oss: harmony with low reasoning; Qwen3: ChatML with thinking off (its template's enable_thinking=false)."""
    family = model.meta.get("family")
    tok = model.tokenizer
    if family == "gpt_oss":
        prompt = (model.encode(f"<|start|>system<|message|>{HARMONY_SYSTEM}<|end|><|start|>user<|message|>")
                  + tok.encode(question, add_special_tokens=False).ids  # text only: no special tokens from users
                  + model.encode("<|end|><|start|>assistant"))
        stops = {tok.token_to_id("<|return|>"), tok.token_to_id("<|call|>")}
    elif family in ("qwen3", "qwen3_moe"):
        prompt = model.encode(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
                              "<think>\n\n</think>\n\n")
        stops = {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")}
    else:
        return None
    eos, model.eos = model.eos, model.eos | stops
    try:
        ids, _ = model.generate([prompt], max_new_tokens)[0]
    finally:
        model.eos = eos
    text = model.decode(ids)
    if family == "gpt_oss":  # messages: [<|start|>assistant]<|channel|>NAME<|message|>TEXT<|end|> ...
        reasoning, answer, calls = "", "", 0
        for message in text.split("<|start|>"):
            head, _, body = message.partition("<|message|>")
            body = body.split("<|end|>")[0]
            if " to=" in head:
                calls += 1
            elif "<|channel|>final" in head:
                answer += body
            elif "<|channel|>analysis" in head:
                reasoning += body
        return reasoning, answer, calls
    reasoning, _, answer = text.rpartition("</think>")
    return reasoning.replace("<think>", "").strip(), answer.strip(), answer.count("<tool_call>")


def main(folder: str) -> None:
    model = Model(folder)
    print(f"backend: onnxruntime {ort.__version__} ({model.meta.get('family')}, {model.session.get_providers()[0]})")

    # 1. greedy
    ids, _ = model.generate([model.encode("The capital of France is")], max_new_tokens=16)[0]
    print(model.decode(ids))

    # 2. a batch of prompts of different lengths (left-padded), sampled with a seed (same seed -> same text)
    batch = [model.encode("Hello"), model.encode("Once upon a time there was")]
    for ids, reason in model.generate(batch, max_new_tokens=12, temperature=0.8, top_p=0.95, seed=0):
        print(f"{reason:>11}: {model.decode(ids)!r}")

    # 3. one chat turn in the family's format; a family without one (GPT-2) stops here
    turn = chat_turn(model, "What is 2 + 2?", max_new_tokens=160)
    if turn is None:
        print(f"no chat: the {model.meta.get('family')} model family has no chat format")
        return
    reasoning, answer, calls = turn
    print(f"answer: {answer}")
    print(f"[reasoning: {len(reasoning)} chars, tool calls: {calls}]")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")
