"""add_conformal: split-conformal sets and intervals in the graph, their coverage on unseen rows,
an independent NumPy reference of each definition, the exports, NaN rows and bad input."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import combiners
import ensemble
from ensemble.fitting import conformal_config, conformal_metrics

CLASSES = 10
ALPHA = 0.1
CALIBRATION, TEST = 2000, 20000


def _softmax_member(name: str, temperature: float) -> ensemble.Member:
    """A member whose probabilities are softmax(x / temperature): its logits are its input."""
    inputs = keras.Input((CLASSES,), name="features")
    outputs = keras.layers.Softmax()(keras.layers.Rescaling(1.0 / temperature)(inputs))
    return ensemble.load_member(keras.Model(inputs, outputs), name=name, output="probabilities")


@pytest.fixture(scope="module")
def classifier() -> keras.Model:
    return ensemble.build_ensemble(
        [_softmax_member("a", 1.0), _softmax_member("b", 2.0)], combiners.MeanCombiner()
    )


@pytest.fixture(scope="module")
def rows() -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / 1.5): the ensemble is not calibrated to
    them, which conformal coverage does not need."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(CALIBRATION + TEST, CLASSES)) * 3).astype("float32")
    p = np.exp(x / 1.5 - (x / 1.5).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random((len(x), 1))).argmax(1)
    return x, y


def _tolerance(alpha: float, calibration: int, test: int) -> float:
    """Three standard deviations of the test coverage: binomial on the test rows, plus the
    calibration set's own spread (its coverage is Beta distributed, variance ~ a(1-a)/n)."""
    return 3 * math.sqrt(alpha * (1 - alpha) * (1 / calibration + 1 / test))


@pytest.mark.parametrize("method", ["aps", "thr"])
def test_coverage_on_unseen_rows(classifier, rows, method):
    x, y = rows
    model = ensemble.add_conformal(classifier, x[:CALIBRATION], y[:CALIBRATION], alpha=ALPHA, method=method)
    report = conformal_metrics(model.predict(x[CALIBRATION:], batch_size=2048, verbose=0), y[CALIBRATION:])
    print(method, report)  # the set size, reported
    slack = _tolerance(ALPHA, CALIBRATION, TEST)
    assert report["coverage"] >= 1 - ALPHA - slack, report
    assert 1 < report["mean_set_size"] < CLASSES, report
    if method == "thr":  # continuous scores: coverage at most 1 - alpha + 1/(n + 1)
        assert report["coverage"] <= 1 - ALPHA + 1 / (CALIBRATION + 1) + slack, report
    else:  # never empty on a finite row; over-covers by the crossing class
        assert report["empty_sets"] == 0.0


def _numpy_sets(method: str, p_cal, y_cal, p_new, alpha):
    """The definitions in float64 NumPy: the threshold and each new row's set, with a mask of
    rows where some class's score lies within 1e-5 of the threshold (float32 may differ)."""
    p_cal, p_new = p_cal.astype("float64"), p_new.astype("float64")
    n = len(p_cal)
    if method == "thr":
        scores = 1 - p_cal[np.arange(n), y_cal]
    else:
        order = np.argsort(-p_cal, axis=1, kind="stable")
        mass = np.cumsum(np.take_along_axis(p_cal, order, 1), 1)
        scores = mass[np.arange(n), np.argsort(order, axis=1)[np.arange(n), y_cal]]
    q = np.sort(scores)[math.ceil((n + 1) * (1 - alpha)) - 1]
    if method == "thr":
        sets, near = 1 - p_new <= q, np.abs(1 - p_new - q) < 1e-5
    else:
        order = np.argsort(-p_new, axis=1, kind="stable")
        mass = np.cumsum(np.take_along_axis(p_new, order, 1), 1)
        before = mass - np.take_along_axis(p_new, order, 1)
        chosen = (mass <= q) | (before < q)
        sets = np.take_along_axis(chosen, np.argsort(order, axis=1), 1)
        near = (np.abs(mass - q) < 1e-5) | (np.abs(before - q) < 1e-5)
    return q, sets, near.any(axis=1)


