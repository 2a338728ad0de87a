"""Generator over an exported folder: ORT with the KV cache in ORT values, the NumPy backend, batching,
streaming, stop conditions, the context guard. The toy export (gen_toy) follows the model I/O contract."""

import numpy as np
import pytest

import gen_toy
from mxport.errors import MxportError
from mxport.runtime.generation.generate import Generator, GenerationConfig
from mxport.runtime.generation.sampling import SamplingConfig
from mxport.runtime.execution.step_model import OrtStepModel, resolve_provider

PROMPTS = ["Hello world, the quick brown", "The", "日本語 🙂 text"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return gen_toy.write_toy_export(tmp_path_factory.mktemp("toy") / "export")


@pytest.fixture(scope="module")
def gen(toy):
    return Generator.from_folder(toy)


@pytest.fixture(scope="module")
def gen_np(toy):
    return Generator.from_folder(toy, backend="numpy")


def test_folder_metadata(gen):
    tok = gen.tokenizer
    assert gen.eos_token_ids == (tok.token_to_id("<|return|>"), tok.token_to_id("<|endoftext|>"))
    assert gen.max_context == 96 and gen.vocab_size == 320
    assert gen.model.cache_shape.num_layers == gen_toy.LAYERS


def test_kv_cache_decoding_equals_full_recompute(gen):
    """Each cached step's logits == the logits of a full forward over prompt + tokens so far."""
    result = gen.generate(PROMPTS[0], max_new_tokens=8, stop_token_ids=())[0]
    full = np.array([result.prompt_ids + result.token_ids])
    logits = gen.prompt_logits(full)[0]
    n = len(result.prompt_ids)
    assert np.argmax(logits[n - 1:-1], axis=-1).tolist() == result.token_ids


def test_cache_stays_in_ort_values(gen):
    model = gen.model
    assert isinstance(model, OrtStepModel)
    ids = np.array([[5, 6, 7]])
    logits, cache = model.step(ids, np.ones_like(ids), np.arange(3)[None], model.new_cache(1))
    assert logits.shape == (1, 3, 320)
    assert all(type(v).__name__ == "OrtValue" for v in cache)
    assert cache[0].shape() == [1, gen_toy.KV, 3, gen_toy.D]
    logits2, cache2 = model.step(np.array([[8]]), np.ones((1, 4), np.int64), np.array([[3]]), cache)
    assert cache2[0].shape() == [1, gen_toy.KV, 4, gen_toy.D]
    np.testing.assert_allclose(cache2[0].numpy()[:, :, :3], cache[0].numpy())


def test_greedy_ort_equals_greedy_numpy_backend(gen, gen_np):
    ort = gen.generate(PROMPTS, max_new_tokens=12, stop_token_ids=())
    ref = gen_np.generate(PROMPTS, max_new_tokens=12, stop_token_ids=())
    assert [r.token_ids for r in ort] == [r.token_ids for r in ref]
    assert gen_np.name.startswith("onnx.reference")


def test_batch_equals_one_prompt_at_a_time(gen):
    batched = gen.generate(PROMPTS, max_new_tokens=10, stop_token_ids=())
    single = [gen.generate(p, max_new_tokens=10, stop_token_ids=())[0] for p in PROMPTS]
    assert len({len(r.prompt_ids) for r in batched}) == 3  # really different lengths (left padding used)
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    assert [r.text for r in batched] == [r.text for r in single]


def test_batched_sampling_matches_single_rows_prompt_logits(gen):
    """Left padding + position ids: padded prompt logits at real positions == unpadded logits."""
    short = gen.encode(PROMPTS[1])
    padded = gen.model.step(
        np.array([[0, 0] + short]), np.array([[0, 0] + [1] * len(short)]),
        np.array([[0, 0] + list(range(len(short)))]), gen.model.new_cache(1))[0]
    alone = gen.prompt_logits(np.array([short]))
    np.testing.assert_allclose(padded[0, 2:], alone[0], rtol=1e-5, atol=1e-5)


def test_seed_makes_sampling_deterministic(gen):
    opts = dict(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.95, stop_token_ids=())
    a = gen.generate(PROMPTS, seed=123, **opts)
    b = gen.generate(PROMPTS, seed=123, **opts)
    c = gen.generate(PROMPTS, seed=124, **opts)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]
    greedy = gen.generate(PROMPTS, max_new_tokens=16, stop_token_ids=())
    assert [r.token_ids for r in a] != [r.token_ids for r in greedy]


