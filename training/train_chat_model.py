"""Train the tiny gpt-oss chat model that mxport ships as its built-in default (mxport/data/chat-tiny).

    python training/train_chat_model.py --out work/chat-tiny              # the shipped model (see --help)
    python training/train_chat_model.py --smoke --out /tmp/smoke          # end to end in seconds (tested)

Needs the `train` extra (torch, transformers). Steps:

    tokenizer (chat_format.build_tokenizer: byte-level BPE, digits split, harmony specials)
    -> transformers GptOssForCausalLM, a tiny config of gpt-oss' architecture (alternating sliding/full
       layers, GQA, sinks, MoE top-k, YaRN as gpt-oss), initialised from --seed
    -> AdamW on synthetic harmony conversations generated on the fly (tasks.py), loss on the reply only
    -> the last --qat-steps with fake quantisation (MXFP4 experts, bf16 rest; straight-through gradients)
    -> checkpoint (checkpoint_io: experts packed by mxport.ops.mxfp4.encode, bf16 dense, tokenizer files,
       chat template) every --eval-every steps and at the end, with held-out accuracy per task
    -> final held-out accuracy of the checkpoint as written: in transformers (Mxfp4Config(dequantize=True)) and,
       with --mxport-eval, through mxport's portable export on ONNX Runtime (Generator).

Deterministic for a seed and a thread count (--threads; CPU reductions depend on the thread split).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import chat_format  # noqa: E402
import checkpoint_io  # noqa: E402
import evaluate  # noqa: E402
from mxport.exporter.families.gpt_oss.config import GptOssConfig  # noqa: E402
from mxport.runtime.chat.harmony import IDENTITY, KNOWLEDGE_CUTOFF, Harmony  # noqa: E402
from mxport.runtime.generation.tokenizer import Tokenizer  # noqa: E402

# name -> (vocab, hidden, intermediate, layers, heads, kv heads, head_dim, experts, top-k, window)
SHAPES = {
    "chat-tiny": (768, 128, 128, 4, 4, 2, 32, 8, 2, 32),
    "smoke": (300, 32, 32, 2, 2, 1, 16, 4, 2, 8),
}


def model_config(shape: str, tokenizer) -> GptOssConfig:
    V, H, I, L, NH, KV, D, E, K, W = SHAPES[shape]
    return GptOssConfig(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L,
                       num_attention_heads=NH, num_key_value_heads=KV, head_dim=D, num_experts=E,
                       experts_per_token=K, sliding_window=W,
                       eos_token_ids=(tokenizer.require("<|return|>"), tokenizer.require("<|call|>")),
                       pad_token_id=tokenizer.require("<|endoftext|>"))


def torch_model(cfg: GptOssConfig, seed: int, aux_loss: float):
    from transformers import GptOssConfig, GptOssForCausalLM

    d = {k: v for k, v in cfg.to_hf_dict().items()
         if k not in ("quantization_config", "architectures", "model_type", "torch_dtype")}
    d.update(output_router_logits=False, router_aux_loss_coef=aux_loss)
    torch.manual_seed(seed)
    model = GptOssForCausalLM(GptOssConfig(**d, attn_implementation="eager"))
    return model.float()


def chat_template() -> str:
    """Harmony as mxport renders it (runtime/chat/harmony.py), for transformers' apply_chat_template:
    reasoning_effort= and current_date= are template variables; history keeps final answers only."""
    return (
        "{%- set effort = reasoning_effort | default('medium') -%}"
        "{%- set date = current_date | default(strftime_now('%Y-%m-%d')) -%}"
        "<|start|>system<|message|>" + IDENTITY.replace("'", "\\'") + "\\nKnowledge cutoff: " + KNOWLEDGE_CUTOFF
        + "\\nCurrent date: {{ date }}\\n\\nReasoning: {{ effort }}\\n\\n# Valid channels: analysis, commentary,"
        " final. Channel must be included for every message.<|end|>"
        "{%- for m in messages -%}"
        "{%- if m.role == 'system' or m.role == 'developer' -%}"
        "<|start|>developer<|message|># Instructions\\n\\n{{ m.content }}<|end|>"
        "{%- elif m.role == 'user' -%}<|start|>user<|message|>{{ m.content }}<|end|>"
        "{%- elif m.role == 'assistant' -%}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>"
        "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
    ).replace("\\n", "\n")


def save_tokenizer(tokenizer, folder: Path, cfg: GptOssConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_position_embeddings,
              "eos_token": "<|return|>", "pad_token": "<|endoftext|>", "bos_token": None,
              "clean_up_tokenization_spaces": False, "chat_template": chat_template()}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def batch_tensors(harmony: Harmony, rng: random.Random, batch: int, pad: int, weights=None):
    """input_ids, labels [B, S] (right-padded; labels -100 outside the replies)."""
    rows = [chat_format.training_example(harmony, rng, weights=weights) for _ in range(batch)]
    S = max(len(ids) for ids, _ in rows)
    ids = torch.full((batch, S), pad, dtype=torch.long)
    labels = torch.full((batch, S), -100, dtype=torch.long)
    for b, (seq, start) in enumerate(rows):
        ids[b, : len(seq)] = torch.tensor(seq)
        labels[b, start : len(seq)] = torch.tensor(seq[start:])
    return ids, labels


def torch_generate_fn(model, pad: int) -> evaluate.GenerateFn:
    """Greedy batched generation in transformers (left padding, KV cache)."""

    @torch.no_grad()
    def run(prompts, stops, max_new_tokens):
        S = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (S - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (S - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=list(stops), pad_token_id=pad)
        res = []
        for row in out[:, S:].tolist():
            stop = next((i for i, t in enumerate(row) if t in stops), None)
            res.append((row, None) if stop is None else (row[:stop], row[stop]))
        return res

    return run


def mxport_score(ckpt: Path, n: int, seed: int):
    """Held-out accuracy through mxport: portable export on ONNX Runtime, mxport's Generator."""
    from mxport.exporter.export import export
    from mxport.runtime.generation.generate import Generator

    with tempfile.TemporaryDirectory() as tmp:
        export(ckpt, Path(tmp) / "onnx", progress=False)
        gen = Generator.from_folder(Path(tmp) / "onnx")
        return evaluate.evaluate(evaluate.generator_fn(gen), gen.tokenizer, n, seed=seed)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder (written atomically, refreshed)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="chat-tiny")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--qat-steps", type=int, default=400, help="last steps with fake MXFP4/bf16 weights")
    p.add_argument("--aux-loss", type=float, default=0.01, help="router load-balancing loss coefficient")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-n", type=int, default=20, help="held-out questions per task at each checkpoint")
    p.add_argument("--final-eval-n", type=int, default=100, help="held-out questions per task at the end")
    p.add_argument("--mxport-eval", action="store_true", help="also score the final checkpoint through mxport")
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop after this many steps of the --steps schedule (write the checkpoint there)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from a checkpoint this script wrote (its tokenizer, config and weights as stored)")
    p.add_argument("--weights", default=None,
                   help="task mix, e.g. sum=0.33,diff=0.3,capital=0.15,letters=0.12,chat=0.1 "
                        f"(default {','.join(f'{k}={v}' for k, v in chat_format.TASK_WEIGHTS.items())})")
    p.add_argument("--smoke", action="store_true", help="tiny shape, few steps: end to end in seconds")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (it shows on a terminal only)")
    args = p.parse_args(argv)
    if args.smoke:
        args.shape, args.steps, args.batch, args.warmup, args.qat_steps = "smoke", 6, 4, 2, 2
        args.eval_every, args.eval_n, args.final_eval_n = 6, 1, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    t_start = time.time()
    weights = None
    if args.weights:
        weights = {k: float(v) for k, v in (kv.split("=") for kv in args.weights.split(","))}
        if set(weights) - set(chat_format.TASK_WEIGHTS):
            raise SystemExit(f"--weights: unknown tasks {sorted(set(weights) - set(chat_format.TASK_WEIGHTS))}")
    if args.init_from is not None:  # a second stage: same tokenizer and shape, weights as the checkpoint stores them
        tokenizer = Tokenizer.from_file(args.init_from / "tokenizer.json")
        cfg = GptOssConfig.from_file(args.init_from / "config.json")
        torch.manual_seed(args.seed)
        model = checkpoint_io.load_shipped(args.init_from, attn_implementation="eager")
        model.config.router_aux_loss_coef = model.router_aux_loss_coef = args.aux_loss
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        tokenizer = chat_format.build_tokenizer(SHAPES[args.shape][0], seed=args.seed,
                                                corpus_examples=200 if args.smoke else 3000)
        cfg = model_config(args.shape, tokenizer)
        model = torch_model(cfg, args.seed, args.aux_loss)
    harmony = Harmony(tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {args.shape}: {n_params / 1e6:.2f} M parameters; {cfg.num_hidden_layers} layers "
          f"{cfg.layer_types}, hidden {cfg.hidden_size}, {cfg.num_experts} experts top-{cfg.experts_per_token}, "
          f"vocab {cfg.vocab_size}", flush=True)
    tok_tmp = tempfile.TemporaryDirectory(prefix="chat-tok-")  # removed when main returns (or the run dies)
    tok_dir = Path(tok_tmp.name)
    save_tokenizer(tokenizer, tok_dir, cfg)
    pad = cfg.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    rng = random.Random(args.seed)
    log = {"args": {k: str(v) for k, v in vars(args).items()}, "evals": []}
    qat_from = args.steps - args.qat_steps
    loss_avg, tokens = None, 0
    last = min(args.steps, args.stop_at or args.steps)
    # a bar over the steps on a terminal only (stderr); the step and eval lines go above it, to stdout
    bar = tqdm(total=last, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=args.quiet or not sys.stderr.isatty() or None)
    say = lambda line: tqdm.write(line, file=sys.stdout) if not bar.disable else print(line, flush=True)  # noqa: E731
    for step in range(last):
        if step == qat_from and args.qat_steps > 0:
            checkpoint_io.add_fake_quant(model)
            opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        model.train()
        ids, labels = batch_tensors(harmony, rng, args.batch, pad, weights)
        out = model(input_ids=ids, labels=labels, output_router_logits=args.aux_loss > 0)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += ids.numel()
        loss = out.loss.item()
        loss_avg = loss if loss_avg is None else 0.98 * loss_avg + 0.02 * loss
        bar.update(1)
        if step % 50 == 0 or step == last - 1:
            say(f"step {step} loss {loss:.4f} avg {loss_avg:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{tokens / (time.time() - t_start):.0f} tok/s {time.time() - t_start:.0f} s")
        if (step + 1) % args.eval_every == 0 or step == last - 1:
            model.eval()
            score = evaluate.evaluate(torch_generate_fn(model, pad), tokenizer, args.eval_n, seed=1234 + step)
            entry = {"step": step + 1, "seconds": round(time.time() - t_start), "loss": round(loss_avg, 4),
                     "heldout_torch_fp32": score.table()}
            log["evals"].append(entry)
            say(f"eval step {step + 1}: {score.line()}")
            state = None
            if parametrized := any(checkpoint_io.parametrize.is_parametrized(m) for m in model.modules()):
                state = {k: v.clone() for k, v in model.state_dict().items()}
                checkpoint_io.remove_fake_quant(model)
            checkpoint_io.write_hf_checkpoint(model, cfg, tok_dir, args.out, extra=log)
            if parametrized:
                checkpoint_io.add_fake_quant(model)
                model.load_state_dict(state)
    bar.close()
    checkpoint_io.remove_fake_quant(model)  # the fp32 master weights; writing quantizes them as the QAT forward did
    # the checkpoint as written, read back as transformers reads it
    shipped = checkpoint_io.load_shipped(args.out)
    score = evaluate.evaluate(torch_generate_fn(shipped, pad), tokenizer, args.final_eval_n)
    print(f"held-out accuracy, transformers on the written checkpoint: {score.line()}", flush=True)
    log["final"] = {"seconds": round(time.time() - t_start), "heldout_torch": score.table(),
                    "n_per_task": args.final_eval_n}
    if args.mxport_eval:
        mscore = mxport_score(args.out, args.final_eval_n, 1234)
        print(f"held-out accuracy, mxport portable export on ONNX Runtime: {mscore.line()}", flush=True)
        log["final"]["heldout_mxport_portable"] = mscore.table()
    checkpoint_io.write_hf_checkpoint(model, cfg, tok_dir, args.out, extra=log)
    print(f"wrote {args.out} in {time.time() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
