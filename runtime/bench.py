"""`mxport bench`: prefill and decode speed, memory and size of exports, side by side with their peers.

    mxport bench CKPT_OR_OUT [--peers] [--threads N] [--prompt-len N] [--new-tokens N] [--modes M,...]
                 [--work DIR] [--json FILE]

    CKPT  (config.json + *.safetensors): exports every --modes entry (target/experts, default
          cpu/fp32,cpu/int8,cpu/int4,cpu/int4/int4,portable/mxfp4; a third part is --dense, a "+last" suffix
          exports with last-position logits) into --work (a temp folder unless given) and measures each;
          --peers adds transformers on CPU (float32) and onnxruntime-genai's fp32 and int4 exports when
          onnxruntime_genai is installed (built offline with its builder; a checkpoint without tokenizer.json
          gets a stand-in byte-level tokenizer in a shadow folder, since the builder insists on one).
    OUT   (an export folder with mxport.json): measures that folder (and the peers of its checkpoint).

Every measurement runs in its own child process (`python -m mxport.runtime.bench --child ...`), so peak RSS
(VmHWM) is that engine's alone. Batch 1, greedy, random prompt ids (seeded). Per engine:

    prefill tok/s   prompt_len / time of the first call (prompt -> logits)          best of REPEATS runs
    decode tok/s    new_tokens / time of new_tokens cached one-token calls          best of REPEATS runs
    peak RSS        whole process, after warm-up and the timed run
    file MB         model files on disk (onnx + data, or safetensors)
    weights MB      bytes of every initializer (what a session must hold)
    MB/token        weights one decode step reads: dense matrices, k of E experts per MoE layer, lm_head,
                    one embedding row (from the graph: an initializer read by Gather counts one row, MoE
                    expert inputs count k/E, rotary caches one row, a constant Cast counts its cast size since
                    ORT folds it at load)
    bw share        decode tok/s x MB/token / measured memory bandwidth (numpy copy, read + write counted)

Benchmarks are not timed tests: tests/runtime/test_bench.py checks the plumbing on the tiny preset only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mxport.errors import MxportError

DEFAULT_MODES = ("cpu/fp32", "cpu/int8", "cpu/int4", "cpu/int4/int4", "portable/mxfp4")  # target/experts[/dense]
ROTARY_TABLES = {("com.microsoft", "GroupQueryAttention"): (7, 8), ("com.microsoft", "RotaryEmbedding"): (2, 3)}
MOE_OPS = {("com.microsoft", "MoE"), ("com.microsoft", "QMoE"), ("ai.mxport", "MoE"), ("ai.mxport", "MoEMXFP4")}


@dataclass
class Result:
    name: str  # "mxport cpu/fp32", "genai int4", "transformers fp32"
    path: str
    file_bytes: int = 0
    weight_bytes: int = 0
    bytes_per_token: int = 0
    prefill_tok_s: float = float("nan")
    decode_tok_s: float = float("nan")
    peak_rss: int = 0
    load_s: float = float("nan")
    error: str = ""
    notes: list[str] = field(default_factory=list)

    def bandwidth_share(self, bandwidth: float) -> float:
        return self.decode_tok_s * self.bytes_per_token / bandwidth if bandwidth > 0 else float("nan")


# ---- machine -------------------------------------------------------------------------------------------------
def memory_bandwidth(megabytes: int = 256, repeats: int = 7) -> float:
    """Sustained copy bandwidth in bytes/s (best of `repeats`; bytes read + bytes written)."""
    src = np.ones(megabytes * (1 << 20) // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


# ---- sizes and traffic ---------------------------------------------------------------------------------------
def file_bytes(folder: Path) -> int:
    folder = Path(folder)
    files = [f for f in folder.iterdir() if f.is_file() and (f.suffix in (".onnx", ".data", ".safetensors") or
                                                          f.name.endswith(".onnx.data"))]
    return sum(f.stat().st_size for f in files)


def _tensor_bytes(t) -> int:
    from onnx import helper

    for entry in t.external_data:
        if entry.key == "length":
            return int(entry.value)
    if t.raw_data:
        return len(t.raw_data)
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    bits = {16: 4, 17: 8, 21: 4, 22: 4, 23: 4, 24: 8, 25: 4}.get(t.data_type)  # 4-bit / 8-bit float types
    if bits is not None:
        return (n * bits + 7) // 8
    return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def onnx_traffic(model_file: Path) -> tuple[int, int]:
    """(bytes of all initializers, bytes one decode step reads) of an ONNX model, read without its data."""
    import onnx
    from onnx import helper

    model = onnx.load(str(model_file), load_external_data=False)
    g = model.graph
    sizes = {t.name: (_tensor_bytes(t), list(t.dims)) for t in g.initializer}
    share: dict[str, float] = {}
    widen: dict[str, float] = {}
    for node in g.node:
        key = (node.domain or "", node.op_type)
        if key in MOE_OPS:
            k = next((a.i for a in node.attribute if a.name == "k"), 1)
            experts = next((sizes[i][1][0] for i in node.input[2:] if i in sizes and len(sizes[i][1]) == 3), None)
            for name in node.input[2:]:
                if name in sizes and experts and sizes[name][1] and sizes[name][1][0] == experts:
                    share[name] = min(share.get(name, 1.0), k / experts)
        elif key == ("", "Gather") and node.input[0] in sizes and sizes[node.input[0]][1]:
            share[node.input[0]] = min(share.get(node.input[0], 1.0), 1.0 / sizes[node.input[0]][1][0])
        elif key in ROTARY_TABLES:  # cos/sin caches: a step reads the rows of its positions only
            for i in ROTARY_TABLES[key]:
                name = node.input[i] if i < len(node.input) else ""
                if name in sizes and sizes[name][1]:
                    share[name] = min(share.get(name, 1.0), 1.0 / sizes[name][1][0])
        elif key == ("", "Cast") and node.input[0] in sizes:
            # a constant Cast is folded by ORT at load: the session holds (and a step reads) the cast copy
            to = next(a.i for a in node.attribute if a.name == "to")
            src = next(t for t in g.initializer if t.name == node.input[0])
            widen[node.input[0]] = (helper.tensor_dtype_to_np_dtype(to).itemsize
                                    / helper.tensor_dtype_to_np_dtype(src.data_type).itemsize)
    total = sum(b for b, _ in sizes.values())
    per_token = sum(b * share.get(name, 1.0) * widen.get(name, 1.0) for name, (b, _) in sizes.items())
    return total, int(per_token)


def torch_traffic(model, k: int, experts: int) -> tuple[int, int]:
    """Same for a transformers model: expert parameters count k/E, the embedding one row."""
    total = per_token = 0
    for name, p in model.named_parameters():
        b = p.numel() * p.element_size()
        total += b
        if ".experts." in name:
            per_token += b * k / experts
        elif "embed_tokens" in name:
            per_token += b / p.shape[0]
        else:
            per_token += b
    return total, int(per_token)


# ---- engines (each runs in a child process) ----------------------------------------------------------------
def _prompt(vocab: int, n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(3, vocab, size=(1, n), dtype=np.int64)


def _peak_rss() -> int:
    """This process's peak resident set in bytes: VmHWM (reset by exec, unlike getrusage's ru_maxrss, which a
    child inherits from the parent that forked it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


