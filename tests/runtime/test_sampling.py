"""Sampling: greedy, temperature, top-k, top-p, seeds."""

import numpy as np
import pytest

from mxport.errors import MxportError
from mxport.runtime.generation.sampling import SamplingConfig, filter_logits, greedy, sample


def test_greedy_is_argmax_and_ignores_rng():
    logits = np.array([[0.1, 3.0, 2.9], [5.0, -1.0, 4.0]], np.float32)
    cfg = SamplingConfig()
    assert cfg.greedy
    assert sample(logits, cfg, np.random.default_rng(1)).tolist() == [1, 0]
    assert greedy(logits).dtype == np.int64


def test_same_seed_same_draws_different_seed_differs():
    logits = np.random.default_rng(0).standard_normal((4, 50))
    cfg = SamplingConfig(temperature=1.0, seed=7)
    draws = [sample(logits, cfg, cfg.rng()).tolist() for _ in range(2)]
    assert draws[0] == draws[1]
    other = [sample(logits, cfg, np.random.default_rng(s)).tolist() for s in range(8)]
    assert len({tuple(o) for o in other}) > 1


def test_top_k_keeps_only_the_k_largest():
    logits = np.array([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = np.isfinite(filter_logits(logits, top_k=2))[0]
    assert kept.tolist() == [False, True, False, True, False]
    cfg = SamplingConfig(temperature=5.0, top_k=2)
    rng = np.random.default_rng(0)
    seen = {int(sample(logits, cfg, rng)[0]) for _ in range(200)}
    assert seen == {1, 3}


def test_top_p_keeps_the_smallest_nucleus():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    logits = np.log(probs)
    assert np.isfinite(filter_logits(logits, top_p=0.7)[0]).tolist() == [True, True, False, False]
    assert np.isfinite(filter_logits(logits, top_p=0.79)[0]).tolist() == [True, True, False, False]
    assert np.isfinite(filter_logits(logits, top_p=0.81)[0]).tolist() == [True, True, True, False]
    assert np.isfinite(filter_logits(logits, top_p=0.1)[0]).tolist() == [True, False, False, False]


def test_sampled_frequencies_follow_the_softmax():
    logits = np.log(np.array([[0.6, 0.3, 0.1]]))
    cfg = SamplingConfig(temperature=1.0)
    rng = np.random.default_rng(3)
    counts = np.bincount([int(sample(logits, cfg, rng)[0]) for _ in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(counts, [0.6, 0.3, 0.1], atol=0.03)


def test_low_temperature_approaches_greedy():
    logits = np.array([[1.0, 1.5, 0.2]])
    cfg = SamplingConfig(temperature=1e-3)
    rng = np.random.default_rng(0)
    assert {int(sample(logits, cfg, rng)[0]) for _ in range(50)} == {1}


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -1.0}, "--temperature"),
    ({"temperature": float("nan")}, "--temperature"),
    ({"top_k": -2}, "--top-k"),
    ({"top_p": 0.0}, "--top-p"),
    ({"top_p": 1.5}, "--top-p"),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(MxportError, match=match):
        SamplingConfig(**kwargs)
