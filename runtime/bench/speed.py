"""bench(): prefill and decode speed, memory and size of exports, side by side with their peers.

    results, bandwidth = bench(CKPT_OR_OUT, peers=False, threads=2, prompt_len=128, new_tokens=32, modes=[...])
    print(format_results(results, bandwidth))          # the CLI: mxport/commands/bench.py (`mxport bench`)

    CKPT  (config.json + *.safetensors): exports every mode label (mxport.contract.modes.LABEL_SYNTAX:
          TARGET[/EXPERTS[/DENSE]][@ACCURACY_LEVEL][:DTYPE], checked against the mode table; default DEFAULT_MODES
          or NO_EXPERTS_MODES; a "+last" suffix exports with last-position logits) into `work` (a temp folder
          unless given) and measures each;
          --peers adds transformers on CPU (float32) and onnxruntime-genai's fp32 and int4 exports when
          onnxruntime_genai is installed (built offline with its builder; a checkpoint without tokenizer.json
          gets a stand-in byte-level tokenizer in a shadow folder, since the builder insists on one).
    OUT   (an export folder with mxport.json): measures that folder (and the peers of its checkpoint).

Every measurement runs in its own child process (`python -m mxport.commands.bench --child ...`), so its memory
(from /proc/self/status) is that engine's alone. Batch 1, greedy, random prompt ids (seeded). Per engine:

    prefill tok/s   prompt_len / time of the first call (prompt -> logits)          best of REPEATS runs
    decode tok/s    new_tokens / time of new_tokens cached one-token calls          best of REPEATS runs
    base MB         VmRSS after importing the engine, before loading the model (Python, numpy, ORT or torch)
    load RSS        VmRSS right after the session / model is created (before any call)
    load anon/file  RssAnon / RssFile at that moment: private copies (prepacked or constant-folded weights,
                    arena) vs mapped file pages (weights ORT uses in place from model.onnx.data)
    runtime RSS     VmRSS at the end of a timed decode (KV cache alive): the steady state of generation
    peak RSS        VmHWM at the end: the highest VmRSS of the whole run, session creation included
    runtime/weights (runtime RSS - base) / weights: what the model costs while generating
    peak/weights    peak RSS / weights (base included)
    file MB         model files on disk (onnx + data, or safetensors)
    weights MB      bytes of every initializer (what a session must hold)
    MB/token        weights one decode step reads: dense matrices, k of E experts per MoE layer, lm_head,
                    one embedding row (from the graph: an initializer read by Gather counts one row, MoE
                    expert inputs count k/E, rotary caches one row, a constant Cast counts its cast size since
                    ORT folds it at load)
    read GB/s       memory (DRAM) read bandwidth at this engine's moment: np.maximum.reduce over a float32 array
                    of max(its MB/token, 4 x the last-level cache) bytes (so no cache holds it), split into
                    --threads contiguous parts read in parallel, measured in the parent right after each of the
                    engine's runs, best kept (as its speeds are)
    bw share        decode tok/s x MB/token / that read GB/s: the share of memory bandwidth a step uses, for a
                    step whose MB/token exceeds the last-level cache (engines.last_level_cache) and so must
                    come from memory every step; "cache" where it fits (from cache it may read faster than
                    memory: a share over 100 % is then no contradiction, and none is printed)

docs/BENCHMARKS.md ("Columns") says why the share once read 170 % and what was measured. The header line keeps
a --bandwidth-mb probe (256 MB): read (as above) and copy (np.copyto on one thread, bytes read + written).

The table keeps to 120 columns (engine, speeds, load and peak RSS, file MB, MB/token, bw share); `--json` has
every field (base, anon/file and runtime RSS, the per-weights ratios, weights MB, each engine's read bandwidth).

Benchmarks are not timed tests: tests/runtime/test_bench.py checks the plumbing on the tiny preset only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from mxport.contract import modes as modes_table
from mxport.contract.progress import Progress, given, report
from mxport.contract.folder import (CONFIG_FILE, GENAI_FILE, MANIFEST_FILE, MODEL_FILE, TOKENIZER_CONFIG_FILE,
                                   TOKENIZER_FILE, Manifest, is_checkpoint, manifest_file, read_manifest)
from mxport.errors import MxportError
from mxport.runtime.bench.llama import ENV_BENCH
from mxport.runtime.bench.engines import (  # noqa: F401  (re-exported: bench's measurements, used by tests)
    REPEATS, Bandwidth, _tensor_bytes, available_memory, drop_page_cache, file_bytes, last_level_cache,
    memory_bandwidth, onnx_traffic, torch_traffic)

# Each family's recommended modes (docs/LOWERING.md "Which mode to choose") are among the defaults: the exact fast
# one and the compact one. Models with experts (gpt-oss, Qwen3-MoE): MXFP4 experts and bf16 matrices on mxport's
# native kernels (exact), int4 experts and int4 matrices (compact).
RECOMMENDED_MODES = {"exact": "cpu/mxfp4/bfloat16", "compact": "cpu/int4/int4"}
DEFAULT_MODES = ("cpu/float32", "cpu/mxfp4/bfloat16", "cpu/int8", "cpu/int4", "cpu/int4/int4", "portable/mxfp4")
# a model without experts (GPT-2, Qwen3): --experts has nothing to act on, so the modes vary --dense instead
# bfloat16: exact, on the stored bf16 (LinearBF16); q4: mxport's 4-bit LinearQ4, int4: ORT's MatMulNBits
NO_EXPERTS_RECOMMENDED_MODES = {"exact": "cpu/float32/bfloat16", "compact": "cpu/float32/q4"}
NO_EXPERTS_MODES = ("cpu", "cpu/float32/bfloat16", "cpu/float32/int8", "cpu/float32/int4", "cpu/float32/q4", "portable")


def default_modes(checkpoint: Path) -> tuple[str, ...]:
    """DEFAULT_MODES for a checkpoint whose family table has experts, else NO_EXPERTS_MODES."""
    from mxport.exporter import families

    cfg = families.read_config(checkpoint / "config.json")
    has_experts = any(".experts." in e.name for e in cfg.family.tensors(cfg, None))
    return DEFAULT_MODES if has_experts else NO_EXPERTS_MODES


@dataclass
class Result:
    name: str  # "mxport cpu/float32", "genai int4", "transformers fp32"
    path: str
    file_bytes: int = 0
    weight_bytes: int = 0
    bytes_per_token: int = 0
    prefill_tok_s: float = float("nan")
    decode_tok_s: float = float("nan")
    # memory of the child process in bytes (0 = not reported), all from one measurement (the largest peak)
    baseline_rss: int = 0  # VmRSS after imports, before loading the model
    load_rss: int = 0  # VmRSS right after loading
    load_anon_rss: int = 0  # RssAnon then (private memory)
    load_file_rss: int = 0  # RssFile then (mapped files)
    runtime_rss: int = 0  # VmRSS at the end of a timed decode
    peak_rss: int = 0  # VmHWM at the end of the run
    load_s: float = float("nan")
    read_bandwidth: float = float("nan")  # bytes/s over an array of bytes_per_token (best of its measurements)
    error: str = ""
    notes: list[str] = field(default_factory=list)
    exact: str = ""  # what the engine computes: "exact", "lossy", or what llama.cpp rounds (llama.exactness)
    peer: str = ""  # an mxport engine: the name of the llama.cpp engine running the matching GGUF type
    fits_cache: bool = False  # bytes_per_token <= the last-level cache: a step may be served from cache
    profile: dict = field(default_factory=dict)  # --profile: runtime/bench/profile.py's node times

    def bandwidth_share(self) -> float:
        """decode tok/s x bytes per token / the memory read bandwidth (NaN when not measured, or when a step fits
        the last-level cache: then memory bandwidth does not bound it)."""
        bw = self.read_bandwidth
        if self.fits_cache or not (bw == bw and bw > 0):
            return float("nan")
        return self.decode_tok_s * self.bytes_per_token / bw

    def runtime_per_weights(self) -> float:
        """(runtime RSS - baseline) / weight bytes: what holding and running the model costs, interpreter excluded."""
        if not (self.weight_bytes and self.runtime_rss and self.baseline_rss):
            return float("nan")
        return (self.runtime_rss - self.baseline_rss) / self.weight_bytes

    def peak_per_weights(self) -> float:
        return self.peak_rss / self.weight_bytes if self.weight_bytes and self.peak_rss else float("nan")


MEMORY_FIELDS = ("baseline_rss", "load_rss", "load_anon_rss", "load_file_rss", "runtime_rss", "peak_rss")


# ---- measurements (each engine runs in a child process: runtime/bench/engines.py) -------------------------------
def _child(kind: str, path: str, threads: int, prompt_len: int, new_tokens: int, timeout: float,
           env: dict[str, str] | None = None) -> dict[str, Any]:
    drop_page_cache(path)
    cmd = [sys.executable, "-m", "mxport.commands.bench", "--child", kind, path, str(threads), str(prompt_len),
           str(new_tokens)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **(env or {})}
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
    """Fold one measurement into `result`: best speeds and load time, the memory numbers of the measurement with
    the largest peak RSS (kept together, so they come from one process), first error."""
    if "error" in measured:
        result.error = result.error or measured["error"]
        return result
    result.load_s = min(result.load_s, measured["load_s"]) if result.load_s == result.load_s else measured["load_s"]
    result.prefill_tok_s = max(v for v in (result.prefill_tok_s, prompt_len / measured["prefill_s"]) if v == v)
    result.decode_tok_s = max(v for v in (result.decode_tok_s, new_tokens / measured["decode_s"]) if v == v)
    if measured["peak_rss"] >= result.peak_rss:
        for name in MEMORY_FIELDS:
            setattr(result, name, int(measured[name]))
    if "weight_bytes" in measured:
        result.weight_bytes, result.bytes_per_token = measured["weight_bytes"], measured["bytes_per_token"]
    return result


# ---- what to measure -----------------------------------------------------------------------------------------
def _export_modes(ckpt: Path, labels: list[str], work: Path, last_logits: bool = False,
                  progress: Progress | None = None) -> list[tuple[str, Path]]:
    """Export each mode label (mxport.contract.modes.LABEL_SYNTAX, "+last": last-position logits) into `work`;
    progress hears each export's stages as "export i/n LABEL: stage"."""
    from mxport.exporter.export import export

    out = []
    for i, text in enumerate(labels):
        last = last_logits or text.endswith("+last")
        options = modes_table.parse_label(text.removesuffix("+last"))
        target, experts, dense, dtype, level = (options[k] for k in
                                                ("target", "experts", "dense", "dtype", "accuracy_level"))
        folder = work / (f"mxport-{target}-{experts or 'default'}" + (f"-dense-{dense}" if dense != "float32" else "")
                         + (f"-{dtype}" if dtype != "float32" else "") + (f"-acc{level}" if level != 4 else "")
                         + ("-last" if last else ""))
        if not manifest_file(folder).is_file():
            heard = (lambda stage, done, total, unit="it", where=f"export {i + 1}/{len(labels)} {text}":
                     progress(f"{where}: {stage}", done, total, unit)) if given(progress) else None
            export(ckpt, folder, last_logits=last, force=True, progress=heard, **options)
        meta = read_manifest(folder)  # experts: 'none' for a model without experts, the default resolved
        out.append((_label(meta), folder))
    return out


