"""add_conformal's prediction sets (THR, APS and RAPS, randomised or not, and `auto`): their
coverage on held-out rows, set sizes on underconfident members, an independent NumPy reference of
each score and set, the exports, NaN rows and bad input. Intervals: tests/test_conformal_split.py."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import combiners
import ensemble
from ensemble.export import run_onnx
from ensemble.fitting import conformal_config, conformal_metrics
from ensemble.graph.conformal import ConformalSet, class_scores, class_sets

CLASSES, ALPHA, CALIBRATION, TEST = 10, 0.1, 1000, 20000


def _softmax_member(name: str, temperature: float) -> ensemble.Member:
    """A member whose probabilities are softmax(x / temperature): its logits are its input."""
    inputs = keras.Input((CLASSES,), name="features")
    outputs = keras.layers.Softmax()(keras.layers.Rescaling(1.0 / temperature)(inputs))
    return ensemble.load_member(keras.Model(inputs, outputs), name=name, output="probabilities")


@pytest.fixture(scope="module")
def classifier() -> keras.Model:
    """Tempered members (T = 4 and 4.8) of logits whose labels are drawn untempered: the ensemble
    is underconfident, as members trained with label smoothing are."""
    members = [_softmax_member("a", 4.0), _softmax_member("b", 4.8)]
    return ensemble.build_ensemble(members, combiners.MeanCombiner())


@pytest.fixture(scope="module")
def rows() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(CALIBRATION + TEST, CLASSES)) * 8).astype("float32")
    p = np.exp(x - x.max(1, keepdims=True))
    y = (p.cumsum(1) / p.sum(1, keepdims=True) > rng.random((len(x), 1))).argmax(1)
    return x, y


def _reference(method, p, q, *, y=None, u=None, k_reg=0, lambda_reg=0.0):
    """The definitions in float64 NumPy: the label's score on each row (given `y`), else the
    sets for threshold `q` and a mask of rows with a score within 1e-5 of `q` (float32 may
    differ there). `u`: one Uniform(0, 1) per row (randomised), or None."""
    p, rows = p.astype("float64"), np.arange(len(p))
    order = np.argsort(-p, axis=1, kind="stable")  # ties: the lower class first
    ordered = np.take_along_axis(p, order, 1)
    above = np.cumsum(ordered, 1) - ordered
    penalty = lambda_reg * np.maximum(np.arange(1, p.shape[1] + 1) - k_reg, 0)
    if method == "thr":
        high = low = 1 - ordered
    elif u is None:  # the class that crosses q stays in
        high, low = above + ordered + penalty, above + penalty
    else:
        high = low = above + u[:, None] * ordered + penalty
    if y is not None:
        return high[rows, np.argsort(order, 1)[rows, y]]
    chosen = (high <= q) | (low < q) if method != "thr" and u is None else high <= q
    near = (np.abs(high - q) < 1e-5) | (np.abs(low - q) < 1e-5)
    return np.take_along_axis(chosen, np.argsort(order, 1), 1), near.any(axis=1)


def _bounds(config, p):
    """The smallest and largest sets a randomised layer may give on each row (u -> 1, u -> 0),
    and the chance that it gives the largest: `(q - m - penalty) / p` of the crossing class."""
    method, q, zeros = config["method"], config["threshold"], np.zeros(len(p))
    rule = {key: config[key] for key in ("k_reg", "lambda_reg")}
    small, large = (_reference(method, p, q, u=zeros + u, **rule)[0] for u in (1, 0))
    crossing = np.argmax(large & ~small, axis=1)
    start = _reference(method, p, q, y=crossing, u=zeros, **rule)
    chance = np.clip((q - start) / np.maximum(p[np.arange(len(p)), crossing], 1e-12), 0, 1)
    return small, large, np.where((large & ~small).any(1), chance, 0.0)


def _tolerance(alpha: float, calibration: int, test: int) -> float:
    """Three standard deviations of the test coverage: binomial on the test rows, plus the
    calibration set's own spread (its coverage is Beta distributed, variance ~ a(1-a)/n)."""
    return 3 * math.sqrt(alpha * (1 - alpha) * (1 / calibration + 1 / test))


RULES = {
    "thr": {"method": "thr"},
    "aps": {"method": "aps"},
    "aps-randomized": {"method": "aps", "randomized": True},
    "raps": {"method": "raps"},  # randomised, k_reg and lambda_reg tuned
    "raps-given": {"method": "raps", "randomized": False, "k_reg": 2, "lambda_reg": 0.1},
    "auto": {"method": "auto"},  # deterministic: the default
    "auto-randomized": {"method": "auto", "randomized": True},
}


