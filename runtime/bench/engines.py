"""What `mxport bench` measures, each engine in its own child process (runtime/bench/speed.py runs and tabulates them):
the machine's memory bandwidth, model sizes and the bytes a decode step reads, and one engine's prefill / decode
speed and memory (mxport's ORT sessions, onnxruntime-genai, transformers; llama.cpp's llama-bench: llama.py). Column meanings: runtime/bench/speed.py.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxport.contract.folder import GENAI_FILE
from mxport.runtime.bench.llama import measure_llama
from mxport.runtime.bench.profile import profile_mxport

import numpy as np

ROTARY_TABLES = {("com.microsoft", "GroupQueryAttention"): (7, 8), ("ai.mxport", "GroupQueryAttention"): (7, 8),
                 ("com.microsoft", "RotaryEmbedding"): (2, 3)}


# ---- machine -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bandwidth:
    read: float  # bytes/s: max-reduce over a float32 array, `threads` threads, bytes read / time
    copy: float  # bytes/s: np.copyto on one thread, (bytes read + bytes written) / time
    threads: int  # threads of the read measurement (bench's --threads)
    size: int = 0  # bytes of the array read (0: not recorded)


def memory_bandwidth(megabytes: float = 256, repeats: int = 10, threads: int = 1) -> Bandwidth:
    """Sustained read and copy bandwidth (best of `repeats` each) over one `megabytes` (MiB) float32 array.

    Read: np.maximum.reduce of `threads` contiguous parts in parallel (a ufunc reduction releases the GIL;
    maximum, unlike add's pairwise sum, is not compute-bound). Copy: the first half copied onto the second."""
    from concurrent.futures import ThreadPoolExecutor

    data = np.ones(max(int(megabytes * (1 << 20)) // 4, 2 * threads), dtype=np.float32)
    parts = np.array_split(data, threads)
    half = data.size // 2
    src, dst = data[:half], data[half : 2 * half]

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    with ThreadPoolExecutor(threads) as pool:
        read = best(lambda: list(pool.map(np.maximum.reduce, parts)))
    copy = best(lambda: np.copyto(dst, src))
    return Bandwidth(read=data.nbytes / read, copy=2 * src.nbytes / copy, threads=threads, size=data.nbytes)


def last_level_cache(root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Bytes of the largest CPU cache the kernel reports (0 if none): the most a decode step can keep on chip.
    A virtual machine may report more than it gets (this one says 480 MB; reads fall to memory speed past
    ~48 MB): bench uses it as the bound above which a step's bytes must come from memory."""
    sizes = []
    for index in Path(root).glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes, default=0)


def available_memory() -> int:
    """MemAvailable of /proc/meminfo in bytes (a large number where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62


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

    from mxport.exporter.lower.moe import MOE_OPS

    model = onnx.load(str(model_file), load_external_data=False)
    g = model.graph
    sizes = {t.name: (_tensor_bytes(t), list(t.dims)) for t in g.initializer}
    share: dict[str, float] = {}
    widen: dict[str, float] = {}
    whole: set[str] = set()  # read whole by some node (a tied embedding is also the output projection)
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
            whole.add(node.input[0])
        else:
            whole.update(name for name in node.input if name in sizes)
    total = sum(b for b, _ in sizes.values())
    per_token = sum(b * (1.0 if name in whole else share.get(name, 1.0)) * widen.get(name, 1.0)
                    for name, (b, _) in sizes.items())
    return total, int(per_token)


def torch_traffic(model, k: int, experts: int) -> tuple[int, int]:
    """Same for a transformers model: expert parameters count k/E, embeddings one row (a tied one: all of it)."""
    total = per_token = 0
    tied = getattr(model.config, "tie_word_embeddings", False)
    embedding = model.get_input_embeddings().weight
    for name, p in model.named_parameters():
        b = p.numel() * p.element_size()
        total += b
        if ".experts." in name:
            per_token += b * k / experts
        elif tied and p is embedding:  # also the output projection, read whole every step
            per_token += b
        elif "embed_tokens" in name or name.endswith(("wte.weight", "wpe.weight")):
            per_token += b / p.shape[0]
        else:
            per_token += b
    return total, int(per_token)


# ---- engines (each runs in a child process) ----------------------------------------------------------------
def _prompt(vocab: int, n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(3, vocab, size=(1, n), dtype=np.int64)


def _memory() -> dict[str, int]:
    """This process's VmRSS, VmHWM, RssAnon, RssFile in bytes (0 where not reported). VmHWM is reset by exec,
    unlike getrusage's ru_maxrss, which a child inherits from the parent that forked it; the kernel reports it
    as max(high-water mark, current RSS), so it is never below a VmRSS read before it."""
    keys = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    out = dict.fromkeys(keys, 0)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in out:
                out[key] = int(value.split()[0]) * 1024  # "VmRSS:   123 kB"
    except OSError:  # no procfs: the peak from getrusage (KiB on Linux) is all there is
        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


REPEATS = 3  # timed runs per engine; the fastest counts (the machine is shared: the minimum is the least disturbed)


def _measured(run, prompt_len: int, new_tokens: int, load_s: float, baseline: dict[str, int],
              loaded: dict[str, int]) -> dict[str, Any]:
    """Warm up, time REPEATS runs, and return what the child reports. `run(n_prompt, n_new)` returns (prefill s,
    decode s, VmRSS read right after its last decode step, while the KV cache is still alive)."""
    run(min(prompt_len, 8), 2)  # warm-up: allocations, prepacking
    times = [run(prompt_len, new_tokens) for _ in range(REPEATS)]
    end = _memory()
    return dict(load_s=load_s, prefill_s=min(t[0] for t in times), decode_s=min(t[1] for t in times),
                baseline_rss=baseline["VmRSS"], load_rss=loaded["VmRSS"], load_anon_rss=loaded["RssAnon"],
                load_file_rss=loaded["RssFile"], runtime_rss=max(t[2] for t in times), peak_rss=end["VmHWM"])


def measure_mxport(folder: str, threads: int, prompt_len: int, new_tokens: int) -> dict[str, Any]:
    import onnxruntime as ort

    from mxport.contract.folder import read_manifest
    from mxport.runtime.execution.step_model import OrtStepModel

    vocab = int(read_manifest(folder).config["vocab_size"])
    baseline = _memory()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    t = time.perf_counter()
    model = OrtStepModel(folder, "cpu", session_options=so)
    load = time.perf_counter() - t
    loaded = _memory()

    def run(n_prompt: int, n_new: int) -> tuple[float, float, int]:
        ids = _prompt(vocab, n_prompt)
        mask = np.ones_like(ids)
        t0 = time.perf_counter()
        logits, cache = model.step(ids, mask, np.arange(n_prompt, dtype=np.int64)[None],
                                   model.new_cache(1, capacity=n_prompt + n_new))
        t1 = time.perf_counter()
        for i in range(n_new):
            nxt = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
            mask = np.ones((1, mask.shape[1] + 1), np.int64)
            logits, cache = model.step(nxt, mask, np.array([[n_prompt + i]], np.int64), cache)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, _memory()["VmRSS"]

    return _measured(run, prompt_len, new_tokens, load, baseline, loaded)


def measure_genai(folder: str, threads: int, prompt_len: int, new_tokens: int) -> dict[str, Any]:
    import onnxruntime_genai as og

    cfg = json.loads((Path(folder) / GENAI_FILE).read_text())
    vocab = int(cfg["model"]["vocab_size"])
    # genai sizes its KV buffers from max_length; a sliding-window cache must hold at least the window
    window = int((cfg["model"]["decoder"].get("sliding_window") or {}).get("window_size", 0))
    baseline = _memory()
    t = time.perf_counter()
    config = og.Config(folder)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    load = time.perf_counter() - t
    loaded = _memory()

    def run(n_prompt: int, n_new: int) -> tuple[float, float, int]:
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
        rss = _memory()["VmRSS"]
        steps = len(gen.get_sequence(0)) - n_prompt
        if steps < n_new:
            raise RuntimeError(f"genai generated {steps} of {n_new} tokens (stopped early): decode not measured")
        return t1 - t0, t2 - t1, rss

    return _measured(run, prompt_len, new_tokens, load, baseline, loaded)


def measure_transformers(checkpoint: str, threads: int, prompt_len: int, new_tokens: int) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    torch.set_num_threads(threads)
    # transformers imports a model's code on first use (~100 MB for gpt-oss): library, not model, so before the baseline
    MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(checkpoint))]
    baseline = _memory()
    t = time.perf_counter()
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    if cfg.get("quantization_config", {}).get("quant_method") == "mxfp4":
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, **kwargs).eval()
    load = time.perf_counter() - t
    loaded = _memory()
    experts = getattr(model.config, "num_local_experts", None)  # MoE families; dense ones have none
    total, per_token = torch_traffic(model, getattr(model.config, "num_experts_per_tok", 1) if experts else 1,
                                     experts or 1)

    @torch.inference_mode()
    def run(n_prompt: int, n_new: int) -> tuple[float, float, int]:
        ids = torch.from_numpy(_prompt(model.config.vocab_size, n_prompt))
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        t1 = time.perf_counter()
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(n_new):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, _memory()["VmRSS"]

    return {**_measured(run, prompt_len, new_tokens, load, baseline, loaded),
            "weight_bytes": total, "bytes_per_token": per_token}


ENGINES = {"mxport": measure_mxport, "genai": measure_genai, "transformers": measure_transformers,
           "llama.cpp": measure_llama, "profile": profile_mxport}  # runtime/bench/llama.py, profile.py


def drop_page_cache(path: str | os.PathLike) -> None:
    """Evict the engine's files from the page cache (fsync, then POSIX_FADV_DONTNEED), so every engine maps its
    weights from the same state. A file just written sits in the page cache in small pages, which the kernel
    maps 4 KB at a time; read back from disk it comes in large folios, mapped 2 MB at a time (FilePmdMapped):
    measured here, that alone moved a decode step by ~8 %, in favour of whichever engine was written longest ago."""
    root = Path(path)
    files = [root] if root.is_file() else [f for f in root.iterdir() if f.is_file()] if root.is_dir() else []
    for f in files:
        try:
            fd = os.open(f.resolve(), os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass  # not supported here: the measurement just runs on a warm cache
        finally:
            os.close(fd)