def _label(meta: Manifest) -> str:
    """An mxport engine's name in the table: the mode label of its mxport.json, "+last" (as --modes spells it) when
    it has last-position logits."""
    return modes_table.label(target=meta.target, experts=meta.experts, dense=meta.dense, dtype=meta.dtype,
                             accuracy_level=meta.accuracy_level) + ("+last" if meta.last_logits else "")


def _genai_checkpoint(ckpt: Path, work: Path) -> Path:
    """The checkpoint as the genai builder wants it: with tokenizer files (a stand-in if the checkpoint has none)."""
    if (ckpt / TOKENIZER_FILE).is_file():
        return ckpt
    shadow = work / "genai-input"
    shadow.mkdir(parents=True, exist_ok=True)
    for f in ckpt.iterdir():
        if f.is_file() and not (shadow / f.name).exists():
            (shadow / f.name).symlink_to(f.resolve())
    if not (shadow / TOKENIZER_FILE).is_file():
        from mxport.exporter import families
        from mxport.runtime.generation.tokenizer import build_harmony_tokenizer

        vocab = families.read_config(ckpt / "config.json").vocab_size
        build_harmony_tokenizer(vocab).save(shadow / TOKENIZER_FILE)
        (shadow / TOKENIZER_CONFIG_FILE).write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
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
        if not (folder / GENAI_FILE).is_file():
            cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(folder),
                   "-p", precision, "-e", "cpu", "-c", str(work / "genai-cache")]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                out.append((f"genai {precision}", None, f"builder timed out after {timeout:.0f}s"))
                continue
            if done.returncode != 0 or not (folder / GENAI_FILE).is_file():
                tail = done.stderr.strip().splitlines()[-1:] if done.stderr else []
                out.append((f"genai {precision}", None, f"builder failed: {' '.join(tail)[:300]}"))
                continue
        out.append((f"genai {precision}", folder, ""))
    return out