@pytest.fixture(scope="module")
def measured(classifier, rows):
    """Each rule calibrated on the first CALIBRATION rows, measured on the other TEST."""
    x, y = rows
    found = {}
    for name, options in RULES.items():
        model = ensemble.add_conformal(classifier, x[:CALIBRATION], y[:CALIBRATION], alpha=ALPHA, **options)
        outputs = model.predict(x[CALIBRATION:], batch_size=4096, verbose=0)
        found[name] = model, conformal_config(model), conformal_metrics(outputs, y[CALIBRATION:])
    return found


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.slow
def test_coverage_on_held_out_rows(measured, name):
    _, config, report = measured[name]
    print(name, config["method"], config["k_reg"], config["lambda_reg"], report)  # the measures
    n = config["calibration_rows"]
    slack = _tolerance(ALPHA, n, TEST)
    assert report["coverage"] >= 1 - ALPHA - slack, report
    if name in ("aps", "raps-given"):  # keeps the crossing class: never empty, over-covers
        assert report["empty_sets"] == 0.0 and report["coverage"] > 1 - ALPHA + slack, report
    else:  # continuous scores: at most 1 - alpha + 1/(n + 1)
        assert report["coverage"] <= 1 - ALPHA + 1 / (n + 1) + slack, report
    assert n == (700 if name in ("raps", "auto", "auto-randomized") else CALIBRATION)


def test_auto_sets_are_as_small_as_thr_and_far_smaller_than_plain_aps(measured):
    size = {name: report["mean_set_size"] for name, (_, _, report) in measured.items()}
    # Measured: thr 1.19, aps 3.10, aps-randomized 1.52, raps 1.38, raps-given 2.44, auto 1.16.
    assert size["auto"] <= size["thr"] + 0.05 and size["auto"] < size["aps"] - 1.5, size
    assert size["aps-randomized"] < size["aps"] - 1.0 and size["raps"] < size["aps"] - 1.0, size


def test_auto_records_its_choice_and_is_reproducible(classifier, rows, measured):
    for name, randomized in (("auto", False), ("auto-randomized", True)):  # the default: deterministic
        _, config, _ = measured[name]
        selection = config["selection"]
        assert selection["requested"] == "auto" and selection["tuning_rows"] == 300 and selection["seed"] == 0
        tried = selection["tried"]
        assert [rule["method"] for rule in tried] == ["thr", "aps"] + ["raps"] * 5
        assert all(rule["randomized"] is randomized for rule in tried[1:])
        assert len({r["k_reg"] for r in tried[2:]}) == 1
    _, config, _ = measured["auto"]
    tried = config["selection"]["tried"]
    best = min(tried, key=lambda rule: rule["mean_set_size"])
    assert all(config[key] == best[key] for key in ("method", "randomized", "k_reg", "lambda_reg"))
    x, y = rows
    again = ensemble.add_conformal(classifier, x[:CALIBRATION], y[:CALIBRATION], method="auto")
    assert conformal_config(again) == config
    other = ensemble.add_conformal(classifier, x[:CALIBRATION], y[:CALIBRATION], method="auto", seed=1)
    assert conformal_config(other)["selection"]["tried"] != tried
    raps = measured["raps"][1]["selection"]["tried"]
    assert [rule["lambda_reg"] for rule in raps] == [0.001, 0.01, 0.1, 0.2, 0.5]


