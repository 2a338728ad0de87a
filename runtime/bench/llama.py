"""llama.cpp as a bench peer: find a build, convert a checkpoint with llama.cpp's own tools, run llama-bench.

    llama = find_llama(path=None, environ=os.environ)    # LlamaCpp(bench, quantize, convert) or MxportError
    gguf = convert(llama, CKPT, "Q4_K_M", cache, timeout) # the GGUF of that type, made once per checkpoint
    measure_llama(GGUF, threads, prompt_len, new_tokens)  # one engine run (a bench child), llama-bench's JSON read

Where llama.cpp comes from: `--llama-bench PATH` (the llama-bench binary of a CMake build, or a folder holding
one), else the LLAMA_CPP_DIR environment variable (a build folder or a source tree with `build/`). The build
folder's CMakeCache.txt names the source tree, where convert_hf_to_gguf.py and gguf-py live; llama-quantize sits
beside llama-bench. Build it once, outside the repository, e.g. from llama-cpp-python's vendored source:

    pip download --no-binary=:all: --no-deps llama-cpp-python -d /work/llama      # then untar it
    cmake -S .../vendor/llama.cpp -B /work/llama/build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release
    cmake --build /work/llama/build --target llama-bench llama-quantize -j2

The GGUF type for each mxport mode (GGUF_TYPES): --dense float32 -> f32, bfloat16 -> bf16, int8 -> q8_0,
int4 -> q4_0, q4 -> Q4_K_M. For gpt-oss, convert_hf_to_gguf.py keeps the checkpoint's MXFP4 experts as they are
(GGML type MXFP4, nibbles repacked, gate/up split; float experts would be written as floats with a warning), and
the rest follows --outtype: f32 for --dense float32, bf16 for every other mode (llama-quantize's 4- and 8-bit
types are not applied to a gpt-oss GGUF: its experts are MXFP4 already).

The converter hashes the tokenizer's output to name the pre-tokenizer; a synthetic tokenizer's hash is in no list,
and llama.cpp's converter says to extend get_vocab_base_pre(). convert() runs it with that method wrapped: the
known hash gives its name, an unknown one the family's pre-tokenizer (PRE_TOKENIZERS), nothing edited on disk.

What each side computes (EXACTNESS): llama.cpp's CPU dot products quantize the activations to the weight's
vec_dot type: 8 bits (q8_0 / q8_K) for every quantized type MXFP4 included, bf16 for bf16 weights; only f32
weights keep float32 activations.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxport.contract.folder import Manifest
from mxport.errors import MxportError

ENV_DIR = "LLAMA_CPP_DIR"
ENV_BENCH = "MXPORT_LLAMA_BENCH"  # the llama-bench binary, for the bench child that runs it
GGUF_TYPES = {"float32": "f32", "bfloat16": "bf16", "int8": "q8_0", "int4": "q4_0", "q4": "Q4_K_M"}
CONVERTER_TYPES = ("f32", "bf16")  # what convert_hf_to_gguf.py writes itself; the others come from llama-quantize
PRE_TOKENIZERS = {"gpt_oss": "gpt-4o", "qwen3": "qwen2", "qwen3_moe": "qwen2", "gpt2": "gpt-2"}
EXACTNESS = {"f32": "exact", "bf16": "bf16 activations"}  # every other type: 8-bit activations


@dataclass(frozen=True)
class LlamaCpp:
    bench: Path  # llama-bench
    quantize: Path | None  # llama-quantize (None: only f32 and bf16 GGUFs can be made)
    convert: Path  # convert_hf_to_gguf.py (its folder holds gguf-py)


def _bench_in(folder: Path) -> Path | None:
    for sub in ("bin", "build/bin", "."):
        if (folder / sub / "llama-bench").is_file():
            return (folder / sub / "llama-bench").resolve()
    return None


def find_llama(path: str | os.PathLike | None = None, environ=os.environ) -> LlamaCpp:
    """The llama.cpp build at `path` (llama-bench or a folder), else at $LLAMA_CPP_DIR; MxportError naming what is
    missing."""
    where = f"--llama-bench {path}" if path else f"{ENV_DIR}={environ.get(ENV_DIR)}" if environ.get(ENV_DIR) else ""
    if not where:
        raise MxportError(f"llama.cpp not found: give --llama-bench PATH or set {ENV_DIR} to a llama.cpp build "
                          "(runtime/bench/llama.py says how to build one)")
    root = Path(path or environ[ENV_DIR]).expanduser()
    bench = root.resolve() if root.is_file() else _bench_in(root) if root.is_dir() else None
    if bench is None or not os.access(bench, os.X_OK):
        raise MxportError(f"{where}: no executable llama-bench there (looked in bin/, build/bin/ and the folder)")
    quantize = bench.parent / "llama-quantize"
    sources = [root] if root.is_dir() else []
    for build in (bench.parent, bench.parent.parent):  # bin/ sits in the build folder
        cache = build / "CMakeCache.txt"
        if cache.is_file():
            for line in cache.read_text(errors="replace").splitlines():
                if line.startswith("CMAKE_HOME_DIRECTORY:"):
                    sources.append(Path(line.partition("=")[2]))
    sources += [bench.parent, bench.parent.parent, bench.parent.parent.parent]
    convert = next((s / "convert_hf_to_gguf.py" for s in sources if (s / "convert_hf_to_gguf.py").is_file()), None)
    if convert is None:
        raise MxportError(f"{where}: convert_hf_to_gguf.py not found (neither beside {bench} nor in the source tree "
                          "its CMakeCache.txt names)")
    return LlamaCpp(bench, quantize if os.access(quantize, os.X_OK) else None, convert.resolve())


def gguf_type(meta: Manifest) -> str:
    """The GGUF type llama.cpp runs for an mxport mode: by --dense, and for a model with experts f32 or bf16 (its
    experts stay MXFP4)."""
    if meta.experts != "none":
        return "f32" if meta.dense == "float32" else "bf16"
    return GGUF_TYPES.get(meta.dense, "f32")


def exactness(kind: str, experts: bool = False) -> str:
    """What llama.cpp's dot products do to the activations of a GGUF type ('exact' for f32); `experts`: the model's
    experts are MXFP4 whatever the type, so 8-bit activations there."""
    own = EXACTNESS.get(kind, "8-bit activations")
    if not experts or own == "8-bit activations":
        return own
    return "8-bit act. in experts" + (", bf16 elsewhere" if kind == "bf16" else "")


def _fingerprint(ckpt: Path) -> str:
    """A short hash of the checkpoint's config and its weight files' names, sizes and times: the cache key."""
    h = hashlib.sha256((ckpt / "config.json").read_bytes())
    for f in sorted(ckpt.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


# run convert_hf_to_gguf.py with get_vocab_base_pre wrapped: an unknown tokenizer hash names the family's one
_CONVERT = """
import sys
sys.path[:0] = [{src!r}, {gguf_py!r}]
sys.argv = [{script!r}] + {argv!r}
from conversion import base
known = base.TextModel.get_vocab_base_pre
def named(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        return {pre!r}
base.TextModel.get_vocab_base_pre = named
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""


def _run(cmd: list[str], what: str, timeout: float) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MxportError(f"{what}: timed out after {timeout:.0f}s") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise MxportError(f"{what}: exit {done.returncode}: {tail[:400]}")


def convert(llama: LlamaCpp, ckpt: Path, kind: str, cache: Path, timeout: float = 3600.0) -> Path:
    """The GGUF of type `kind` (GGUF_TYPES' values) of `ckpt`, made with llama.cpp's converter (f32, bf16) and
    llama-quantize (from the bf16 one) into `cache`, once: a file already there for the same checkpoint is reused."""
    from mxport.exporter import families

    cache.mkdir(parents=True, exist_ok=True)
    stem = f"{ckpt.name}-{_fingerprint(ckpt)}"
    out = cache / f"{stem}-{kind}.gguf"
    if out.is_file():
        return out
    base_kind = kind if kind in CONVERTER_TYPES else "bf16"  # llama-quantize starts from the stored bf16
    base = cache / f"{stem}-{base_kind}.gguf"
    if not base.is_file():
        family = families.read_config(ckpt / "config.json").architecture
        src = llama.convert.parent
        code = _CONVERT.format(src=str(src), gguf_py=str(src / "gguf-py"), script=str(llama.convert),
                               argv=[str(ckpt), "--outtype", base_kind,
                                     "--outfile", str(base) + ".tmp"], pre=PRE_TOKENIZERS.get(family, "gpt-2"))
        _run([sys.executable, "-c", code], f"llama.cpp's convert_hf_to_gguf.py on {ckpt}", timeout)
        os.replace(str(base) + ".tmp", base)
    if base != out:
        if llama.quantize is None:
            raise MxportError(f"llama-quantize not found beside {llama.bench}: a {kind} GGUF needs it")
        _run([str(llama.quantize), str(base), str(out) + ".tmp", kind], f"llama-quantize {kind} of {base}", timeout)
        os.replace(str(out) + ".tmp", out)
    return out


# ---- GGUF: sizes and the bytes a decode step reads --------------------------------------------------------------
MAX_TENSORS, MAX_KV, MAX_STRING, MAX_ARRAY = 1 << 20, 1 << 16, 1 << 24, 1 << 26
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, Any], list[tuple[int, str, list[int], int]]]:
    """(metadata, tensors) of a GGUF file's header: scalar and string values (arrays as None, skipped), and each
    tensor's (size in bytes, name, dims innermost first, offset). A tensor's size is the distance to the next
    tensor's offset (alignment padding included, < 32 bytes each). MxportError naming the file if it is not GGUF
    or passes the bounds (MAX_*)."""
    path = Path(path)
    with open(path, "rb") as f:
        def read(fmt: str):
            raw = f.read(struct.calcsize(fmt))
            if len(raw) != struct.calcsize(fmt):
                raise MxportError(f"{path}: truncated GGUF header")
            return struct.unpack("<" + fmt, raw)[0]

        def string() -> str:
            n = read("Q")
            if n > MAX_STRING:
                raise MxportError(f"{path}: a GGUF string of {n} bytes (at most {MAX_STRING})")
            return f.read(n).decode("utf-8", "replace")

        def value(kind: int):
            if kind in _SCALARS:
                return read(_SCALARS[kind])
            if kind == 8:
                return string()
            if kind == 9:
                item, n = read("I"), read("Q")
                if n > MAX_ARRAY:
                    raise MxportError(f"{path}: a GGUF array of {n} items (at most {MAX_ARRAY})")
                if item in _SCALARS:  # skipped, not read: a vocabulary's scores are large
                    f.seek(n * struct.calcsize(_SCALARS[item]), os.SEEK_CUR)
                    return None
                for _ in range(n):
                    value(item)
                return None
            raise MxportError(f"{path}: unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            raise MxportError(f"{path}: not a GGUF file (no GGUF magic)")
        version, n_tensors, n_kv = read("I"), read("Q"), read("Q")
        if version < 2 or n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise MxportError(f"{path}: GGUF version {version}, {n_tensors} tensors, {n_kv} keys: not supported")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            meta[key] = value(read("I"))
        infos = []
        for _ in range(n_tensors):
            name, dims = string(), read("I")
            if dims > 8:
                raise MxportError(f"{path}: tensor {name} has {dims} dimensions")
            shape = [read("Q") for _ in range(dims)]
            read("I")  # ggml type
            infos.append((read("Q"), name, shape))
        align = int(meta.get("general.alignment") or 32)
        start = -(-f.tell() // align) * align
    end = path.stat().st_size - start
    infos.sort()
    if any(offset > end for offset, _, _ in infos):
        raise MxportError(f"{path}: a tensor's offset lies past the end of the file (truncated?)")
    sizes = [(infos[i + 1][0] if i + 1 < len(infos) else end) - offset for i, (offset, _, _) in enumerate(infos)]
    return meta, [(size, name, shape, offset) for size, (offset, name, shape) in zip(sizes, infos)]


def gguf_traffic(path: str | os.PathLike) -> tuple[int, int]:
    """(bytes of all tensors, bytes one decode step reads) of a GGUF file: expert tensors (`*_exps.*`) count k/E
    (expert_used_count / expert_count), token_embd one row unless the model has no output tensor (tied: the head
    reads it whole), everything else whole."""
    meta, tensors = read_gguf(path)
    arch = meta.get("general.architecture", "")
    k, experts = meta.get(f"{arch}.expert_used_count"), meta.get(f"{arch}.expert_count")
    tied = not any(name == "output.weight" for _, name, _, _ in tensors)
    total = per_token = 0.0
    for size, name, shape, _ in tensors:
        total += size
        if "_exps." in name and k and experts:
            per_token += size * k / experts
        elif name == "token_embd.weight" and not tied and shape:
            per_token += size / shape[-1]  # GGUF dims are innermost first: [hidden, vocab]
        else:
            per_token += size
    return int(total), int(per_token)


# ---- the engine (a bench child: `python -m mxport.commands.bench --child llama.cpp GGUF ...`) -------------------
def llama_bench_args(gguf: str, threads: int, prompt_len: int, new_tokens: int, repeats: int) -> list[str]:
    """llama-bench's arguments: prefill = prompt_len tokens on an empty cache (depth 0), decode = new_tokens steps
    after prompt_len cached ones (depth prompt_len), as mxport's measurement; `repeats` runs each, JSON out."""
    return ["-m", gguf, "-p", str(prompt_len), "-n", str(new_tokens), "-d", f"0,{prompt_len}", "-t", str(threads),
            "-r", str(repeats), "-o", "json"]


def read_llama_bench(text: str, prompt_len: int, new_tokens: int) -> tuple[float, float]:
    """(best prefill tok/s, best decode tok/s) from llama-bench's JSON: the pp test at depth 0 and the tg test at
    depth prompt_len, the fastest of its samples (bench keeps the best of its runs too)."""
    try:
        rows = json.loads(text[text.index("["):])
    except ValueError:
        raise MxportError(f"llama-bench printed no JSON: {text.strip()[-300:]!r}") from None

    def best(n_prompt: int, n_gen: int, depth: int) -> float:
        for row in rows if isinstance(rows, list) else []:
            if (row.get("n_prompt"), row.get("n_gen"), row.get("n_depth", 0)) == (n_prompt, n_gen, depth):
                samples = [float(s) for s in row.get("samples_ts") or [row.get("avg_ts", math.nan)]]
                if samples and all(s == s and s > 0 for s in samples):
                    return max(samples)
        raise MxportError(f"llama-bench's JSON has no test pp={n_prompt} tg={n_gen} at depth {depth}")

    return best(prompt_len, 0, 0), best(0, new_tokens, prompt_len)


# llama.cpp's -march=native build compiles its AMX kernels (q8_0, q4_0, Q4_K ...) where the CPU lists AMX; a VM
# that lists it without enabling its register state traps them (SIGILL; seen here, where f32 and bf16 ran)
SIGILL_HINT = ("; SIGILL: the build uses instructions this CPU does not run, such as AMX on a VM that lists it "
               "without enabling it: rebuild llama.cpp with -DCMAKE_C_FLAGS and -DCMAKE_CXX_FLAGS set to "
               "'-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' (docs/BENCHMARKS.md)")


def measure_llama(gguf: str, threads: int, prompt_len: int, new_tokens: int, repeats: int = 3) -> dict[str, Any]:
    """Run llama-bench ($MXPORT_LLAMA_BENCH) on `gguf` and report as the other engines do: prefill and decode
    seconds, the peak RSS of llama-bench (getrusage of this process's one child), the GGUF's sizes."""
    binary = os.environ.get(ENV_BENCH) or shutil.which("llama-bench")
    if not binary:
        raise MxportError(f"{ENV_BENCH} is not set: which llama-bench to run")
    done = subprocess.run([binary, *llama_bench_args(gguf, threads, prompt_len, new_tokens, repeats)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise MxportError(f"llama-bench exit {done.returncode}: {tail[:400]}" + SIGILL_HINT * (done.returncode == -4))
    prefill, decode = read_llama_bench(done.stdout, prompt_len, new_tokens)
    total, per_token = gguf_traffic(gguf)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return dict(load_s=math.nan, prefill_s=prompt_len / prefill, decode_s=new_tokens / decode, baseline_rss=0,
                load_rss=0, load_anon_rss=0, load_file_rss=0, runtime_rss=0, peak_rss=peak, weight_bytes=total,
                bytes_per_token=per_token)