def _check_positions(config_file: Path, prompt_len: int, new_tokens: int) -> None:
    """A model with learned positions (GPT-2) has no embedding past its last position: say so before measuring."""
    from mxport.exporter import families

    if config_file.name == MANIFEST_FILE:
        raw = read_manifest(config_file).config or {}
    else:
        raw = families.read_json(config_file)
    try:
        limit = families.config_from_dict(raw, str(config_file)).position_limit
    except MxportError:
        return  # the engines name what is wrong with the config themselves
    if limit and prompt_len + new_tokens > limit:
        raise MxportError(f"bench: --prompt-len {prompt_len} + --new-tokens {new_tokens} passes this model's {limit} "
                          f"positions (n_positions, {config_file})")


def bench(path: str | os.PathLike, *, peers: bool = False, threads: int = 2, prompt_len: int = 128,
          new_tokens: int = 32, modes: list[str] | None = None, work: str | os.PathLike | None = None,
          timeout: float = 1800.0, bandwidth_mb: int = 256, rounds: int = 1, last_logits: bool = False,
          llama_bench: str | os.PathLike | None = None, profile: bool = False, cache_bytes: int | None = None,
          log=lambda message: None,
          progress: Progress | None = None) -> tuple[list[Result], Bandwidth]:
    """Measure; returns (results, memory bandwidth). `modes`: mode labels (mxport.contract.modes.LABEL_SYNTAX,
    "+last" for last-position logits) to export from a checkpoint; `log(message)` hears what runs;
    `progress` (mxport.contract.progress) the exports' stages and "measure" (engine runs done, to do).

    rounds > 1 runs the whole engine list that many times, every second round in reverse order, and keeps each
    engine's best speeds (and the memory of its largest-peak run): on a shared machine, load drifts over minutes,
    and one pass would favour whichever engine ran in a quiet moment. With `peers`, llama.cpp joins when
    `llama_bench` (or $LLAMA_CPP_DIR) names a build (runtime/bench/llama.py); a named build that is not usable is
    an MxportError, no build at all is logged and skipped. `profile`: each mxport engine once more under ORT's
    profiler after the timed runs (runtime/bench/profile.py), into Result.profile. `cache_bytes`: the last-level
    cache a step must exceed to get a bw share (default: the largest cache /sys reports, which a VM may overstate). Without `work` the exports go to a temporary folder that is
    removed however bench ends (error or not)."""
    path = Path(path)
    if not path.is_dir():
        raise MxportError(f"bench: {path} is not a folder (expected a checkpoint or an export folder)")
    if min(prompt_len, new_tokens, threads, rounds) < 1:
        raise MxportError("bench: --prompt-len, --new-tokens, --threads and --rounds must be >= 1")
    if cache_bytes is not None and cache_bytes < 0:
        raise MxportError(f"bench: --cache-mb must be >= 0, got {cache_bytes / 1e6:g}")
    if manifest_file(path).is_file():
        meta = read_manifest(path)
        folders, ckpt = [(_label(meta), path)], Path(meta.checkpoint or "")
    elif is_checkpoint(path):
        folders, ckpt = [], path
    else:
        raise MxportError(f"bench: {path} is neither a checkpoint (config.json + *.safetensors) nor an export "
                          "folder (mxport.json)")
    _check_positions(manifest_file(path) if folders else path / CONFIG_FILE, prompt_len, new_tokens)
    llama = _find_llama(llama_bench, log) if peers else None
    work_dir = Path(work) if work else Path(tempfile.mkdtemp(prefix="mxport-bench-"))
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        if not folders:
            labels = list(modes or default_modes(path))
            log(f"exporting {', '.join(labels)} into {work_dir}")
            folders = _export_modes(path, labels, work_dir, last_logits, progress)
        log("measuring memory bandwidth")
        bandwidth = memory_bandwidth(bandwidth_mb, threads=threads)
        results, jobs = _jobs(folders, ckpt if peers else None, work_dir, timeout, log)
        results += _llama_jobs(llama, jobs, ckpt, work_dir, timeout, log) if llama and is_checkpoint(ckpt) else []
        # interleaved: every engine once per round, every second round in reverse (no engine always first)
        runs = [(round_, job) for round_ in range(rounds) for job in (jobs[::-1] if round_ % 2 else jobs)]
        env = {ENV_BENCH: str(llama.bench)} if llama else {}
        cache = last_level_cache() if cache_bytes is None else cache_bytes
        for done, (round_, (result, kind, where)) in enumerate(runs):
            log(f"running {result.name}" + (f" (round {round_ + 1}/{rounds})" if rounds > 1 else ""))
            report(progress, "measure", done, len(runs))
            measured = _child(kind, where, threads, prompt_len, new_tokens, timeout, env)
            _keep_best(result, measured, prompt_len, new_tokens)
            if result.bytes_per_token and "error" not in measured:  # memory bandwidth at this moment
                _measure_read_bandwidth(result, threads, cache)
        report(progress, "measure", len(runs), len(runs))
        for result, kind, where in jobs if profile else []:
            if kind == "mxport" and not result.error:
                log(f"profiling {result.name}")
                measured = _child("profile", where, threads, prompt_len, new_tokens, timeout)
                result.profile = measured if "error" not in measured else {}
                result.notes += [f"profile: {measured['error']}"] if "error" in measured else []
        return results + [r for r, _, _ in jobs], bandwidth
    finally:
        if not work:
            shutil.rmtree(work_dir, ignore_errors=True)


