"""mxport's native ORT kernels (ops/csrc) against the NumPy kernels, and proof that ORT really runs them.

Every kernel is compared with its NumPy kernel (ops/moe.py, ops/matmul_mxfp4.py, ops/linear_bf16.py) across
shapes, token counts, k and attributes, ≤ 1e-5 relative (max abs error / max |reference|), on each path
MXPORT_KERNELS_ISA selects: AVX-512, AVX2 and plain C (a path this CPU lacks runs the best one it has). ORT's
profiler shows which kernel ran: with the library registered the ai.mxport node itself; without it the same file
runs its function body (Loop, Gemm, ...) with the same numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxport import ops
from mxport.ops import linear_bf16, matmul_mxfp4, moe, moe_2, mxfp4, native

# MXPORT_TEST_KERNELS=PATH: run these tests on another build of the library (test_kernel_paths.py's sanitized one)
LIB = Path(os.environ["MXPORT_TEST_KERNELS"]) if os.environ.get("MXPORT_TEST_KERNELS") else native.library_path()
needs_lib = pytest.mark.skipif(LIB is None, reason="native kernels not built (no C compiler at install time)")
ISAS = ["avx512", "avx2", "c"]  # MXPORT_KERNELS_ISA values, best first
PROPERTY = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def build_model(op_type: str, inputs: dict[str, np.ndarray], n_outputs: int, weights: dict | None = None, **attrs):
    """A one-node ai.mxport model (function bodies attached): `inputs` as graph inputs, `weights` as initializers
    (ORT's Python API cannot feed bfloat16 arrays)."""
    import onnx

    weights = weights or {}
    node = ops.make_node(op_type, [*inputs, *weights], [f"out{i}" for i in range(n_outputs)], **attrs)
    graph = onnx.helper.make_graph(
        [node], f"test_{op_type}",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in inputs.items()],
        [onnx.helper.make_tensor_value_info(f"out{i}", onnx.TensorProto.FLOAT, None) for i in range(n_outputs)],
        initializer=[onnx.numpy_helper.from_array(w, n) for n, w in weights.items()])
    return ops.make_model(graph)


def test_library_is_built_where_a_compiler_exists():
    """No silent fallback on a machine that can build it (CI installs with `pip install -e`)."""
    if shutil.which("cc") or shutil.which("gcc"):
        assert LIB is not None, "a C compiler is present but libmxport_kernels was not built"
        info = native.info()
        assert info["ops"] == ["MoEMXFP4", "MoEMXFP4_2", "MatMulMXFP4", "LinearBF16", "LinearQ4",
                               "GroupQueryAttention"] and info["domain"] == "ai.mxport"