@pytest.mark.parametrize("method", ["aps", "thr"])
def test_sets_match_a_numpy_reference(classifier, rows, method):
    x, y = rows
    x_cal, y_cal, x_new = x[:CALIBRATION], y[:CALIBRATION], x[CALIBRATION : CALIBRATION + 5000]
    model = ensemble.add_conformal(classifier, x_cal, y_cal, method=method)
    p_cal = classifier.predict(x_cal, batch_size=2048, verbose=0)["prediction"]
    p_new = classifier.predict(x_new, batch_size=2048, verbose=0)["prediction"]
    q, expected, near = _numpy_sets(method, p_cal, y_cal, p_new, ALPHA)
    config = conformal_config(model)
    assert config is not None and config["method"] == method and config["calibration_rows"] == CALIBRATION
    assert config["threshold"] == pytest.approx(q, abs=1e-5)
    sets = model.predict(x_new, batch_size=2048, verbose=0)["prediction_set"]
    assert sets.dtype == bool and sets.shape == (len(x_new), CLASSES)
    assert near.mean() < 0.01
    np.testing.assert_array_equal(sets[~near], expected[~near])


def test_aps_ties_and_a_hand_worked_row():
    """Probabilities (0.5, 0.25, 0.25): with q = 0.6 the set is the top class and the one that
    crosses 0.6 (class 1, the lower index of the tie), not class 2."""
    from ensemble.graph.conformal import ConformalSet, class_scores

    p = np.array([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]], dtype="float32")
    sets = keras.ops.convert_to_numpy(ConformalSet("aps", 0.6, 0.1, 10)(p))
    np.testing.assert_array_equal(sets, [[True, True, False], [True, False, True]])
    scores = keras.ops.convert_to_numpy(class_scores("aps", p, np.array([2, 1])))
    np.testing.assert_allclose(scores, [1.0, 1.0])  # class 2 ranks after class 1 on the tie
    thr = keras.ops.convert_to_numpy(ConformalSet("thr", 0.6, 0.1, 10)(p))
    np.testing.assert_array_equal(thr, [[True, False, False], [False, False, True]])


@pytest.fixture(scope="module")
def regressor() -> keras.Model:
    members = []
    for name, scale in (("r1", 0.8), ("r2", 1.2), ("r3", 1.0)):
        inputs = keras.Input((2,), name="features")
        outputs = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(scale), name="d")(
            inputs
        )
        members.append(ensemble.load_member(keras.Model(inputs, outputs), name=name))
    return ensemble.build_ensemble(members, combiners.MeanCombiner(), task="regression")


@pytest.fixture(scope="module")
def regression_rows() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(CALIBRATION + TEST, 2)).astype("float32")
    y = x.sum(1, keepdims=True) + rng.normal(size=(len(x), 1)) * (0.2 + np.abs(x.sum(1, keepdims=True)))
    return x, y.astype("float32")