MAX_PROBE_BYTES = 4 << 30  # the per-engine bandwidth probe's largest array
MIN_PROBE_BYTES = 256 << 20  # its smallest (a machine that reports no cache)


def _measure_read_bandwidth(result: Result, threads: int, cache: int | None = None) -> None:
    """Memory read bandwidth over max(the engine's bytes per token, 4 x the last-level cache `cache`, 256 MiB)
    bytes (at most MAX_PROBE_BYTES and a quarter of the available memory), `threads` threads; the best of the
    engine's rounds is kept. A result whose bytes per token fit that cache is marked fits_cache, not measured."""
    cache = last_level_cache() if cache is None else cache
    result.fits_cache = 0 < result.bytes_per_token <= cache
    if result.fits_cache:
        return  # no share of memory bandwidth to compute: nothing to measure
    size = min(max(result.bytes_per_token, 4 * cache, MIN_PROBE_BYTES), MAX_PROBE_BYTES, available_memory() // 4)
    read = memory_bandwidth(size / (1 << 20), threads=threads).read
    result.read_bandwidth = read if result.read_bandwidth != result.read_bandwidth else max(result.read_bandwidth,
                                                                                             read)


def _jobs(folders: list[tuple[str, Path]], peers_of: Path | None, work_dir: Path, timeout: float,
          log) -> tuple[list[Result], list[tuple[Result, str, str]]]:
    """(results that failed before measuring, [(result to fill, engine kind, folder)]): the mxport folders, then
    with `peers_of` (a checkpoint) transformers and the genai builds of it."""
    failed, jobs = [], []
    for mode, folder in folders:
        total, per_token = onnx_traffic(folder / MODEL_FILE)
        meta = read_manifest(folder)
        exact = modes_table.exact(experts=meta.experts, dense=meta.dense, dtype=meta.dtype)
        result = Result(f"mxport {mode}", str(folder), file_bytes(folder), total, per_token,
                        exact="exact" if exact else "lossy")
        jobs.append((result, "mxport", str(folder)))
    if peers_of is None:
        return failed, jobs
    if not is_checkpoint(peers_of):
        log(f"peers skipped: checkpoint {peers_of} not found")
        return failed, jobs
    jobs.append((Result("transformers fp32", str(peers_of), file_bytes(peers_of), exact="exact"), "transformers",
                 str(peers_of)))
    for name, folder, why in _genai_exports(peers_of, work_dir, timeout):
        if folder is None:
            failed.append(Result(name, "", error=why))
            continue
        total, per_token = onnx_traffic(folder / MODEL_FILE)
        jobs.append((Result(name, str(folder), file_bytes(folder), total, per_token,
                            exact="exact" if name.endswith("fp32") else "lossy"), "genai", str(folder)))
    return failed, jobs


def _find_llama(path, log):
    """The llama.cpp build to measure (llama.find_llama): None, logged, when none is named at all."""
    from mxport.runtime.bench.llama import ENV_DIR, find_llama

    if path is None and not os.environ.get(ENV_DIR):
        log(f"llama.cpp skipped: give --llama-bench PATH or set {ENV_DIR} to a llama.cpp build")
        return None
    return find_llama(path)


def _llama_jobs(llama, jobs: list[tuple[Result, str, str]], ckpt: Path, work_dir: Path, timeout: float,
                log) -> list[Result]:
    """Append to `jobs` one llama.cpp engine per GGUF type the mxport engines need (llama.gguf_type), converted
    from `ckpt` into work/llama.cpp (kept between runs with --work); each mxport result names its peer. Returns
    the engines whose conversion failed."""
    from mxport.runtime.bench.llama import convert, exactness, gguf_traffic, gguf_type

    failed, made = [], {}
    for result, kind, where in list(jobs):
        if kind != "mxport":
            continue
        meta = read_manifest(where)
        wanted = gguf_type(meta)
        name = f"llama.cpp {wanted}"
        if wanted not in made:
            log(f"converting {ckpt} to a {wanted} GGUF with llama.cpp's tools")
            try:
                made[wanted] = gguf = convert(llama, ckpt, wanted, work_dir / "llama.cpp", timeout)
                total, per_token = gguf_traffic(gguf)
                jobs.append((Result(name, str(gguf), gguf.stat().st_size, total, per_token,
                                    exact=exactness(wanted, meta.experts != "none")), "llama.cpp", str(gguf)))
            except MxportError as exc:
                made[wanted] = None
                failed.append(Result(name, "", error=str(exc)))
        result.peer = name if made[wanted] else ""
    return failed


COLUMNS = ("engine", "prefill tok/s", "decode tok/s", "load RSS MB", "peak RSS MB", "file MB", "MB/token",
           "bw share")
TABLE_WIDTH = 120  # the printed table's most columns (the engine names of the default modes); --json has the rest


def _row(r: Result) -> tuple[str, ...]:
    mb = lambda n: f"{n / 1e6:.0f}" if n else "-"  # noqa: E731
    share = r.bandwidth_share()
    return (r.name, f"{r.prefill_tok_s:.1f}", f"{r.decode_tok_s:.2f}", mb(r.load_rss), mb(r.peak_rss),
            f"{r.file_bytes / 1e6:.0f}", f"{r.bytes_per_token / 1e6:.1f}",
            "cache" if r.fits_cache else f"{share:.0%}" if share == share else "-")


def format_results(results: list[Result], bandwidth: Bandwidth) -> str:
    """The header (the 256 MB probe's bandwidths) and one row per engine; an engine that failed shows its error."""
    rows = [_row(r) for r in results if not r.error]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    threads = f"{bandwidth.threads} thread{'s' if bandwidth.threads > 1 else ''}"
    out = [f"memory bandwidth, {bandwidth.size / (1 << 20):.0f} MiB: read {bandwidth.read / 1e9:.1f} GB/s ({threads}), "
           f"copy {bandwidth.copy / 1e9:.1f} GB/s (1 thread); bw share: of memory, per engine",
           line(COLUMNS), line(tuple("-" * w for w in widths))]
    out += [line(row) for row in rows]
    out += [f"{r.name}: error: {r.error}" for r in results if r.error]
    from mxport.runtime.bench.profile import format_profile

    profiled = [(r.name, r.bytes_per_token, r.profile) for r in results if r.profile]
    return "\n".join(out + _peer_table(results) + format_profile(profiled))


PEER_COLUMNS = ("mxport engine", "llama.cpp", "prefill ×", "decode ×", "exact? (mxport; llama.cpp)")


def _peer_table(results: list[Result]) -> list[str]:
    """mxport / llama.cpp speed ratios of each mxport engine and the llama.cpp engine of its GGUF type (same run),
    and what each side computes; nothing when llama.cpp was not measured."""
    by_name = {r.name: r for r in results if not r.error}
    pairs = [(r, by_name[r.peer]) for r in results if r.peer in by_name and not r.error]
    if not pairs:
        return []
    ratio = lambda a, b: f"{a / b:.2f}×" if a == a and b == b and b > 0 else "-"  # noqa: E731
    rows = [(m.name.removeprefix("mxport "), p.name.removeprefix("llama.cpp "), ratio(m.prefill_tok_s, p.prefill_tok_s),
             ratio(m.decode_tok_s, p.decode_tok_s), f"{m.exact}; {p.exact}") for m, p in pairs]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(PEER_COLUMNS)]
    line = lambda cells: "  ".join(c.rjust(w) if i in (2, 3) else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return ["", "against llama.cpp (mxport / llama.cpp, this run)", line(PEER_COLUMNS),
            line(tuple("-" * w for w in widths))] + [line(row) for row in rows]


def to_json(results: list[Result], bandwidth: Bandwidth, **settings: Any) -> dict[str, Any]:
    """Every number: the settings, both bandwidths of the 256 MB probe (bytes/s), each result's fields (bytes,
    tok/s, its own read bandwidth) and the derived ratios; null where a number is undefined (NaN is not JSON)."""
    finite = lambda x: None if isinstance(x, float) and x != x else x  # noqa: E731
    return {"bandwidth": asdict(bandwidth), **settings, "results": [
        {**{k: finite(v) for k, v in asdict(r).items()}, "runtime_per_weights": finite(r.runtime_per_weights()),
         "peak_per_weights": finite(r.peak_per_weights()),
         "bandwidth_share": finite(r.bandwidth_share())} for r in results]}
