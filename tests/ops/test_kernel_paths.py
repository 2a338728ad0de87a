"""Each instruction-set path of mxport's native kernels (MXPORT_KERNELS_ISA=avx512|avx2|c) on every shape class.

test_native.py samples shapes at random; here a fixed grid gives every path each class at least once: one row and 2-4
rows (the decode kernels), 5 to 40 rows (MXFP4's direct row chunks up to 15 rows and for a remainder of 1-8 rows after
full 16-row groups; the prompt tiles: one and two 16-row groups, partial groups), K = one block, K not a multiple of
32 (bf16) or of 256 (LinearQ4), N below, at and above a tile, and MoE with 1 to ~32 tokens per expert. Each against
the NumPy kernel, ≤ 1e-5 relative as in test_native.py. Then builds with AddressSanitizer and
UndefinedBehaviorSanitizer: the kernel math alone (tests/ops/kernel_driver.c: every path against a float64 product,
exact-size buffers) and the whole library in ONNX Runtime running the grid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest

from mxport.ops import linear_bf16, linear_q4, matmul_mxfp4, moe, native

from .test_native import ISAS, LIB, _moe_case, _mxfp4, _rel, _session, build_model, needs_lib

MXFP4_SHAPES = [((), 1, 1, 1), ((), 1, 3, 17), ((2,), 2, 5, 9), ((), 4, 2, 33), ((), 5, 1, 8), ((), 17, 9, 40),
                ((), 20, 3, 64), ((), 26, 2, 17), ((), 40, 3, 70)]  # (lead, m, K / 32, n)
BF16_SHAPES = [(1, 1, 1), (1, 31, 17), (3, 33, 9), (4, 100, 65), (5, 7, 8), (17, 300, 40), (40, 65, 70),
               (1, 1030, 20)]  # (m, k, n)
Q4_SHAPES = [(1, 5, 3), (1, 256, 17), (3, 300, 9), (4, 700, 33), (5, 257, 8), (9, 512, 40), (17, 300, 20)]
MOE_SHAPES = [(1, 4, 2, 64, 32), (3, 5, 3, 96, 160), (9, 3, 1, 32, 64), (40, 4, 2, 64, 96),
              (64, 2, 1, 32, 64)]  # (T, E, k, H, I): 1 to ~32 rows per expert
MOE_ATTRS = dict(normalize_routing_weights=1, swiglu_interleaved=1, swiglu_limit=7.0, activation_alpha=1.702,
                 activation_beta=1.0)


@needs_lib
@pytest.mark.parametrize("isa", ISAS)
def test_every_path_on_every_shape_class(isa, monkeypatch):
    rng = np.random.default_rng(ISAS.index(isa))
    for lead, m, kb, n in MXFP4_SHAPES:
        a = rng.standard_normal((*lead, m, 32 * kb)).astype(np.float32)
        blocks, scales = _mxfp4(rng, (n, 32 * kb))
        inputs = {"a": a, "blocks": blocks, "scales": scales}
        got = _session(build_model("MatMulMXFP4", inputs, 1), register=True, isa=isa,
                       monkeypatch=monkeypatch).run(None, inputs)[0]
        assert _rel(got, matmul_mxfp4._matmul_mxfp4(a, blocks, scales)) <= 1e-5, ("MatMulMXFP4", isa, m, kb, n)
    for m, k, n in BF16_SHAPES:
        a = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(ml_dtypes.bfloat16)
        got = _session(build_model("LinearBF16", {"a": a}, 1, weights={"w": w}), register=True, isa=isa,
                       monkeypatch=monkeypatch).run(None, {"a": a})[0]
        assert _rel(got, linear_bf16._linear_bf16(a, w)) <= 1e-5, ("LinearBF16", isa, m, k, n)
    for m, k, n in Q4_SHAPES:
        a = rng.standard_normal((m, k)).astype(np.float32)
        packed, d = linear_q4.quantize(rng.standard_normal((n, k)).astype(np.float32))
        got = _session(build_model("LinearQ4", {"a": a}, 1, weights={"w": packed, "d": d}), register=True, isa=isa,
                       monkeypatch=monkeypatch).run(None, {"a": a})[0]
        assert _rel(got, linear_q4._linear_q4(a, packed, d)) <= 1e-5, ("LinearQ4", isa, m, k, n)
    for t, e, k, h, i in MOE_SHAPES:
        inputs = _moe_case(rng, t, e, h, i)
        got = _session(build_model("MoEMXFP4", inputs, 1, k=k, **MOE_ATTRS), register=True, isa=isa,
                       monkeypatch=monkeypatch).run(None, inputs)[0]
        want = moe._moe_mxfp4(*inputs.values(), k, *MOE_ATTRS.values())
        assert _rel(got, want) <= 1e-5, ("MoEMXFP4", isa, t, e, k, h, i)


@needs_lib
@pytest.mark.parametrize("isa", ISAS)
def test_info_reports_the_path_a_registration_uses(isa, monkeypatch):
    """`mxport kernels` (native.info) names the path MXPORT_KERNELS_ISA caps to: the one asked for, or the best
    this CPU runs when it runs no better."""
    best = native.info()["best"]
    monkeypatch.setenv("MXPORT_KERNELS_ISA", isa)
    assert native.info()["isa"] == min(isa, best, key=ISAS[::-1].index)


@needs_lib
def test_an_unknown_isa_fails_the_registration_by_name(monkeypatch):
    monkeypatch.setenv("MXPORT_KERNELS_ISA", "sse9")
    with pytest.raises(Exception, match="MXPORT_KERNELS_ISA=sse9: expected avx512, avx2 or c"):
        ort.SessionOptions().register_custom_ops_library(str(LIB))
    assert native.info()["isa"] == "invalid"


DRIVER = Path(__file__).with_name("kernel_driver.c")
CSRC = Path(__file__).parents[2] / "ops" / "csrc"
SANITIZE = ["-O1", "-g", "-std=gnu11", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]


def _sanitized_build(tmp_path: Path, name: str, sources: list[str], *extra: str) -> Path:
    """cc SANITIZE sources -> tmp_path/name; skips when there is no compiler or no sanitizer runtime."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    out = tmp_path / name
    build = subprocess.run([cc, *SANITIZE, f"-I{CSRC}", *extra, *sources, "-lm", "-o", str(out)], capture_output=True,
                           text=True, timeout=180)
    if build.returncode != 0:
        if "asan" in build.stderr or "ubsan" in build.stderr:
            pytest.skip(f"no sanitizer runtime: {build.stderr.strip().splitlines()[-1]}")
        pytest.fail(build.stderr)
    return out


