"""compare() on synthetic arrays, with the expected numbers worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mxport.contract.io import hidden_layer
from mxport.errors import MxportError
from mxport.runtime.judge.compare import (
    FLOAT32_TOLERANCES,
    Report,
    Tolerance,
    compare,
    first_failing_layer,
    kl_divergence,
    resolve_tolerance,
)


def test_error_statistics_exact():
    b = {"x": np.array([[1.0, -2.0, 4.0, 0.0]], np.float32)}
    a = {"x": np.array([[1.5, -2.0, 4.0, 0.25]], np.float32)}
    s = compare(a, b)["x"]
    # |a-b| = [0.5, 0, 0, 0.25]; sorted [0, 0, 0.25, 0.5]
    assert s.max_abs == 0.5
    assert s.mean_abs == 0.1875
    assert s.max_ref == 4.0
    assert s.rel == 0.125
    assert s.quantiles["p50"] == pytest.approx(0.125)  # linear: halfway between 0 and 0.25
    assert s.quantiles["p90"] == pytest.approx(0.425)  # position 2.7: 0.25 + 0.7 * 0.25
    assert s.quantiles["p99"] == pytest.approx(0.4925)  # position 2.97
    assert s.compared == 4 and s.shape == (1, 4)
    assert s.top1 is None and s.kl_mean is None  # not logits
    assert s.failures == ["rel 0.125 > 0.0001"]


def test_pass_and_fail_at_the_limit():
    b = {"x": np.array([2.0, -4.0])}
    a = {"x": np.array([2.0, -4.0004])}  # rel = 0.0004 / 4 = 1e-4 (up to float rounding)
    assert compare(a, b, {"x": Tolerance(rel=1.0001e-4)})
    assert not compare(a, b, {"x": Tolerance(rel=0.9999e-4)})
    assert compare(a, b, {"x": Tolerance(abs=0.00041)})
    assert not compare(a, b, {"x": Tolerance(abs=0.00039)})
    assert compare(a, a)  # identical: rel 0 passes the default 1e-4
    assert compare(a, a)["x"].rel == 0.0


def test_logits_top1_and_kl_exact():
    # position 0: p = softmax(b) = [1/2, 1/4, 1/4], q = softmax(a) = [1/4, 1/2, 1/4]
    #   KL(p || q) = 1/2 ln 2 + 1/4 ln(1/2) + 0 = ln(2) / 4; argmax differs (0 vs 1)
    # position 1: identical logits: KL 0, same argmax
    b = np.log(np.array([[[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]]))
    a = np.log(np.array([[[0.25, 0.5, 0.25], [0.2, 0.3, 0.5]]]))
    s = compare({"logits": a}, {"logits": b}, {"logits": Tolerance(top1=0.5)})["logits"]
    assert s.top1 == 0.5
    assert s.kl_max == pytest.approx(math.log(2) / 4, rel=1e-12)
    assert s.kl_mean == pytest.approx(math.log(2) / 8, rel=1e-12)
    assert s.passed
    s = compare({"logits": a}, {"logits": b}, {"logits": Tolerance(top1=1.0, kl_mean=0.05)})["logits"]
    assert s.failures == ["top1 0.5 < 1", "kl_mean 0.0866 > 0.05"]


def test_kl_is_shift_invariant_and_zero_for_equal_distributions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7))
    np.testing.assert_allclose(kl_divergence(x, x + 3.0), 0.0, atol=1e-12)
    assert (kl_divergence(x, rng.normal(size=(5, 7))) > 0).all()


def test_default_tolerances_require_top1_for_float32_logits():
    b = np.zeros((1, 2, 4), np.float32)
    b[0, :, 1] = 10.0
    b[0, 1, 2] = 10.0 - 1e-5
    a = b.copy()
    a[0, 1, 2] = 10.0 + 1e-5  # relative error 2e-6 but the argmax flips at position 1
    report = compare({"logits": a}, {"logits": b})
    assert report["logits"].rel == pytest.approx(2e-6, rel=0.1)
    assert report["logits"].top1 == 0.5
    assert not report
    assert report["logits"].failures == ["top1 0.5 < 1"]


def test_tolerance_patterns_first_match_wins_and_float_means_rel():
    tols = {"hidden_states.3": Tolerance(rel=0.5), "hidden_states.*": 1e-3, "*": Tolerance()}
    assert resolve_tolerance("hidden_states.3", tols) == Tolerance(rel=0.5)
    assert resolve_tolerance("hidden_states.12", tols) == Tolerance(rel=1e-3)
    assert resolve_tolerance("present.0.key", tols) == Tolerance()
    assert resolve_tolerance("present.0.key", {"logits": 1.0}) == Tolerance()  # no match: nothing checked
    assert resolve_tolerance("logits", None) == FLOAT32_TOLERANCES["logits"]


def test_mask_restricts_positions():
    b = np.zeros((2, 3, 4))
    a = b.copy()
    a[1, 0] = 100.0  # a padded position
    valid = np.array([[1, 1, 1], [0, 1, 1]], bool)
    assert not compare({"logits": a}, {"logits": b + 1e-9})
    s = compare({"logits": a}, {"logits": b}, masks={"logits": valid})["logits"]
    assert s.compared == 5 * 4 and s.max_abs == 0.0 and s.top1 == 1.0
    with pytest.raises(MxportError, match=r"mask for 'logits' has shape \(3,\)"):
        compare({"logits": a}, {"logits": b}, masks={"logits": np.ones(3, bool)})


def test_non_finite_values_are_never_agreement():
    b = {"x": np.array([1.0, np.inf, np.nan, 2.0])}
    same = compare({"x": b["x"].copy()}, b)  # the same inf and NaN in the same places: still broken numbers
    assert not same and same["x"].non_finite == {"test": 2, "reference": 2}
    assert same["x"].failures == ["non-finite values (NaN/inf): test 2, reference 2; first at index (1,)"]
    s = compare({"x": np.array([1.0, 2.0, 3.0, np.nan])}, {"x": np.array([1.0, 2.0, 3.0, 4.0])})["x"]
    assert s.failures == ["non-finite values (NaN/inf): test 1; first at index (3,)"] and s.non_finite == {"test": 1}
    assert s.max_abs == 0.0  # only finite pairs enter the statistics
    nan_logits = np.zeros((1, 2, 4))
    nan_logits[0, 1, 2] = np.nan
    lg = compare({"logits": nan_logits}, {"logits": np.zeros((1, 2, 4))}, {"logits": Tolerance()})["logits"]
    assert not lg.passed and np.isnan(lg.kl_max)  # no tolerance at all, and still a failure
    assert json.loads(compare({"logits": nan_logits}, {"logits": nan_logits}).to_json())["passed"] is False


def test_a_kl_that_is_not_finite_fails():
    a = np.array([[[0.0, 1e308, -1e308]]])  # finite logits whose softmax underflows: KL is inf
    b = np.array([[[0.0, -1e308, 1e308]]])
    with np.errstate(over="ignore", invalid="ignore"):
        s = compare({"logits": a}, {"logits": b}, {"logits": Tolerance()})["logits"]
    assert not s.non_finite and not s.passed and any("KL is not finite" in f for f in s.failures), s.failures


def test_zero_reference():
    z = {"x": np.zeros(3)}
    assert compare(z, z)["x"].rel == 0.0
    assert compare({"x": np.array([0, 1e-9, 0])}, z)["x"].rel == math.inf


def test_shape_mismatch_and_missing_names():
    with pytest.raises(MxportError, match=r"output 'x' has shape \(2,\) under test but \(3,\)"):
        compare({"x": np.zeros(2)}, {"x": np.zeros(3)})
    with pytest.raises(MxportError, match=r"outputs \['y'\] are not in both"):
        compare({"x": np.zeros(2)}, {"x": np.zeros(2), "y": np.zeros(1)}, names=["x", "y"])
    r = compare({"x": np.zeros(2), "extra": np.zeros(1)}, {"x": np.zeros(2), "hidden_states.0": np.zeros(1)})
    assert [s.name for s in r.outputs] == ["x"]
    assert r.only_a == ["extra"] and r.only_b == ["hidden_states.0"]


def test_first_failing_layer():
    ref = {f"hidden_states.{i}": np.ones(4) for i in range(4)}
    test = {k: v.copy() for k, v in ref.items()}
    assert first_failing_layer(compare(test, ref)) is None
    test["hidden_states.3"] += 1.0
    test["hidden_states.2"] += 1e-3
    r = compare(test, ref)
    assert first_failing_layer(r) == 2
    assert first_failing_layer([compare(ref, ref), r]) == 2
    assert hidden_layer("step1/hidden_states.11") == 11 and hidden_layer("logits") is None


def test_report_json_and_table():
    b = {"logits": np.log(np.array([[[0.5, 0.25, 0.25]]])), "hidden_states.0": np.ones(3)}
    a = {"logits": np.log(np.array([[[0.25, 0.5, 0.25]]])), "hidden_states.0": np.array([1.0, 1.0, 1.5])}
    r = compare(a, b, title="prefill")
    d = json.loads(r.to_json())
    assert d["passed"] is False and d["first_failing_layer"] == 0 and d["title"] == "prefill"
    out = {o["name"]: o for o in d["outputs"]}
    assert out["hidden_states.0"]["rel"] == 0.5 and out["hidden_states.0"]["tolerance"] == {"rel": 1e-4}
    assert out["logits"]["top1"] == 0.0 and out["logits"]["kl_max"] == pytest.approx(math.log(2) / 4)
    text = str(r)
    assert text.startswith("prefill: FAIL (2 of 2 outputs)")
    assert "hidden_states.0" in text and "FAIL: rel 0.5 > 0.0001" in text and "first failing layer: 0" in text
    inf = compare({"x": np.ones(1)}, {"x": np.zeros(1)})
    assert json.loads(inf.to_json())["outputs"][0]["rel"] == "inf"
    assert isinstance(r, Report) and not r.passed