@pytest.mark.parametrize("stops", [(), (" the", "ö")])
def test_streamed_text_equals_generated_text(gen, stops):
    cfg = GenerationConfig(max_new_tokens=24, sampling=SamplingConfig(1.0, seed=5), stop_token_ids=(),
                           stop_strings=stops)
    full = gen.generate(PROMPTS, cfg)
    streamed = ["", "", ""]
    ids = [[], [], []]
    for d in gen.stream(PROMPTS, cfg):
        streamed[d.index] += d.text
        ids[d.index].append(d.token_id)
    assert streamed == [r.text for r in full]
    assert ids == [r.token_ids for r in full]


def test_stop_on_eos(gen):
    free = gen.generate(PROMPTS[0], max_new_tokens=12, stop_token_ids=())[0]
    stop_at = free.token_ids[5]
    first = free.token_ids.index(stop_at)
    r = gen.generate(PROMPTS[0], max_new_tokens=12, stop_token_ids=(stop_at,))[0]
    assert r.finish_reason == "stop_token" and r.stop_token_id == stop_at
    assert r.token_ids == free.token_ids[:first]
    assert r.text == gen.tokenizer.decode(free.token_ids[:first])


def test_stop_on_eos_from_mxport_json(toy):
    """Make the eos id of mxport.json the token greedy decoding emits third: generation stops there."""
    g = Generator.from_folder(toy)
    free = g.generate(PROMPTS[0], max_new_tokens=6, stop_token_ids=())[0]
    g.eos_token_ids = (free.token_ids[2],)
    r = g.generate(PROMPTS[0], max_new_tokens=6)[0]
    assert r.finish_reason == "stop_token"
    assert r.token_ids == free.token_ids[:free.token_ids.index(free.token_ids[2])]


def test_stop_string_cuts_text_and_stops(gen):
    free = gen.generate(PROMPTS[0], max_new_tokens=16, stop_token_ids=())[0]
    assert len(free.text) > 6
    stop = free.text[4:6]
    r = gen.generate(PROMPTS[0], max_new_tokens=16, stop_token_ids=(), stop_strings=(stop,))[0]
    assert r.finish_reason == "stop_string"
    assert r.text == free.text[:free.text.index(stop)]
    assert stop not in "".join(d.text for d in gen.stream(PROMPTS[0], max_new_tokens=16, stop_token_ids=(),
                                                            stop_strings=(stop,)))
    assert len(r.token_ids) < len(free.token_ids)


def test_max_new_tokens(gen):
    for n in (1, 3, 7):
        r = gen.generate(PROMPTS, max_new_tokens=n, stop_token_ids=())
        assert [len(x.token_ids) for x in r] == [n] * 3
        assert {x.finish_reason for x in r} == {"length"}


def test_context_guard(gen):
    prompt = list(range(1, 90))
    with pytest.raises(MxportError, match=r"context length exceeded: prompt of 89 tokens \+ --max-new-tokens 8 > 96"):
        gen.generate(prompt, max_new_tokens=8)
    assert len(gen.generate(prompt, max_new_tokens=7, stop_token_ids=())[0].token_ids) == 7
    small = Generator(gen.model, gen.tokenizer, max_context=10)
    with pytest.raises(MxportError, match="> 10"):
        small.generate(list(range(1, 8)), max_new_tokens=4)