@pytest.mark.parametrize("method", ["absolute", "normalized"])
def test_regression_interval_coverage(regressor, regression_rows, method):
    x, y = regression_rows
    model = ensemble.add_conformal(regressor, x[:CALIBRATION], y[:CALIBRATION], method=method)
    outputs = model.predict(x[CALIBRATION:], batch_size=2048, verbose=0)
    report = conformal_metrics(outputs, y[CALIBRATION:])
    print(method, report)
    slack = _tolerance(ALPHA, CALIBRATION, TEST)
    assert abs(report["coverage"] - (1 - ALPHA)) <= slack + 1 / (CALIBRATION + 1), report
    # The NumPy reference of the interval.
    base = regressor.predict(x, batch_size=2048, verbose=0)
    scale = np.maximum(base["std"], 1e-6) if method == "normalized" else np.ones_like(base["std"])
    scores = np.abs(y[:CALIBRATION] - base["prediction"][:CALIBRATION]) / scale[:CALIBRATION]
    q = np.sort(scores[:, 0])[math.ceil((CALIBRATION + 1) * (1 - ALPHA)) - 1]
    expected = base["prediction"][CALIBRATION:] + q * scale[CALIBRATION:]
    np.testing.assert_allclose(outputs["interval_high"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        outputs["interval_low"], 2 * base["prediction"][CALIBRATION:] - expected, atol=2e-5
    )
    if method == "normalized":  # as wide as the members' spread, so narrower where they agree
        width = outputs["interval_high"] - outputs["interval_low"]
        assert np.corrcoef(width[:, 0], base["std"][CALIBRATION:, 0])[0, 1] > 0.99


def test_outputs_unchanged_and_the_caller_model_untouched(classifier, rows):
    x, y = rows
    before = classifier.predict(x[:500], batch_size=2048, verbose=0)
    model = ensemble.add_conformal(classifier, x[:CALIBRATION], y[:CALIBRATION])
    assert "prediction_set" not in classifier.output
    outputs = model.predict(x[:500], batch_size=2048, verbose=0)
    assert sorted(outputs) == sorted([*before, "prediction_set"])
    for key, value in before.items():
        np.testing.assert_array_equal(outputs[key], value, err_msg=key)
    view = ensemble.EnsembleView.of(model)
    assert view.member_names == ["a", "b"] and view.task == "classification"
    again = ensemble.add_conformal(model, x[:CALIBRATION], y[:CALIBRATION], alpha=0.2, method="thr")
    assert conformal_config(again)["alpha"] == 0.2 and sorted(again.output) == sorted(outputs)
    assert sum("conformal" in layer.name for layer in again.layers) == 1


def test_exports_carry_the_sets(classifier, rows, tmp_path):
    x, y = rows
    model = ensemble.add_conformal(classifier, x[:CALIBRATION], y[:CALIBRATION])
    feed = x[CALIBRATION : CALIBRATION + 300]
    feed[7] = np.nan  # a NaN row survives every export as an all-False set
    expected = model.predict(feed, batch_size=2048, verbose=0)
    path = ensemble.export_saved_model(model, tmp_path / "export")
    served = tf.saved_model.load(path).signatures["serving_default"](features=tf.constant(feed))
    assert served["prediction_set"].dtype == tf.bool
    np.testing.assert_array_equal(served["prediction_set"].numpy(), expected["prediction_set"])
    assert ensemble.read_manifest(path)["conformal"] == conformal_config(model)
    registry = ensemble.ModelRegistry()
    registry.register("conformal", path)
    np.testing.assert_array_equal(
        registry.predict("conformal", feed)["prediction_set"], expected["prediction_set"]
    )
    lite = ensemble.export_tflite(path, tmp_path / "model.tflite")
    on_device = ensemble.run_tflite(lite, {"features": feed})
    assert on_device["prediction_set"].dtype == bool
    np.testing.assert_array_equal(on_device["prediction_set"], expected["prediction_set"])
    report = ensemble.tflite_report(model, {"none": lite}, feed[:7])
    assert report["none"]["set_agreement"] == 1.0


def test_keras_file_round_trip(classifier, rows, tmp_path):
    x, y = rows
    model = ensemble.add_conformal(classifier, x[:CALIBRATION], y[:CALIBRATION], method="thr")
    model.save(tmp_path / "conformal.keras")
    loaded = keras.saving.load_model(tmp_path / "conformal.keras")
    np.testing.assert_array_equal(
        loaded.predict(x[:200], batch_size=2048, verbose=0)["prediction_set"],
        model.predict(x[:200], verbose=0)["prediction_set"],
    )
    assert conformal_config(loaded) == conformal_config(model)


def test_a_nan_row_gets_no_confident_set(classifier, regressor, rows, regression_rows):
    x, y = rows
    feed = x[:6].copy()
    feed[2, 3] = np.nan
    for method in ("aps", "thr"):
        model = ensemble.add_conformal(classifier, x[:CALIBRATION], y[:CALIBRATION], method=method)
        sets = model.predict(feed, batch_size=2048, verbose=0)["prediction_set"]
        assert not sets[2].any(), method
        finite = np.delete(np.arange(6), 2)
        np.testing.assert_array_equal(
            sets[finite], model.predict(feed[finite], batch_size=2048, verbose=0)["prediction_set"]
        )
        assert conformal_metrics({"prediction_set": sets[2:3]}, y[2:3])["coverage"] == 0.0
    xr, yr = regression_rows
    model = ensemble.add_conformal(regressor, xr[:CALIBRATION], yr[:CALIBRATION])
    outputs = model.predict(np.array([[np.nan, 0.0], [1.0, 0.0]], "float32"), batch_size=2048, verbose=0)
    assert np.isnan(outputs["interval_low"][0]).all() and np.isfinite(outputs["interval_low"][1]).all()


def test_the_leakage_guard_refuses_rows_a_member_trained_on(classifier, rows):
    x, y = rows
    member = ensemble.EnsembleView.of(classifier).members[0]
    member.training_rows = x[:50].copy()
    try:
        with pytest.raises(ensemble.EnsembleError, match=r"Calibration rows trained member\(s\) \{'a': 50\}"):
            ensemble.add_conformal(classifier, x[:CALIBRATION], y[:CALIBRATION])
        model = ensemble.add_conformal(classifier, x[:CALIBRATION], y[:CALIBRATION], allow_overlap=True)
        assert "prediction_set" in model.output
        ensemble.add_conformal(classifier, x[50:CALIBRATION], y[50:CALIBRATION])  # held out: fine
    finally:
        member.training_rows = None


def _with_nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[3, 1] = np.inf
    return x


ERRORS = [
    ({"alpha": 0.0}, r"Expected alpha in \(0, 1\)"),
    ({"alpha": 1.0}, r"Expected alpha in \(0, 1\)"),
    ({"alpha": float("nan")}, r"Expected alpha in \(0, 1\)"),
    ({"alpha": True}, r"Expected alpha to be a number"),
    ({"alpha": "0.1"}, r"Expected alpha to be a number"),
    ({"method": "raps"}, r"Expected method in \('aps', 'thr'\) for a classification ensemble"),
    ({"method": "absolute"}, r"Expected method in \('aps', 'thr'\)"),
    ({"rows": 5}, r"alpha=0.1 needs at least 9 calibration rows.*Received: 5 rows"),
    ({"y": lambda y: y[:-1]}, r"Expected y with one target per row of x"),
    ({"y": lambda y: y + 10}, r"Expected class labels in \[0, 10\)"),
    ({"y": lambda y: y + 0.5}, r"non-integer values"),
    ({"y": lambda y: np.stack([y, y], 1)}, r"Expected integer class labels, shape \(rows,\)"),
    ({"x": _with_nan}, r"x holds NaN or infinite values in 1 row\(s\) of 100 \(first rows \[3\]\)"),
]


@pytest.mark.parametrize(("change", "match"), ERRORS, ids=[m[:30] for _, m in ERRORS])
def test_bad_input_is_a_clear_error(classifier, rows, change, match):
    x, y = rows[0][: change.get("rows", 100)], rows[1][: change.get("rows", 100)]
    x = change["x"](x) if "x" in change else x
    y = change["y"](y) if "y" in change else y
    options = {key: change[key] for key in ("alpha", "method") if key in change}
    with pytest.raises(ensemble.EnsembleError, match=match):
        ensemble.add_conformal(classifier, x, y, **options)


def test_regression_errors_and_not_an_ensemble(regressor, regression_rows):
    x, y = regression_rows
    with pytest.raises(ensemble.EnsembleError, match=r"Expected method in \('absolute', 'normalized'\)"):
        ensemble.add_conformal(regressor, x[:100], y[:100], method="aps")
    with pytest.raises(ensemble.EnsembleError, match=r"Expected 1 regression target"):
        ensemble.add_conformal(regressor, x[:100], np.repeat(y[:100], 2, axis=1))
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ensemble.EnsembleError, match="not an ensemble built by build_ensemble"):
        ensemble.add_conformal(plain, x[:100], y[:100])
    with pytest.raises(ensemble.EnsembleError, match="Expected conformal outputs"):
        conformal_metrics(regressor.predict(x[:10], batch_size=2048, verbose=0), y[:10])
