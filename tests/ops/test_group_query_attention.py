"""ai.mxport.GroupQueryAttention: its native kernel and its NumPy kernel against ONNX Runtime's own
com.microsoft.GroupQueryAttention (the op's function body, which a session without mxport's library runs).

Cases cover decode (S = 1) and prompts (S up to 40, several row blocks), batch 1-2, grouped heads (1-4 query heads
per KV head), head sizes 8-128 (multiples of 8 that are not of 16 run the plain C loops), sliding windows, sinks,
padding biases (fully masked rows included), rotary, and the cache both ways: a growing past (present = past +
new) and one buffer bound as past and present (written in place, the tail past T untouched). Every ISA path of
the library runs each case.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mxport import ops
from mxport.ops.group_query_attention import INPUTS, group_query_attention

from .test_native import ISAS, PROPERTY, _session, needs_lib

NAMES = dict(zip(INPUTS, ("q", "k", "v", "pk", "pv", "sl", "tot", "cos", "sin", "pos", "bias", "sink", "ql")))
TYPES = {"sl": onnx.TensorProto.INT32, "tot": onnx.TensorProto.INT32, "ql": onnx.TensorProto.INT32,
         "pos": onnx.TensorProto.INT64}


def _model(feed: dict[str, np.ndarray], **attrs) -> onnx.ModelProto:
    names = [NAMES[i] if NAMES[i] in feed else "" for i in INPUTS]
    while not names[-1]:
        names.pop()
    node = ops.make_node("GroupQueryAttention", names, ["o", "ok", "ov"], **attrs)
    graph = onnx.helper.make_graph(
        [node], "gqa", [onnx.helper.make_tensor_value_info(n, TYPES.get(n, onnx.TensorProto.FLOAT), None)
                        for n in names if n],
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("o", "ok", "ov")])
    return ops.make_model(graph)


def _case(seed: int, b: int, hkv: int, g: int, d: int, s: int, past: int, shared: bool, window: int, rotary: bool,
          sink: bool, bias: bool) -> tuple[dict[str, np.ndarray], dict, int]:
    rng = np.random.default_rng(seed)
    t = past + s
    cap = t + int(rng.integers(0, 8)) if shared else past

    def f(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    feed = {"q": f(b, s, hkv * g * d), "k": f(b, s, hkv * d), "v": f(b, s, hkv * d), "pk": f(b, hkv, cap, d),
            "pv": f(b, hkv, cap, d), "sl": np.full(b, t - 1, np.int32), "tot": np.array(t, np.int32)}
    if rotary:
        rows = b * s + t
        angle = rng.uniform(0, 6, (rows, d // 2)).astype(np.float32)
        first = rng.integers(0, rows - b * s + 1)  # any start, counting up over [B, S] (the lowering's b*S + s)
        feed.update(cos=np.cos(angle), sin=np.sin(angle), pos=(first + np.arange(b * s).reshape(b, s)).astype(np.int64))
    if bias:
        keep = rng.uniform(size=(b, t)) > 0.3
        keep[0, :] = False  # row 0: every slot masked (a left-padding row): finite, never NaN
        feed["bias"] = np.repeat(np.where(keep, 0, np.finfo(np.float32).min).astype(np.float32)[:, None, None], s, 2)
    if sink:
        feed["sink"] = f(hkv * g)
    feed["ql"] = np.full(b, s, np.int32)
    attrs = dict(num_heads=hkv * g, kv_num_heads=hkv, local_window_size=window, do_rotary=int(rotary), scale=0.0)
    return feed, attrs, cap


def _run(session: ort.InferenceSession, feed: dict[str, np.ndarray], shared: bool) -> list[np.ndarray]:
    """Outputs; with `shared`, past and present bound to one buffer each (what OrtStepModel and genai do)."""
    if not shared:
        return session.run(None, feed)
    binding = session.io_binding()
    buffers = [feed["pk"].copy(), feed["pv"].copy()]
    for name, array in feed.items():
        if name not in ("pk", "pv"):
            binding.bind_cpu_input(name, array)
    binding.bind_output("o", "cpu")
    for name, out, array in (("pk", "ok", buffers[0]), ("pv", "ov", buffers[1])):
        value = ort.OrtValue.ortvalue_from_numpy(array)
        binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(out, value)
    session.run_with_iobinding(binding)
    return [binding.get_outputs()[0].numpy().copy(), *buffers]


def _sees_a_key(feed: dict[str, np.ndarray], t: int, s: int, window: int) -> np.ndarray:
    """[B, S]: query rows with at least one slot the causal window and the bias leave open."""
    slot, key = np.arange(t - s, t)[:, None], np.arange(t)[None, :]
    open_ = (key <= slot) & ((window <= 0) | (key > slot - window))  # [S, T]
    if "bias" in feed:
        open_ = open_ & (feed["bias"][:, 0] > np.finfo(np.float32).min)  # [B, S, T]
    return np.broadcast_to(open_, (feed["q"].shape[0], s, t)).any(-1)


CASES = dict(b=st.integers(1, 2), hkv=st.sampled_from([1, 2, 4]), g=st.sampled_from([1, 2, 4]),
             d=st.sampled_from([8, 16, 24, 32, 40, 64, 128]), s=st.sampled_from([1, 1, 3, 17, 40]),
             past=st.integers(0, 30),
             shared=st.booleans(), window=st.sampled_from([-1, 4, 16]), rotary=st.booleans(), sink=st.booleans(),
             bias=st.booleans())


@needs_lib
@settings(PROPERTY, max_examples=150)
@given(seed=st.integers(0, 2**16), isa=st.sampled_from(ISAS), **CASES)
def test_native_and_numpy_equal_onnxruntimes_op(seed, isa, b, hkv, g, d, s, past, shared, window, rotary, sink, bias,
                                                monkeypatch_session):
    assume(not rotary or d % 16 == 0)  # ORT's rotary needs it (the lowering folds rotary only then)
    feed, attrs, cap = _case(seed, b, hkv, g, d, s, past, shared, window, rotary, sink, bias)
    model = _model(feed, **attrs)
    want = _run(_session(model, register=False), feed, shared)
    got = _run(_session(model, register=True, isa=isa, monkeypatch=monkeypatch_session), feed, shared)
    numpy = group_query_attention(*[feed.get(NAMES[i]) for i in INPUTS], **attrs)
    t = past + s
    assert want[1].shape == got[1].shape == numpy[1].shape == (b, hkv, max(cap, t), d)
    np.testing.assert_allclose(got[0], numpy[0], rtol=0, atol=5e-6)  # every row, fully masked ones too
    seen = _sees_a_key(feed, t, s, window)  # a query row the bias masks whole: ORT's kernel gives zeros or a mean
    for outputs in (got, numpy):
        assert np.isfinite(outputs[0]).all()
        np.testing.assert_allclose(outputs[0][seen], want[0][seen], rtol=0, atol=5e-6)
        for i in (1, 2):  # the slots in use; in place, the tail is the buffer's own
            np.testing.assert_allclose(outputs[i][:, :, :t], want[i][:, :, :t], rtol=0, atol=1e-6)
    if shared:
        np.testing.assert_array_equal(got[1][:, :, t:], feed["pk"][:, :, t:])


@needs_lib
@pytest.mark.parametrize("field, value, message", [
    ("sl", np.array([3], np.int32), r"seqlens_k must be total_sequence_length - 1 = 10"),
    ("tot", np.array(40, np.int32), r"total_sequence_length=40 must be at least S=1 and at most past length P=10"),
    ("pos", np.array([[99]], np.int64), r"position_ids value 99 is outside the 12 rows of cos_cache"),
    ("q", np.zeros((1, 2, 64), np.float32), r"shapes disagree"),
    ("ql", np.array([2], np.int32), r"query_seqlens must be given, S = 1"),
    ("sink", np.zeros(3, np.float32), r"head_sink must have num_heads = 4 values"),
])
def test_native_kernel_names_the_bad_input(field, value, message):
    """Inputs outside mxport's form are an error naming the input, from the native and the NumPy kernel. (ORT's
    op reads seqlens_k = 3 as a right-padded row and answers: the error also shows the library's kernel ran.)"""
    feed, attrs, _ = _case(2, 1, 2, 2, 16, 1, 10, False, -1, True, True, False)
    feed[field] = value
    session = _session(_model(feed, **attrs), register=True)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match=message):
        session.run(None, feed)
    with pytest.raises(ValueError):
        group_query_attention(*[feed.get(NAMES[i]) for i in INPUTS], **attrs)


@needs_lib
def test_attention_chain_example_agrees_with_onnxruntime(capsys):
    """examples/attention_chain.py (the attention numbers of docs/BENCHMARKS.md) on small shapes: mxport's chain
    of decode nodes gives ORT's chain's output up to float32 summation order."""
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).parents[2] / "examples" / "attention_chain.py"))
    assert example["main"](["--layers", "3", "--context", "20", "--capacity", "24", "--heads", "4", "--kv-heads", "2",
                            "--head-dim", "32", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime com.microsoft.GroupQueryAttention" in out and "mxport ai.mxport.GroupQueryAttention" in out
    assert float(out.strip().splitlines()[-1].rsplit(":", 1)[1]) <= 1e-5