def test_bad_inputs(gen, toy, tmp_path):
    with pytest.raises(MxportError, match="prompt token ids must be in"):
        gen.generate([5, 400])
    with pytest.raises(MxportError, match="at least one token"):
        gen.generate([[]])
    with pytest.raises(MxportError, match="--max-new-tokens must be >= 1"):
        gen.generate("hi", max_new_tokens=0)
    with pytest.raises(MxportError, match="neither an exported folder"):
        Generator.from_folder(tmp_path)
    with pytest.raises(MxportError, match="--backend 'tvm'"):
        Generator.from_folder(toy, backend="tvm")


def test_provider_errors_name_the_provider_and_the_available_ones(toy):
    import onnxruntime as ort

    assert resolve_provider("cpu") == "CPUExecutionProvider"
    assert resolve_provider("auto") in ort.get_available_providers()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(MxportError, match=r"--provider 'cuda': CUDAExecutionProvider is not available.*"
                                              r"available: .*CPUExecutionProvider"):
            Generator.from_folder(toy, provider="cuda")
    with pytest.raises(MxportError, match="--provider 'warp'"):
        resolve_provider("warp")


# ---- the real tiny gpt-oss (synth checkpoint): NumPy reference model backend, and the export when it runs -----

@pytest.fixture(scope="module")
def tiny_ckpt(make_checkpoint, tiny_config):
    return make_checkpoint(tiny_config)


@pytest.fixture(scope="module")
def tiny_np(tiny_ckpt):
    return Generator.from_folder(tiny_ckpt, backend="numpy")


TINY_PROMPTS = [[5, 17, 300, 42, 7, 99, 123, 4, 8, 15, 16, 23], [42, 7], [1, 2, 3, 4, 5, 6]]


def test_checkpoint_numpy_backend_equals_reference_generate_greedy(tiny_np, tiny_ckpt):
    from mxport.runtime.oracle.model import ReferenceModel

    assert tiny_np.name == "NumPy reference model"
    ours = tiny_np.generate(TINY_PROMPTS[0], max_new_tokens=10, stop_token_ids=())[0]
    with ReferenceModel(tiny_ckpt) as ref:
        want = ref.generate_greedy(np.array([TINY_PROMPTS[0]]), 10)[0, len(TINY_PROMPTS[0]):]
    assert ours.token_ids == want.tolist()


def test_checkpoint_batch_equals_one_at_a_time(tiny_np):
    """Sinks, a sliding window of 8 and left padding: batched greedy == each prompt alone."""
    batched = tiny_np.generate(TINY_PROMPTS, max_new_tokens=6, stop_token_ids=())
    single = [tiny_np.generate(p, max_new_tokens=6, stop_token_ids=())[0] for p in TINY_PROMPTS]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]


def test_checkpoint_needs_numpy_backend(tiny_ckpt):
    with pytest.raises(MxportError, match="is a checkpoint .* run it with --backend numpy"):
        Generator.from_folder(tiny_ckpt)


@pytest.fixture(scope="module")
def tiny_export(tiny_ckpt, tmp_path_factory):
    from mxport.exporter.export import export

    return export(tiny_ckpt, tmp_path_factory.mktemp("tiny") / "export", progress=False)


def test_export_greedy_ort_equals_numpy_reference(tiny_export, tiny_np):
    ort = Generator.from_folder(tiny_export)
    a = ort.generate(TINY_PROMPTS, max_new_tokens=8, stop_token_ids=())
    b = tiny_np.generate(TINY_PROMPTS, max_new_tokens=8, stop_token_ids=())
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    single = [ort.generate(p, max_new_tokens=8, stop_token_ids=())[0].token_ids for p in TINY_PROMPTS]
    assert single == [r.token_ids for r in a]


def test_export_onnx_reference_backend_equals_ort(tiny_export):
    ort = Generator.from_folder(tiny_export)
    ref = Generator.from_folder(tiny_export, backend="numpy")
    a = ort.generate(TINY_PROMPTS[:2], max_new_tokens=4, stop_token_ids=())
    b = ref.generate(TINY_PROMPTS[:2], max_new_tokens=4, stop_token_ids=())
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