REPEATS = 3  # timed runs per engine; the fastest counts (the machine is shared: the minimum is the least disturbed)


def _best(run, prompt_len: int, new_tokens: int) -> tuple[float, float]:
    times = [run(prompt_len, new_tokens) for _ in range(REPEATS)]
    return min(t[0] for t in times), min(t[1] for t in times)


def measure_mxport(folder: str, threads: int, prompt_len: int, new_tokens: int) -> dict[str, Any]:
    import onnxruntime as ort

    from mxport.runtime.session import OrtStepModel, read_export_meta

    vocab = int(read_export_meta(folder)["config"]["vocab_size"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    t = time.perf_counter()
    model = OrtStepModel(folder, "cpu", session_options=so)
    load = time.perf_counter() - t

    def run(n_prompt: int, n_new: int) -> tuple[float, float]:
        ids = _prompt(vocab, n_prompt)
        mask = np.ones_like(ids)
        t0 = time.perf_counter()
        logits, cache = model.step(ids, mask, np.arange(n_prompt, dtype=np.int64)[None], model.new_cache(1))
        t1 = time.perf_counter()
        for i in range(n_new):
            nxt = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
            mask = np.ones((1, mask.shape[1] + 1), np.int64)
            logits, cache = model.step(nxt, mask, np.array([[n_prompt + i]], np.int64), cache)
        return t1 - t0, time.perf_counter() - t1

    run(min(prompt_len, 8), 2)  # warm-up: allocations, prepacking
    prefill, decode = _best(run, prompt_len, new_tokens)
    return dict(load_s=load, prefill_s=prefill, decode_s=decode, peak_rss=_peak_rss())


def measure_genai(folder: str, threads: int, prompt_len: int, new_tokens: int) -> dict[str, Any]:
    import onnxruntime_genai as og

    cfg = json.loads((Path(folder) / "genai_config.json").read_text())
    vocab = int(cfg["model"]["vocab_size"])
    # genai sizes its KV buffers from max_length; a sliding-window cache must hold at least the window
    window = int((cfg["model"]["decoder"].get("sliding_window") or {}).get("window_size", 0))
    t = time.perf_counter()
    config = og.Config(folder)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    load = time.perf_counter() - t

    def run(n_prompt: int, n_new: int) -> tuple[float, float]:
        params = og.GeneratorParams(model)
        # max_length bounds the shared KV buffer genai allocates (its default is the whole context)
        # min_length keeps an EOS from ending the run early (genai stops at EOS; calls after that do nothing)
        total = n_prompt + n_new + 1
        params.set_search_options(max_length=max(total, window + 1), min_length=total, do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(_prompt(vocab, n_prompt))
        t1 = time.perf_counter()
        for _ in range(n_new):
            gen.generate_next_token()
        t2 = time.perf_counter()
        steps = len(gen.get_sequence(0)) - n_prompt
        if steps < n_new:
            raise RuntimeError(f"genai generated {steps} of {n_new} tokens (stopped early): decode not measured")
        return t1 - t0, t2 - t1

    run(min(prompt_len, 8), 2)
    prefill, decode = _best(run, prompt_len, new_tokens)
    return dict(load_s=load, prefill_s=prefill, decode_s=decode, peak_rss=_peak_rss())


def measure_transformers(checkpoint: str, threads: int, prompt_len: int, new_tokens: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    t = time.perf_counter()
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    if cfg.get("quantization_config", {}).get("quant_method") == "mxfp4":
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, **kwargs).eval()
    load = time.perf_counter() - t
    total, per_token = torch_traffic(model, model.config.num_experts_per_tok, model.config.num_local_experts)

    @torch.inference_mode()
    def run(n_prompt: int, n_new: int) -> tuple[float, float]:
        ids = torch.from_numpy(_prompt(model.config.vocab_size, n_prompt))
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        t1 = time.perf_counter()
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(n_new):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        return t1 - t0, time.perf_counter() - t1

    run(min(prompt_len, 8), 2)
    prefill, decode = _best(run, prompt_len, new_tokens)
    return dict(load_s=load, prefill_s=prefill, decode_s=decode, peak_rss=_peak_rss(),
                weight_bytes=total, bytes_per_token=per_token)


ENGINES = {"mxport": measure_mxport, "genai": measure_genai, "transformers": measure_transformers}


def _child(kind: str, path: str, threads: int, prompt_len: int, new_tokens: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mxport.runtime.bench", "--child", kind, path, str(threads), str(prompt_len),
           str(new_tokens)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: {' | '.join(tail)[:400]}"}
    return json.loads(lines[-1])


def _keep_best(result: Result, measured: dict[str, Any], prompt_len: int, new_tokens: int) -> Result:
    """Fold one measurement into `result`: best speeds and load time, largest peak RSS, first error."""
    if "error" in measured:
        result.error = result.error or measured["error"]
        return result
    result.load_s = min(result.load_s, measured["load_s"]) if result.load_s == result.load_s else measured["load_s"]
    result.prefill_tok_s = max(v for v in (result.prefill_tok_s, prompt_len / measured["prefill_s"]) if v == v)
    result.decode_tok_s = max(v for v in (result.decode_tok_s, new_tokens / measured["decode_s"]) if v == v)
    result.peak_rss = max(result.peak_rss, measured["peak_rss"])
    if "weight_bytes" in measured:
        result.weight_bytes, result.bytes_per_token = measured["weight_bytes"], measured["bytes_per_token"]
    return result


# ---- what to measure -----------------------------------------------------------------------------------------
def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _export_modes(ckpt: Path, modes: list[str], work: Path, last_logits: bool = False) -> list[tuple[str, Path]]:
    from mxport.exporter.export import export

    out = []
    for mode in modes:
        last = last_logits or mode.endswith("+last")
        mode = mode.removesuffix("+last")
        parts = mode.split("/")
        if not 1 <= len(parts) <= 3:
            raise MxportError(f"bench: --modes entry {mode!r}: expected TARGET/EXPERTS[/DENSE], e.g. cpu/int4/int4")
        target, experts, dense = (parts + ["mxfp4", "float32"][len(parts) - 1 :])[:3]
        folder = work / (f"mxport-{target}-{experts}" + (f"-dense-{dense}" if dense != "float32" else "")
                         + ("-last" if last else ""))
        if not (folder / "mxport.json").is_file():
            export(ckpt, folder, target=target, experts=experts, dense=dense, last_logits=last,
                   progress=False, force=True)
        out.append((mode + (" last-logits" if last else ""), folder))
    return out


def _genai_checkpoint(ckpt: Path, work: Path) -> Path:
    """The checkpoint as the genai builder wants it: with tokenizer files (a stand-in if the checkpoint has none)."""
    if (ckpt / "tokenizer.json").is_file():
        return ckpt
    shadow = work / "genai-input"
    shadow.mkdir(parents=True, exist_ok=True)
    for f in ckpt.iterdir():
        if f.is_file() and not (shadow / f.name).exists():
            (shadow / f.name).symlink_to(f.resolve())
    if not (shadow / "tokenizer.json").is_file():
        from mxport.exporter.config import ModelConfig
        from mxport.runtime.tokenizer import build_harmony_tokenizer

        vocab = ModelConfig.from_file(ckpt / "config.json").vocab_size
        build_harmony_tokenizer(vocab).save(shadow / "tokenizer.json")
        (shadow / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return shadow


def _genai_exports(ckpt: Path, work: Path, timeout: float) -> list[tuple[str, Path | None, str]]:
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return [("genai", None, "onnxruntime_genai is not installed")]
    src = _genai_checkpoint(ckpt, work)
    out = []
    for precision in ("fp32", "int4"):
        folder = work / f"genai-{precision}"
        if not (folder / "genai_config.json").is_file():
            cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(folder),
                   "-p", precision, "-e", "cpu", "-c", str(work / "genai-cache")]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                out.append((f"genai {precision}", None, f"builder timed out after {timeout:.0f}s"))
                continue
            if done.returncode != 0 or not (folder / "genai_config.json").is_file():
                tail = done.stderr.strip().splitlines()[-1:] if done.stderr else []
                out.append((f"genai {precision}", None, f"builder failed: {' '.join(tail)[:300]}"))
                continue
        out.append((f"genai {precision}", folder, ""))
    return out


def bench(path: str | os.PathLike, *, peers: bool = False, threads: int = 2, prompt_len: int = 128,
          new_tokens: int = 32, modes: list[str] | None = None, work: str | os.PathLike | None = None,
          timeout: float = 1800.0, bandwidth_mb: int = 256, rounds: int = 1, last_logits: bool = False,
          log=print) -> tuple[list[Result], float]:
    """Measure; returns (results, memory bandwidth in bytes/s).

    rounds > 1 runs the whole engine list that many times, in order, and keeps each engine's best speeds (and
    its largest RSS): on a shared machine, load drifts over minutes, and one pass would favour whichever
    engine ran in a quiet moment."""
    from mxport.runtime.session import read_export_meta

    path = Path(path)
    if not path.is_dir():
        raise MxportError(f"bench: {path} is not a folder (expected a checkpoint or an export folder)")
    if min(prompt_len, new_tokens, threads, rounds) < 1:
        raise MxportError("bench: --prompt-len, --new-tokens, --threads and --rounds must be >= 1")
    work_dir = Path(work) if work else Path(tempfile.mkdtemp(prefix="mxport-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    if (path / "mxport.json").is_file():
        meta = read_export_meta(path)
        mode = f"{meta.get('target', '?')}/{meta.get('experts', '?')}"
        if meta.get("dense", "float32") != "float32":
            mode += f"/{meta['dense']}"
        if meta.get("last_logits"):
            mode += " last-logits"
        folders = [(mode, path)]
        ckpt = Path(meta.get("checkpoint", ""))
    elif _is_checkpoint(path):
        ckpt = path
        log(f"exporting {', '.join(modes or DEFAULT_MODES)} into {work_dir}")
        folders = _export_modes(path, list(modes or DEFAULT_MODES), work_dir, last_logits)
    else:
        raise MxportError(f"bench: {path} is neither a checkpoint (config.json + *.safetensors) nor an export "
                          "folder (mxport.json)")
    log("measuring memory bandwidth")
    bandwidth = memory_bandwidth(bandwidth_mb)
    results = []
    jobs: list[tuple[Result, str, str]] = []
    for mode, folder in folders:
        total, per_token = onnx_traffic(folder / "model.onnx")
        jobs.append((Result(f"mxport {mode}", str(folder), file_bytes(folder), total, per_token), "mxport", str(folder)))
    if peers:
        if not _is_checkpoint(ckpt):
            log(f"peers skipped: checkpoint {ckpt} not found")
        else:
            jobs.append((Result("transformers fp32", str(ckpt), file_bytes(ckpt)), "transformers", str(ckpt)))
            for name, folder, why in _genai_exports(ckpt, work_dir, timeout):
                if folder is None:
                    results.append(Result(name, "", error=why))
                    continue
                total, per_token = onnx_traffic(folder / "model.onnx")
                jobs.append((Result(name, str(folder), file_bytes(folder), total, per_token), "genai", str(folder)))
    for round_ in range(rounds):
        for result, kind, where in jobs:
            log(f"running {result.name}" + (f" (round {round_ + 1}/{rounds})" if rounds > 1 else ""))
            _keep_best(result, _child(kind, where, threads, prompt_len, new_tokens, timeout), prompt_len, new_tokens)
    results += [r for r, _, _ in jobs]
    if not work:
        shutil.rmtree(work_dir, ignore_errors=True)
    return results, bandwidth


def format_results(results: list[Result], bandwidth: float) -> str:
    head = ("engine", "prefill tok/s", "decode tok/s", "peak RSS MB", "RSS/weights", "file MB", "weights MB",
            "MB/token", "bw share")
    rows = []
    for r in results:
        if r.error:
            rows.append((r.name, "-", "-", "-", "-", "-", "-", "-", f"error: {r.error}"))
            continue
        rows.append((r.name, f"{r.prefill_tok_s:.1f}", f"{r.decode_tok_s:.2f}", f"{r.peak_rss / 1e6:.0f}",
                     f"{r.peak_rss / r.weight_bytes:.2f}" if r.weight_bytes else "-", f"{r.file_bytes / 1e6:.0f}",
                     f"{r.weight_bytes / 1e6:.0f}", f"{r.bytes_per_token / 1e6:.1f}",
                     f"{r.bandwidth_share(bandwidth):.0%}"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [f"memory bandwidth (numpy copy, read+write): {bandwidth / 1e9:.1f} GB/s", line(head),
           line(tuple("-" * w for w in widths))]
    return "\n".join(out + [line(r) for r in rows])


# ---- CLI -----------------------------------------------------------------------------------------------------
def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="CKPT_OR_OUT", help="a checkpoint folder or an export folder")
    parser.add_argument("--peers", action="store_true", help="also measure transformers and onnxruntime-genai")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every engine (default 2)")
    parser.add_argument("--prompt-len", type=int, default=128, help="prompt tokens for prefill (default 128)")
    parser.add_argument("--new-tokens", type=int, default=32, help="decode steps timed (default 32)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help=f"target/experts pairs to export from a checkpoint (default {','.join(DEFAULT_MODES)})")
    parser.add_argument("--rounds", type=int, default=1, help="passes over all engines; best speeds kept (default 1)")
    parser.add_argument("--last-logits", action="store_true",
                        help="export the modes with logits of the last position only (prefill for generation)")
    parser.add_argument("--work", metavar="DIR", help="keep exports here (default: a temporary folder)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    results, bandwidth = bench(
        args.path, peers=args.peers, threads=args.threads, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
        modes=[m for m in args.modes.split(",") if m], work=args.work, rounds=args.rounds,
        last_logits=args.last_logits,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    print(format_results(results, bandwidth))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "bandwidth": bandwidth, "threads": args.threads, "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens, "rounds": args.rounds, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    return 0 if all(not r.error for r in results) else 1


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _, _, kind, where, n_threads, n_prompt, n_new = sys.argv
    print(json.dumps(ENGINES[kind](where, int(n_threads), int(n_prompt), int(n_new))))