@pytest.mark.parametrize("name", ["thr", "aps", "aps-randomized", "raps-given"])
def test_scores_sets_and_threshold_match_a_numpy_reference(classifier, rows, measured, name):
    x, y = rows
    rng = np.random.default_rng(5)
    p = classifier.predict(x, batch_size=4096, verbose=0)["prediction"]
    p_cal, p_new, u = p[:CALIBRATION], p[CALIBRATION : CALIBRATION + 5000], rng.random(5000)
    model, config, _ = measured[name]
    rule = {"k_reg": config["k_reg"], "lambda_reg": config["lambda_reg"]}
    noise = u if config["randomized"] else None
    scores = class_scores(config["method"], p_new, y[CALIBRATION : CALIBRATION + 5000], noise=noise, **rule)
    expected = _reference(
        config["method"], p_new, 0.0, y=y[CALIBRATION : CALIBRATION + 5000], u=noise, **rule
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scores), expected, atol=2e-6)
    # The threshold: the ceil((n+1)(1-alpha))-th smallest score, its noise drawn from the seed.
    seeded = np.random.default_rng(0).random(CALIBRATION).astype("float32") if config["randomized"] else None
    reference = np.sort(_reference(config["method"], p_cal, 0.0, y=y[:CALIBRATION], u=seeded, **rule))
    assert config["threshold"] == pytest.approx(reference[math.ceil(1001 * (1 - ALPHA)) - 1], abs=1e-5)
    sets, near = _reference(config["method"], p_new, config["threshold"], u=noise, **rule)
    found = keras.ops.convert_to_numpy(
        class_sets(config["method"], p_new, config["threshold"], noise=noise, **rule)
    )
    assert near.mean() < 0.01
    np.testing.assert_array_equal(found[~near], sets[~near])
    if not config["randomized"]:  # the layer in the model gives the same sets
        served = model.predict(x[CALIBRATION : CALIBRATION + 5000], batch_size=4096, verbose=0)
        np.testing.assert_array_equal(served["prediction_set"][~near], sets[~near])


@pytest.mark.parametrize("name", ["aps-randomized", "raps"])
def test_randomized_sets_change_between_calls_and_keep_the_crossing_class_at_its_odds(rows, measured, name):
    x, _ = rows
    model, config, _ = measured[name]
    feed = x[CALIBRATION : CALIBRATION + 8000]
    first, second = (model.predict(feed, batch_size=4096, verbose=0) for _ in range(2))
    small, large, chance = _bounds(config, first["prediction"])
    for sets in (first["prediction_set"], second["prediction_set"]):
        assert (sets >= small).all() and (sets <= large).all()  # the two sets a row may get
        kept = (sets & ~small).any(1)[chance > 0]
        spread = 4 * math.sqrt((chance * (1 - chance)).sum()) / (chance > 0).sum()
        assert abs(kept.mean() - chance[chance > 0].mean()) < spread, (kept.mean(), chance.mean())
    assert (first["prediction_set"] != second["prediction_set"]).any(1).mean() > 0.05


def test_hand_worked_rows():
    """(0.5, 0.25, 0.25), q = 0.6: APS keeps the crossing class 1 (the lower index of the tie);
    with u the scores are (0.5u, 0.5 + 0.25u, 0.75 + 0.25u); RAPS (k_reg 1, lambda 0.1) adds
    (0, 0.1, 0.2): class 1's score with u = 0 is 0.6, not below q, so it goes."""
    p = np.array([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]], dtype="float32")

    def sets(method: str, **options) -> np.ndarray:
        return keras.ops.convert_to_numpy(class_sets(method, p, 0.6, **options))

    np.testing.assert_array_equal(sets("aps"), [[True, True, False], [True, False, True]])
    np.testing.assert_array_equal(sets("thr"), [[True, False, False], [False, False, True]])
    np.testing.assert_array_equal(
        sets("raps", k_reg=1, lambda_reg=0.1), [[True, False, False], [False, False, True]]
    )
    u = np.array([0.3, 0.5], "float32")  # row 1: 0.5 * 0.5 = 0.25 in, then 0.5 + 0.125 out
    np.testing.assert_array_equal(sets("aps", noise=u), [[True, True, False], [False, False, True]])
    scores = class_scores("aps", p, np.array([2, 1]))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scores), [1.0, 1.0])  # 2 ranks after 1
    scores = class_scores("raps", p, np.array([1, 1]), noise=u, k_reg=1, lambda_reg=0.1)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(scores), [0.5 + 0.075 + 0.1, 0.75 + 0.125 + 0.2], atol=1e-6
    )


def test_outputs_unchanged_and_the_caller_model_untouched(classifier, rows):
    x, y = rows
    before = classifier.predict(x[:500], batch_size=2048, verbose=0)
    model = ensemble.add_conformal(classifier, x[:CALIBRATION], y[:CALIBRATION])
    assert (
        "prediction_set" not in classifier.output
        and conformal_config(model)["selection"]["requested"] == "auto"
    )
    outputs = model.predict(x[:500], batch_size=2048, verbose=0)
    assert sorted(outputs) == sorted([*before, "prediction_set"])
    for key, value in before.items():
        np.testing.assert_array_equal(outputs[key], value, err_msg=key)
    view = ensemble.EnsembleView.of(model)
    assert view.member_names == ["a", "b"] and view.task == "classification"
    again = ensemble.add_conformal(model, x[:CALIBRATION], y[:CALIBRATION], alpha=0.2, method="auto")
    assert conformal_config(again)["alpha"] == 0.2 and sorted(again.output) == sorted(outputs)
    assert sum("conformal" in layer.name for layer in again.layers) == 1


