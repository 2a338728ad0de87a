"""The static KV cache (one buffer per layer bound as GroupQueryAttention's past and present) against the growing
one: the same logits through left padding, chunked prefill, growth past the capacity, batch surgery and the
Generator; which layers take it, and where it is refused."""

from __future__ import annotations

import numpy as np
import pytest

from mxport.errors import MxportError
from mxport.exporter.export import export
from mxport.runtime.generation.generate import Generator
from mxport.contract.io import position_ids
from mxport.runtime.execution.step_model import OrtStepModel, cache_arrays


@pytest.fixture(scope="module")
def exports(tiny_config, make_checkpoint, tmp_path_factory):
    """gpt-oss tiny: layer 0 slides over a window cache (growing), layer 1 is full (static)."""
    root = tmp_path_factory.mktemp("static_cache")
    ckpt = make_checkpoint(tiny_config)
    return {target: export(ckpt, root / target, target=target, progress=False) for target in ("cpu", "portable")}


def run(model, ids, mask, steps, chunks=1, capacity=None):
    """Prefill in `chunks` pieces, then greedy steps; the last-position logits of every call."""
    cache = model.new_cache(ids.shape[0], capacity=capacity)
    out = []
    bounds = np.linspace(0, ids.shape[1], chunks + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        logits, cache = model.step(ids[:, lo:hi], mask[:, :hi], position_ids(mask[:, :hi], hi - lo), cache)
        out.append(logits[:, -1])
    for _ in range(steps):
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
        logits, cache = model.step(logits[:, -1].argmax(-1)[:, None], mask, position_ids(mask, 1), cache)
        out.append(logits[:, -1])
    return np.stack(out), cache, mask


def batch(vocab: int):
    rng = np.random.default_rng(5)
    ids = rng.integers(3, vocab, (2, 12))
    mask = np.ones_like(ids)
    mask[1, :5] = 0  # row 1 is left-padded
    return ids, mask


def test_full_layers_take_the_static_form_and_window_layers_keep_growing(exports):
    assert OrtStepModel(exports["cpu"]).static == [False, False, True, True]  # layer 0 key/value, layer 1 key/value
    assert OrtStepModel(exports["cpu"], cache="growing").static == [False] * 4
    assert OrtStepModel(exports["portable"]).static == [False] * 4  # no GroupQueryAttention to share a buffer with
    with pytest.raises(MxportError, match="cache='shared'"):
        OrtStepModel(exports["cpu"], cache="shared")


@pytest.mark.parametrize("chunks, capacity", [(1, None), (3, 40), (2, 4)])  # (2, 4): grows twice
def test_static_equals_growing(exports, tiny_config, chunks, capacity):
    ids, mask = batch(tiny_config.vocab_size)
    want, _, _ = run(OrtStepModel(exports["cpu"], cache="growing"), ids, mask, 14, chunks)
    got, cache, mask = run(OrtStepModel(exports["cpu"]), ids, mask, 14, chunks, capacity)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    full = cache[2].shape()[2]
    assert full >= mask.shape[1] and (capacity is None or full >= capacity)
    assert cache[0].shape()[2] < mask.shape[1]  # the window layer holds the last window - 1 slots only


def test_cache_arrays_are_the_slots_in_use(exports, tiny_config):
    ids, mask = batch(tiny_config.vocab_size)
    static = OrtStepModel(exports["cpu"])
    _, cache, mask = run(static, ids, mask, 3, capacity=64)
    _, grown, _ = run(OrtStepModel(exports["cpu"], cache="growing"), *batch(tiny_config.vocab_size), 3)
    arrays = cache_arrays(static, cache, mask.shape[1])
    assert cache[2].shape()[2] == 64 and arrays[2].shape[2] == mask.shape[1]
    for got, want in zip(arrays, grown):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)
    # made back into plain ORT values of their own length, they are a valid cache again (serve's batch surgery)
    wrapped = [static._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in arrays]
    step = np.array([[7], [9]])
    mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    a, _ = static.step(step, mask, position_ids(mask, 1), wrapped)
    b, _ = static.step(step, mask, position_ids(mask, 1), cache)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * np.abs(b).max())


def test_generator_tokens_do_not_depend_on_the_cache_form(exports):
    static = Generator.from_folder(exports["cpu"])
    growing = Generator.from_folder(exports["cpu"])
    growing.model = OrtStepModel(exports["cpu"] / "model.onnx", cache="growing")
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13]]
    a = static.generate(prompts, max_new_tokens=20, stop_token_ids=())
    b = growing.generate(prompts, max_new_tokens=20, stop_token_ids=())
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert any(static.model.static)


def test_decode_ab_example_runs_mxport_and_genai(exports, capsys):
    """examples/decode_ab.py (the interleaved side-by-side timing of docs/BENCHMARKS.md) on the tiny export, and
    onnxruntime-genai on the same folder when it is installed (every export writes genai_config.json)."""
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).parents[2] / "examples" / "decode_ab.py"))
    engines = [str(exports["cpu"])]
    try:
        import onnxruntime_genai  # noqa: F401

        engines.append(f"og:{exports['cpu']}")
    except ImportError:
        pass
    assert example["main"]([*engines, "--rounds", "2", "--steps", "4", "--prompt-len", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(engines) and all("ms/step" in line for line in lines)
    assert lines[0].endswith("1.00x the first")


def test_compare_logits_example(exports, capsys):
    """examples/compare_logits.py (the int4 error table of docs/BENCHMARKS.md): the cpu export against the
    portable one agrees to float32 rounding, and the report names the folder."""
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).parents[2] / "examples" / "compare_logits.py"))
    assert example["main"]([str(exports["portable"]), str(exports["cpu"]), "--prompts", "2", "--len", "9"]) == 0
    out = capsys.readouterr().out
    assert str(exports["cpu"]) in out and "top1" in out
    row = next(line for line in out.splitlines() if line.startswith("logits"))
    rel = float(row.split()[4])  # output shape max_abs mean_abs rel ...
    assert rel < 1e-4