def test_kernel_math_is_sanitizer_clean_on_every_path(tmp_path):
    """kernel_driver.c's `check` under -fsanitize=address,undefined: no read or write outside a buffer, no undefined
    behaviour, every path (avx512, avx2, c, as far as this CPU runs them) within 1e-6 of the float64 product."""
    exe = _sanitized_build(tmp_path, "kernel_driver", [str(DRIVER), *map(str, sorted(CSRC.glob("mx_*.c")))])
    done = subprocess.run([str(exe), "check"], capture_output=True, text=True, timeout=300,
                          env={"ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "0 failure(s)" in done.stdout and "isa=c checked" in done.stdout


@needs_lib
def test_the_library_is_sanitizer_clean_under_onnxruntime(tmp_path):
    """The whole library (the ops' glue too: MoE routing and gathering, LinearQ4's quantization) built with
    -fsanitize=address,undefined and loaded into ONNX Runtime (the sanitizer runtimes preloaded), running the shape
    grid above and test_group_query_attention.py on every path: a read or write outside a buffer the library
    allocates, or undefined behaviour, aborts the run."""
    so = _sanitized_build(tmp_path, "libmxport_kernels_sanitized.so", sorted(str(p) for p in CSRC.glob("*.c")),
                          "-shared", "-fPIC", "-fvisibility=hidden")
    cc = shutil.which("cc") or shutil.which("gcc")
    runtimes = [subprocess.run([cc, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
                for lib in ("libasan.so", "libubsan.so")]
    if not all(Path(r).is_file() for r in runtimes):
        pytest.skip(f"sanitizer runtimes not found as files: {runtimes}")
    env = {**os.environ, "LD_PRELOAD": ":".join(runtimes), "ASAN_OPTIONS": "detect_leaks=0",
           "UBSAN_OPTIONS": "print_stacktrace=1", "MXPORT_TEST_KERNELS": str(so)}
    gqa = Path(__file__).with_name("test_group_query_attention.py")  # attention: decode, prompts, shared buffers
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           f"{__file__}::test_every_path_on_every_shape_class", str(gqa)], capture_output=True,
                          text=True, timeout=900, env=env, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout and "AddressSanitizer" not in done.stderr


@needs_lib
def test_kernels_cpu_time_example_runs_the_library_it_is_given(tmp_path):
    """examples/kernels_cpu_time.py (the A/B numbers of docs/BENCHMARKS.md, "Kernels") on a tiny bf16 export: rates
    from the library given by path, and a path that is no library fails instead of falling back silently."""
    import runpy

    from mxport.exporter.export import export
    from mxport.exporter.synth import PRESETS, write_checkpoint

    ckpt = write_checkpoint(tmp_path / "ckpt", PRESETS["qwen3-tiny"])
    out = export(ckpt, tmp_path / "bf16", target="cpu", experts="float32", dense="bfloat16", progress=False)
    example = runpy.run_path(str(Path(__file__).parents[2] / "examples" / "kernels_cpu_time.py"))
    rates = example["measure"](str(out), str(LIB), 4, 2, 1)
    assert set(rates) == {"prefill_cpu", "decode_cpu", "prefill_wall", "decode_wall"}
    assert all(np.isfinite(v) and v > 0 for v in rates.values())
    (tmp_path / "not_a_library.so").write_bytes(b"nope")
    with pytest.raises(Exception, match="not_a_library"):
        example["measure"](str(out), str(tmp_path / "not_a_library.so"), 4, 2, 1)
    assert native.library_path() == LIB  # the installed library again, for every later session