@pytest.mark.slow
def test_exports_carry_the_sets(rows, measured, tmp_path):
    x, _ = rows
    feed = x[CALIBRATION : CALIBRATION + 300].copy()
    feed[7] = np.nan  # a NaN row survives every export as an all-False set
    model = measured["raps-given"][0]  # not randomised: every export gives the same sets
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
    np.testing.assert_array_equal(on_device["prediction_set"], expected["prediction_set"])
    assert ensemble.tflite_report(model, {"none": lite}, feed[:7])["none"]["set_agreement"] == 1.0
    onnx = ensemble.export_onnx(model, tmp_path / "model.onnx")  # checked against TensorFlow
    np.testing.assert_array_equal(
        run_onnx(onnx, {"features": feed})["prediction_set"], expected["prediction_set"]
    )


@pytest.mark.slow
def test_randomized_sets_export_to_a_saved_model_only(rows, measured, tmp_path):
    x, _ = rows
    feed = x[CALIBRATION : CALIBRATION + 2000].copy()
    feed[7] = np.nan
    model, config, _ = measured["raps"]
    path = ensemble.export_saved_model(model, tmp_path / "export")
    assert ensemble.read_manifest(path)["conformal"] == config
    signature = tf.saved_model.load(path).signatures["serving_default"]
    first, second = (signature(features=tf.constant(feed)) for _ in range(2))
    small, large, _ = _bounds(config, np.nan_to_num(first["prediction"].numpy()))
    for served in (first["prediction_set"].numpy(), second["prediction_set"].numpy()):
        assert (
            not served[7].any() and (served >= small)[np.arange(2000) != 7].all() and (served <= large).all()
        )
    assert (first["prediction_set"].numpy() != second["prediction_set"].numpy()).any()
    with pytest.raises(ensemble.EnsembleError, match="StatelessRandom"):  # no builtin random op
        ensemble.export_tflite(path, tmp_path / "model.tflite")
    with pytest.raises(ensemble.EnsembleError, match="conformal"):  # its seed state
        ensemble.export_onnx(model, tmp_path / "model.onnx")


@pytest.mark.parametrize("name", ["thr", "raps", "auto"])
def test_keras_file_round_trip(rows, measured, tmp_path, name):
    x, _ = rows
    model, config, _ = measured[name]
    model.save(tmp_path / "conformal.keras")
    loaded = keras.saving.load_model(tmp_path / "conformal.keras")
    assert conformal_config(loaded) == config
    outputs = loaded.predict(x[:2000], batch_size=2048, verbose=0)
    if config["randomized"]:
        small, large, _ = _bounds(config, outputs["prediction"])
        assert (outputs["prediction_set"] >= small).all() and (outputs["prediction_set"] <= large).all()
    else:
        np.testing.assert_array_equal(
            outputs["prediction_set"], model.predict(x[:2000], verbose=0)["prediction_set"]
        )


@pytest.mark.parametrize("name", list(RULES))
def test_a_nan_row_gets_no_confident_set(rows, measured, name):
    x, y = rows
    model = measured[name][0]
    feed = x[:6].copy()
    feed[2, 3], feed[4, 0] = np.nan, np.inf
    sets = model.predict(feed, batch_size=2048, verbose=0)["prediction_set"]
    assert not sets[2].any() and not sets[4].any(), name
    if not measured[name][1]["randomized"]:
        finite = [0, 1, 3, 5]
        np.testing.assert_array_equal(sets[finite], model.predict(feed[finite], verbose=0)["prediction_set"])
    assert conformal_metrics({"prediction_set": sets[2:3]}, y[2:3])["coverage"] == 0.0


def test_the_layer_checks_its_config():
    for options, match in [
        ({"method": "thr", "randomized": True}, "randomized=False"),
        ({"method": "aps", "lambda_reg": 0.1}, "RAPS's"),
        ({"method": "raps", "k_reg": -2}, "k_reg"),
        ({"method": "raps", "threshold": float("nan")}, "finite threshold"),
    ]:
        with pytest.raises(ValueError, match=match):
            ConformalSet(**{"threshold": 0.5, "alpha": 0.1, "calibration_rows": 10, **options})
