"""`--engine gguf`: a GGUF file run by llama.cpp through llama-cpp-python (the `gguf` extra: llama-cpp-python,
built from source at install, and the `gguf` reader). `logits_all=True` keeps the logits of every position; the
prompt goes in with `eval`, each decode step appends one token to llama.cpp's own KV cache, kept in float32 (its
default, F16, rounds every key and value: docs/ENGINES.md measures it). Per-layer hidden states
would need llama.cpp's eval callback, which llama-cpp-python's Llama class does not expose: logits only.
Tokenizer: llama.cpp's own, from the GGUF's vocabulary (`tokenize(text, add_bos=False)`).

Lossy: any tensor not stored as F32 (the GGUF's tensor types): llama.cpp's CPU dot products with quantized weights
(Q8_0, Q4_K, MXFP4, ...) quantize the activations to 8 bits first, and F16/BF16 weights round them to half.
Known differences are named in the report (docs/ENGINES.md measures them): llama.cpp's YaRN always rounds the
correction range (`truncate`), whatever the config says.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mxport.errors import MxportError
from mxport.runtime.judge.engines import Engine, Step

MAX_CONTEXT = 1 << 16  # tokens a verify run may ask llama.cpp to hold


class GgufEngine(Engine):
    def __init__(self, path: Path, cfg: Any, *, threads: int | None = None, max_tokens: int = 256) -> None:
        super().__init__(name="gguf", target=str(path))
        if not path.is_file():
            raise MxportError(f"{path}: no such GGUF file")
        try:
            import llama_cpp
        except (ImportError, OSError, RuntimeError) as exc:  # not installed, or its shared library missing
            raise MxportError(f"--engine gguf needs llama-cpp-python (pip install -e \".[gguf]\"; docs/ENGINES.md): "
                              f"{exc}") from exc
        types = tensor_types(path)
        lossy = sorted(t for t in types if t != "F32")
        if lossy:
            self.lossy = (f"GGUF tensors {', '.join(f'{t} x{types[t]}' for t in lossy)}: llama.cpp quantizes "
                          "activations to 8 bits in dot products with quantized weights (F16/BF16: rounds them)")
        n_ctx = min(max(max_tokens + 8, 32), MAX_CONTEXT)
        # the KV cache in float32: llama.cpp's default F16 cache rounds every key and value (docs/ENGINES.md)
        kwargs: dict[str, Any] = {"n_ctx": n_ctx, "n_batch": n_ctx, "n_ubatch": n_ctx, "logits_all": True,
                                  "verbose": False, "seed": 0, "type_k": llama_cpp.GGML_TYPE_F32,
                                  "type_v": llama_cpp.GGML_TYPE_F32}
        if threads is not None:
            kwargs.update(n_threads=int(threads), n_threads_batch=int(threads))
        try:
            self.llm = llama_cpp.Llama(model_path=str(path), **kwargs)
        except Exception as exc:  # llama-cpp-python raises ValueError / RuntimeError on a file it cannot load
            raise MxportError(f"{path}: llama.cpp cannot load the model: {exc}") from exc
        if self.llm.n_vocab() != cfg.vocab_size:
            raise MxportError(f"{path}: vocabulary of {self.llm.n_vocab()} tokens, the checkpoint's has {cfg.vocab_size}")
        self.describe = f"llama.cpp via llama-cpp-python {llama_cpp.__version__} on {path} (n_ctx {n_ctx}, F32 KV cache)"
        self.notes.append("per-layer hidden states: llama-cpp-python does not expose llama.cpp's eval callback "
                          "(logits only)")
        rope = getattr(cfg, "rope", None)
        if rope is not None and rope.rope_type == "yarn" and not rope.truncate:
            self.notes.append("the checkpoint's YaRN has truncate: false; llama.cpp always rounds the correction "
                              "range (truncate: true): every position's RoPE differs slightly")
        self.encode = lambda text: list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _call(self, ids: np.ndarray) -> Step:
        start = self.llm.n_tokens
        try:
            self.llm.eval([int(t) for t in ids])
        except Exception as exc:  # llama.cpp decode errors
            raise MxportError(f"{self.target}: llama.cpp fails to run the model: {exc}") from exc
        return Step(np.array(self.llm.scores[start : self.llm.n_tokens], np.float32))

    def reset(self) -> None:
        self.llm.reset()

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()


def tensor_types(path: Path) -> Counter:
    """Count of a GGUF file's tensors per type name (F32, BF16, Q8_0, MXFP4, ...), read with the `gguf` package."""
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise MxportError("--engine gguf needs the gguf package (pip install -e \".[gguf]\")") from exc
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # a file that is not GGUF: ValueError, struct errors
        raise MxportError(f"{path}: not a readable GGUF file: {exc}") from exc
    return Counter(t.tensor_type.name for t in reader.tensors)


# llama.cpp's converter names a BPE pre-tokenizer by the hash of a test string's tokens; mxport's synthetic
# tokenizers have hashes it does not know, so the pre-tokenizer of the family's real models is named instead.
PRE_TOKENIZERS = {"gpt_oss": "gpt-4o", "qwen3": "qwen2", "qwen3_moe": "qwen2", "gpt2": "gpt-2"}
_CONVERT = """
import runpy, sys
folder, pre = sys.argv[1], sys.argv[2]
sys.path.insert(0, folder)
sys.argv = [folder + "/convert_hf_to_gguf.py", *sys.argv[3:]]
if pre:
    from conversion import base
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def convert(checkpoint: str | Path, out_file: str | Path, llama_cpp_dir: str | Path, *, outtype: str = "f32",
            family: str | None = None, timeout: float = 1800) -> Path:
    """A GGUF of `checkpoint` made by llama.cpp's own convert_hf_to_gguf.py (in `llama_cpp_dir`: a llama.cpp
    checkout, or llama-cpp-python's sdist's vendor/llama.cpp), `--outtype` as given; the pre-tokenizer of the
    family's published models is named (PRE_TOKENIZERS) for a tokenizer the converter does not recognise. Nothing in
    llama.cpp is edited: the converter runs in a child process with that one method replaced."""
    import os
    import subprocess
    import sys

    folder = Path(llama_cpp_dir)
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise MxportError(f"{folder}: no convert_hf_to_gguf.py (give a llama.cpp checkout)")
    pre = PRE_TOKENIZERS.get(family or "", "")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder / "gguf-py"),
                                                                      os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-c", _CONVERT, str(folder), pre, str(checkpoint), "--outfile", str(out_file),
           "--outtype", outtype]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not Path(out_file).is_file():
        raise MxportError(f"llama.cpp's converter failed on {checkpoint}: {done.stderr.strip()[-800:]}")
    return Path(out_file)