def _session(model, *, register: bool, isa: str | None = None, threads: int = 2, profile: str | None = None,
             monkeypatch=None) -> ort.InferenceSession:
    """A session on `model`; with register, the library's kernels on path `isa` (None: the best this CPU runs)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    if register:
        if isa:
            monkeypatch.setenv("MXPORT_KERNELS_ISA", isa)
        so.register_custom_ops_library(str(LIB))  # the registration reads MXPORT_KERNELS_ISA
        if isa:
            monkeypatch.delenv("MXPORT_KERNELS_ISA")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _mxfp4(rng, shape, spread: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Random MXFP4 weights [..., K]: random codes, scale bytes 127 - 6 .. 127 + spread (blocks of mixed size)."""
    codes = rng.integers(0, 16, shape).astype(np.uint8)
    blocks = mxfp4.pack_codes(codes.reshape(shape[:-1] + (shape[-1] // 32, 32)))
    scales = rng.integers(127 - 6, 127 + spread, shape[:-1] + (shape[-1] // 32,)).astype(np.uint8)
    return blocks, scales


# ---- MatMulMXFP4 -------------------------------------------------------------------------------------------------
@needs_lib
@PROPERTY
@given(lead=st.lists(st.integers(1, 5), min_size=0, max_size=2), m=st.integers(1, 20), kb=st.integers(1, 12),
       n=st.integers(1, 70), isa=st.sampled_from(ISAS), seed=st.integers(0, 2**16))
def test_matmul_mxfp4_equals_numpy(lead, m, kb, n, isa, seed, monkeypatch_session):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((*lead, m, 32 * kb)).astype(np.float32)
    blocks, scales = _mxfp4(rng, (n, 32 * kb))
    inputs = {"a": a, "blocks": blocks, "scales": scales}
    want = matmul_mxfp4._matmul_mxfp4(a, blocks, scales)
    got = _session(build_model("MatMulMXFP4", inputs, 1), register=True, isa=isa,
                   monkeypatch=monkeypatch_session).run(None, inputs)[0]
    assert got.shape == want.shape
    assert _rel(got, want) <= 1e-5


# ---- LinearBF16 --------------------------------------------------------------------------------------------------
@needs_lib
@PROPERTY
@given(lead=st.lists(st.integers(1, 4), min_size=0, max_size=1), m=st.integers(1, 20), k=st.integers(1, 300),
       n=st.integers(1, 90), isa=st.sampled_from(ISAS), seed=st.integers(0, 2**16))
def test_linear_bf16_equals_numpy(lead, m, k, n, isa, seed, monkeypatch_session):
    """Decode (1-4 rows: streamed weight rows) and prefill (more: the blocked product), any K (tails of 8 and 32)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((*lead, m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(ml_dtypes.bfloat16)
    inputs = {"a": a}
    want = linear_bf16._linear_bf16(a, w)
    got = _session(build_model("LinearBF16", inputs, 1, weights={"w": w}), register=True, isa=isa,
                   monkeypatch=monkeypatch_session).run(None, inputs)[0]
    assert got.shape == want.shape
    assert _rel(got, want) <= 1e-5


@needs_lib
@pytest.mark.parametrize("m, k, n", [(1, 2048, 150), (2, 2048, 150), (4, 4100, 70), (3, 40, 9000)])
def test_linear_bf16_decode_over_several_row_blocks(m, k, n, monkeypatch_session):
    """Decode rows 2-4 re-read blocks of weight rows sized to L2 (256 KB / 2K rows): products spanning several
    blocks, a K tail (4100 = 128 x 32 + 4) and many small rows split over threads."""
    rng = np.random.default_rng(k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(ml_dtypes.bfloat16)
    inputs = {"a": a}
    got = _session(build_model("LinearBF16", inputs, 1, weights={"w": w}), register=True,
                   monkeypatch=monkeypatch_session).run(None, inputs)[0]
    assert _rel(got, linear_bf16._linear_bf16(a, w)) <= 1e-5


@needs_lib
@pytest.mark.parametrize("m, k, n", [(0, 5, 3), (2, 0, 3), (64, 0, 96), (2, 5, 0)])
def test_linear_bf16_empty_products(m, k, n, monkeypatch_session):
    """No rows, K = 0 (all zeros) or N = 0: the shape of A @ W.T, and its values."""
    a = np.ones((m, k), np.float32)
    w = np.ones((n, k), ml_dtypes.bfloat16)
    inputs = {"a": a}
    got = _session(build_model("LinearBF16", inputs, 1, weights={"w": w}), register=True,
                   monkeypatch=monkeypatch_session).run(None, inputs)[0]
    np.testing.assert_array_equal(got, linear_bf16._linear_bf16(a, w))


@needs_lib
def test_an_op_the_library_no_longer_has_runs_its_function_body():
    """Exports before LinearBF16 carry MatMulBF16 (W [K, N]) with its body; with the library registered (which has
    no MatMulBF16 kernel any more) ORT runs that body: same numbers, no error."""
    import onnx
    from onnx import TensorProto, helper

    body = helper.make_function("ai.mxport", "MatMulBF16", ["A", "W"], ["Y"],
                                [helper.make_node("CastLike", ["W", "A"], ["Wf"]), helper.make_node("MatMul", ["A", "Wf"], ["Y"])],
                                [helper.make_opsetid("", 23)])
    rng = np.random.default_rng(5)
    a, w = rng.standard_normal((3, 64)).astype(np.float32), rng.standard_normal((64, 40)).astype(ml_dtypes.bfloat16)
    graph = helper.make_graph([helper.make_node("MatMulBF16", ["a", "w"], ["y"], domain="ai.mxport")], "old",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, functions=[body], opset_imports=ops.opset_imports())
    got = _session(model, register=True).run(None, {"a": a})[0]
    assert _rel(got, a @ w.astype(np.float32)) <= 1e-6


# ---- MoEMXFP4 ------------------------------------------------------------------------------------------------------
def _moe_case(rng, t, e, h, i, route=None):
    x = rng.standard_normal((t, h)).astype(np.float32)
    logits = rng.standard_normal((t, e)).astype(np.float32)
    if route == "ties":
        logits = np.round(logits).astype(np.float32)
    w1b, w1s = _mxfp4(rng, (e, 2 * i, h), spread=-4)
    w2b, w2s = _mxfp4(rng, (e, h, i), spread=-4)
    b1 = rng.standard_normal((e, 2 * i)).astype(np.float32)
    b2 = rng.standard_normal((e, h)).astype(np.float32)
    return {"x": x, "router_logits": logits, "w1_blocks": w1b, "w1_scales": w1s, "b1": b1, "w2_blocks": w2b,
            "w2_scales": w2s, "b2": b2}


def _moe_numpy(inputs, k, normalize_routing_weights, swiglu_interleaved, swiglu_limit, activation_alpha,
               activation_beta):
    return moe._moe_mxfp4(*inputs.values(), k, normalize_routing_weights, swiglu_interleaved, swiglu_limit,
                          activation_alpha, activation_beta)


ATTRS = st.fixed_dictionaries({
    "normalize_routing_weights": st.sampled_from([0, 1]), "swiglu_interleaved": st.sampled_from([0, 1]),
    "swiglu_limit": st.sampled_from([0.0, 7.0, 0.5]), "activation_alpha": st.sampled_from([1.0, 1.702]),
    "activation_beta": st.sampled_from([0.0, 1.0]),
})


@needs_lib
@PROPERTY
@given(t=st.integers(1, 40), e=st.integers(1, 9), k=st.integers(1, 4), h=st.sampled_from([32, 64, 96, 160]),
       i=st.sampled_from([32, 64, 160]), attrs=ATTRS, isa=st.sampled_from(ISAS), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**16))
def test_moe_mxfp4_equals_numpy(t, e, k, h, i, attrs, isa, threads, seed, monkeypatch_session):
    k = min(k, e)
    inputs = _moe_case(np.random.default_rng(seed), t, e, h, i)
    want = _moe_numpy(inputs, k, **attrs)
    sess = _session(build_model("MoEMXFP4", inputs, 1, k=k, **attrs), register=True, isa=isa, threads=threads,
                    monkeypatch=monkeypatch_session)
    got = sess.run(None, inputs)[0]
    assert _rel(got, want) <= 1e-5
    # MoEMXFP4_2 (no biases) is the same kernel without the bias inputs
    del inputs["b1"], inputs["b2"]
    want = moe_2._moe_mxfp4_2(*inputs.values(), k, attrs["normalize_routing_weights"], attrs["swiglu_interleaved"],
                              attrs["swiglu_limit"], attrs["activation_alpha"], attrs["activation_beta"])
    sess = _session(build_model("MoEMXFP4_2", inputs, 1, k=k, **attrs), register=True, isa=isa, threads=threads,
                    monkeypatch=monkeypatch_session)
    got = sess.run(None, inputs)[0]
    assert _rel(got, want) <= 1e-5


@needs_lib
@pytest.mark.parametrize("t", [1, 5, 64])
def test_moe_mxfp4_routing_ties_take_the_lower_expert(t):
    attrs = dict(normalize_routing_weights=1, swiglu_interleaved=1, swiglu_limit=7.0, activation_alpha=1.702,
                 activation_beta=1.0)
    inputs = _moe_case(np.random.default_rng(t), t, 8, 64, 64, route="ties")
    want = _moe_numpy(inputs, 4, **attrs)
    got = _session(build_model("MoEMXFP4", inputs, 1, k=4, **attrs), register=True).run(None, inputs)[0]
    assert _rel(got, want) <= 1e-5


@needs_lib
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("h,i", [(128, 128), (160, 288), (1056, 160)])
@pytest.mark.parametrize("t,threads", [(1, 1), (1, 2), (3, 2)])
def test_moe_mxfp4_one_row_experts_equal_numpy(t, h, i, threads, isa, monkeypatch_session):
    """Experts holding one row (every expert of a decode step; t = 3: some share one): on AVX-512 their products run
    in integers over whole groups of 128 values (mx_mxfp4_int.c; h, i: one group, groups plus a tail of 1 to 4
    blocks), the tail in float32; within the float32 tolerance of the NumPy kernel on every ISA."""
    attrs = dict(normalize_routing_weights=1, swiglu_interleaved=1, swiglu_limit=7.0, activation_alpha=1.702,
                 activation_beta=1.0)
    inputs = _moe_case(np.random.default_rng(h + i + t), t, 16, h, i)
    want = _moe_numpy(inputs, 4, **attrs)
    sess = _session(build_model("MoEMXFP4", inputs, 1, k=4, **attrs), register=True, isa=isa, threads=threads,
                    monkeypatch=monkeypatch_session)
    assert _rel(sess.run(None, inputs)[0], want) <= 1e-5


@needs_lib
def test_bad_shapes_name_the_op():
    rng = np.random.default_rng(0)
    blocks, scales = _mxfp4(rng, (8, 64))
    inputs = {"a": np.ones((2, 96), np.float32), "blocks": blocks, "scales": scales}  # K 96 != 64
    sess = _session(build_model("MatMulMXFP4", inputs, 1), register=True)
    with pytest.raises(Exception, match="ai.mxport.MatMulMXFP4: expected A"):
        sess.run(None, inputs)


# ---- which kernel ORT runs ------------------------------------------------------------------------------------------
def _profiled_ops(sess: ort.InferenceSession) -> set[str]:
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}


@needs_lib
@pytest.mark.parametrize("op_type", ["MoEMXFP4", "MatMulMXFP4", "LinearBF16"])
def test_registered_kernel_runs_instead_of_the_function_body(op_type, tmp_path):
    """The same one-node file: native kernel when registered (the profile shows the op), function body without
    it (the profile shows the body's standard ops), equal numbers both ways."""
    rng = np.random.default_rng(3)
    weights = {}
    if op_type == "MoEMXFP4":
        inputs, attrs = _moe_case(rng, 6, 8, 64, 64), dict(k=2, swiglu_interleaved=1, swiglu_limit=7.0)
    elif op_type == "MatMulMXFP4":
        blocks, scales = _mxfp4(rng, (40, 64))
        inputs, attrs = {"a": rng.standard_normal((3, 64)).astype(np.float32), "blocks": blocks, "scales": scales}, {}
    else:
        inputs = {"a": rng.standard_normal((3, 64)).astype(np.float32)}
        weights, attrs = {"w": rng.standard_normal((40, 64)).astype(ml_dtypes.bfloat16)}, {}
    model = build_model(op_type, inputs, 1, weights=weights, **attrs)
    native_sess = _session(model, register=True, profile=str(tmp_path / "native"))
    body_sess = _session(model, register=False, profile=str(tmp_path / "body"))
    got, body = native_sess.run(None, inputs)[0], body_sess.run(None, inputs)[0]
    assert _profiled_ops(native_sess) == {op_type}
    body_ops = _profiled_ops(body_sess)
    assert op_type not in body_ops and any("MatMul" in o or "Gemm" in o for o in body_ops)  # the body ran
    assert _rel(got, body) <= 1e-5


# ---- registration and the CLI ---------------------------------------------------------------------------------------
def test_missing_library_is_said_once_and_sessions_still_work(monkeypatch, caplog):
    monkeypatch.setattr(native, "library_path", lambda: None)
    monkeypatch.setattr(native, "_warned", False)
    with caplog.at_level("WARNING", logger=native.__name__):
        assert native.register_kernels(ort.SessionOptions()) is False
        assert native.register_kernels(ort.SessionOptions()) is False
    said = [r for r in caplog.records if "native kernels are missing" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"


def test_missing_library_notice_reaches_stderr_without_logging_set_up(tmp_path):
    """A plain Python host (no logging configured) still sees the one line on stderr."""
    code = ("import onnxruntime as ort; from mxport.ops import native; native.library_path = lambda: None; "
            "native.register_kernels(ort.SessionOptions()); native.register_kernels(ort.SessionOptions())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr.count("native kernels are missing") == 1


@needs_lib
def test_register_kernels_once_per_options_and_switch_off(monkeypatch):
    so = ort.SessionOptions()
    assert native.register_kernels(so) and native.register_kernels(so)  # the second call is a no-op
    assert so.get_session_config_entry(native.REGISTERED_KEY) == "1"
    monkeypatch.setenv("MXPORT_KERNELS", "off")
    assert native.register_kernels(ort.SessionOptions()) is False


def test_kernels_command(capsys):
    from mxport.cli import main

    code = main(["kernels"])
    out = capsys.readouterr().out
    if LIB is None:
        assert code == 1 and "not built" in out
    else:
        assert code == 0 and str(LIB) in out and "MoEMXFP4, MoEMXFP4_2, MatMulMXFP4, LinearBF16" in out
        assert main(["kernels", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["path"] == str(LIB)


_GENAI_RUN = """
import json, sys, numpy as np, onnxruntime_genai as og
folder, prefix = sys.argv[1], sys.argv[2]
config = og.Config(folder)
config.overlay(json.dumps({"model": {"decoder": {"session_options": {"enable_profiling": prefix}}}}))
model = og.Model(config)
params = og.GeneratorParams(model)
params.set_search_options(max_length=14, do_sample=False)
gen = og.Generator(model, params)
gen.append_tokens(np.array([[5, 6, 7, 8, 9]], np.int32))
while not gen.is_done():
    gen.generate_next_token()
print(json.dumps([int(t) for t in gen.get_sequence(0)]))
"""


def _genai_tokens_and_ops(folder, prefix) -> tuple[list[int], set[str]]:
    """Greedy tokens of onnxruntime-genai on `folder` and the ops its profile shows (a child process: the profile
    is written when the session ends)."""
    import glob
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _GENAI_RUN, str(folder), str(prefix)], capture_output=True,
                          text=True, timeout=300, check=True)
    ops_seen: set[str] = set()
    for path in glob.glob(f"{prefix}*.json"):
        with open(path) as f:
            ops_seen |= {e["args"]["op_name"] for e in json.load(f) if e.get("cat") == "Node" and "op_name" in e.get("args", {})}
    return json.loads(done.stdout.strip().splitlines()[-1]), ops_seen


@needs_lib
def test_kernels_into_an_export_makes_onnxruntime_genai_run_them(tmp_path):
    """`mxport kernels --into EXPORT`: the library copied into the folder and named in genai_config.json, so
    onnxruntime-genai runs LinearBF16 natively (its profile shows the op; before, the function body's MatMul), with
    the same greedy tokens."""
    pytest.importorskip("onnxruntime_genai")
    from mxport.cli import main
    from mxport.exporter.export import export
    from mxport.exporter.synth import PRESETS, write_checkpoint

    ckpt = write_checkpoint(tmp_path / "ckpt", PRESETS["qwen3-tiny"])
    out = export(ckpt, tmp_path / "bf16", target="cpu", experts="float32", dense="bfloat16", progress=False)
    before, body_ops = _genai_tokens_and_ops(out, tmp_path / "body_")
    assert "LinearBF16" not in body_ops and "MatMul" in body_ops
    assert main(["kernels", "--into", str(out)]) == 0
    config = json.loads((out / "genai_config.json").read_text())
    assert config["model"]["decoder"]["session_options"]["custom_ops_library"] == native.GENAI_LIBRARY
    assert (out / native.GENAI_LIBRARY).read_bytes() == LIB.read_bytes()
    after, native_ops = _genai_tokens_and_ops(out, tmp_path / "native_")
    assert "LinearBF16" in native_ops and "MatMul" not in native_ops
    assert after == before and len(after) == 14


def test_kernels_into_a_folder_that_is_not_an_export_exits_2(tmp_path, capsys):
    from mxport.cli import main

    (tmp_path / "notes.txt").write_text("x")
    assert main(["kernels", "--into", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "genai_config.json" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written


@needs_lib
def test_product_chain_example_agrees_with_float32(capsys):
    """examples/product_chain.py (the product-speed numbers of docs/BENCHMARKS.md) on small shapes: the LinearBF16
    chain equals ORT's float32 chain on the same bf16-rounded weights up to summation order, decode and prompt rows."""
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).parents[2] / "examples" / "product_chain.py"))
    for rows in (1, 3, 9):
        result = example["measure"](2, rows, 2, 1, example["shapes"](96, 64, 32, 80))
        assert result["fp32"]["rel"] == 0 and result["bf16"]["rel"] <= 1e-5, (rows, result)
    assert example["main"](["--layers", "1", "--hidden", "64", "--q", "32", "--kv", "16", "--inter", "48",
                            "--rounds", "1"]) == 0
    assert "LinearBF16 / MatMul speed" in capsys.readouterr().out


@needs_lib
def test_product_chain_example_q4_pair(capsys):
    """--pair q4: ORT's MatMulNBits and LinearQ4 chains, each lossy against the float32 chain by about as much."""
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).parents[2] / "examples" / "product_chain.py"))
    for rows in (1, 5):
        result = example["measure"](2, rows, 2, 1, example["shapes"](256, 128, 64, 320), ("nbits", "q4"))
        assert set(result) == {"nbits", "q4"}
        assert 1e-3 < result["q4"]["rel"] < 0.2 and 1e-3 < result["nbits"]["rel"] < 0.2, (rows, result)
        assert result["q4"]["rel"] < 2 * result["nbits"]["rel"], (rows, result)
    assert example["main"](["--pair", "q4", "--layers", "1", "--hidden", "256", "--q", "128", "--kv", "64",
                            "--inter", "320", "--rounds", "1"]) == 0
    assert "LinearQ4 / MatMulNBits speed" in capsys.readouterr().out
