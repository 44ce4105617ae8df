"""Post-hoc calibration (issue 15, item 1): temperature and vector scaling fitted exactly,
the graph's `Calibration` layer, `ensemble.fit(calibration=...)` and the weighted uncertainty
outputs, each checked against an independent SciPy/scikit-learn/NumPy reference."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import optimize, special
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split

import combiners
import ensemble
from combiners import Calibration
from ensemble.fitting.selection import optimal_weights
from ensemble.fitting.temperature import Scaling, calibrated, fit_scaling, fit_weights_and_temperature

CLASSES = list(range(10))


def _scaled(p: np.ndarray, scale, bias=0.0) -> np.ndarray:
    """softmax(log(clip(p, 1e-7, 1)) * scale + bias), in float64."""
    return special.softmax(np.log(np.clip(np.asarray(p, "float64"), 1e-7, 1.0)) * scale + bias, axis=1)


def _nll(y, p) -> float:
    return float(log_loss(y, p, labels=CLASSES))


def _prior_nll(y, q, prior_rows: float = 1.0) -> float:
    """scikit-learn's log_loss of the rows with `prior_rows` pseudo-rows labelled evenly over the
    classes, shared by the rows: (n NLL + prior_rows * mean cross-entropy to uniform) / (n + prior_rows)."""
    n = len(y)
    uniform = float(np.mean(-np.log(np.clip(q, 1e-300, 1.0)).mean(axis=1)))
    return (n * _nll(y, q) + prior_rows * uniform) / (n + prior_rows)


def _reference_temperature(p: np.ndarray, y: np.ndarray, prior_rows: float = 1.0) -> float:
    """A bounded 1-D search over T of scikit-learn's log_loss, with the calibration prior's
    pseudo-row (`prior_rows=0`: the plain maximum likelihood)."""
    result = optimize.minimize_scalar(
        lambda t: _prior_nll(y, _scaled(p, 1.0 / t), prior_rows),
        bounds=(0.02, 50.0),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return float(result.x)


def _dense_member(coef: np.ndarray, intercept: np.ndarray, name: str, activation: str | None) -> keras.Model:
    inputs = keras.Input((coef.shape[1],))
    dense = keras.layers.Dense(coef.shape[0], activation=activation)
    model = keras.Model(inputs, dense(inputs), name=name)
    dense.set_weights([coef.T.astype("float32"), intercept.astype("float32")])
    return model


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    x_train, x_hold, y_train, y_hold = train_test_split(
        x_rest, y_rest, test_size=0.4, random_state=0, stratify=y_rest
    )
    return x_train, y_train, x_hold, y_hold, x_test, y_test


@pytest.fixture(scope="module")
def members(digits):
    """Keras members computing logistic regressions exactly: a good, a weak (underconfident)
    and an overconfident one (the good one's logits times 6)."""
    x_train, y_train, *_ = digits
    good = LogisticRegression(C=1.0, max_iter=3000).fit(x_train, y_train)
    weak = LogisticRegression(C=0.002, max_iter=3000).fit(x_train, y_train)
    return {
        "good": _dense_member(good.coef_, good.intercept_, "good", "softmax"),
        "weak": _dense_member(weak.coef_, weak.intercept_, "weak", "softmax"),
        "overconfident": _dense_member(6 * good.coef_, 6 * good.intercept_, "overconfident", "softmax"),
    }


def _build(members, combiner=None, **kw) -> keras.Model:
    loaded = [ensemble.load_member(m, name=n) for n, m in members.items()]
    return ensemble.build_ensemble(loaded, combiner or combiners.MeanCombiner(), **kw)


@pytest.fixture(scope="module")
def probabilities(digits, members):
    """Each Keras member's own probabilities, float64: {"hold"|"test": (rows, members, classes)}
    with the members in the fixture's order."""
    _, _, x_hold, _, x_test, _ = digits
    return {
        part: np.stack([m.predict(x, verbose=0) for m in members.values()], axis=1).astype("float64")
        for part, x in (("hold", x_hold), ("test", x_test))
    }


@pytest.fixture(scope="module")
def held_out(digits, probabilities):
    return probabilities["hold"][:, 0], digits[3]  # the good member's probabilities, labels


@pytest.mark.parametrize("prior_rows", [1.0, 0.0], ids=["prior", "maximum-likelihood"])
@pytest.mark.parametrize("power, above_one", [(3.0, True), (0.3, False)])
def test_temperature_equals_a_bounded_search_and_corrects_confidence(held_out, power, above_one, prior_rows):
    p, y = held_out
    distorted = _scaled(p, power)  # sharpened (overconfident) or softened (underconfident)
    scaling = fit_scaling(distorted, y, method="temperature", prior_rows=prior_rows)
    assert scaling.method == "temperature" and scaling.scale is None
    reference = _reference_temperature(distorted, y, prior_rows)
    assert scaling.temperature == pytest.approx(reference, rel=1e-5)
    assert (scaling.temperature > 1.0) is above_one
    after = _nll(y, calibrated(distorted, scaling))
    assert after <= _nll(y, distorted) + 1e-12
    # At the optimum of the prior's objective the NLL alone still moves to first order in T.
    close = 1e-8 if prior_rows else 1e-10
    assert after == pytest.approx(_nll(y, _scaled(distorted, 1.0 / reference)), abs=close)


def test_vector_scaling_reaches_an_independent_optimum_and_beats_temperature(held_out):
    p, y = held_out
    distorted = _scaled(p, 2.0, np.linspace(-1.0, 1.0, 10))  # miscalibrated per class
    vector = fit_scaling(distorted, y, method="vector")
    assert vector.method == "vector" and len(vector.scale) == len(vector.bias) == 10
    assert vector.as_dict()["scale"] == list(vector.scale) and vector.as_dict()["bias"] == list(vector.bias)

    start = np.r_[np.ones(10), np.zeros(10)]

    def nll(params, prior_rows=0.0):  # the mean NLL in NumPy (log_loss is too slow for BFGS' many calls)
        z = np.log(np.clip(distorted, 1e-7, 1.0)) * params[:10] + params[10:]
        log_q = z - special.logsumexp(z, axis=1, keepdims=True)
        n = len(y)
        return float(n * np.mean(-log_q[np.arange(n), y]) + prior_rows * np.mean(-log_q)) / (n + prior_rows)

    def objective(params):  # with the standard-normal prior around the identity, and the pseudo-row
        return nll(params, 1.0) + 0.5 * float(np.sum((params - start) ** 2)) / len(y)

    reference = optimize.minimize(objective, start, method="BFGS", options={"gtol": 1e-10})
    assert nll(reference.x) == pytest.approx(_nll(y, _scaled(distorted, reference.x[:10], reference.x[10:])))
    fitted = _nll(y, calibrated(distorted, vector))
    params = np.r_[vector.scale, vector.bias]
    assert objective(params) == pytest.approx(reference.fun, abs=1e-7)
    assert fitted == pytest.approx(nll(reference.x), abs=1e-6)
    temperature = _nll(y, calibrated(distorted, fit_scaling(distorted, y, method="temperature")))
    assert fitted <= temperature + 1e-3  # its prior costs it a little on the fitting rows
    with pytest.raises(ValueError, match="method"):
        fit_scaling(distorted, y, method="matrix")


# Vector scaling on one overconfident member and on all three (whose mean separates a class by
# its own log-probability: the prior keeps its scale finite).
@pytest.mark.parametrize(
    "method, names", [("temperature", None), ("vector", ["overconfident"]), ("vector", None)]
)
@pytest.mark.slow
def test_layer_in_the_graph_equals_numpy_in_predict_and_saved_model(
    tmp_path, digits, members, probabilities, method, names
):
    _, _, x_hold, y_hold, x_test, _ = digits
    names = names or list(members)
    model = _build({n: members[n] for n in names})
    chosen = [list(members).index(n) for n in names]
    view = ensemble.EnsembleView.of(model)
    assert view.calibration is not None and view.calibration.name == "calibration"
    assert view.calibration.is_identity
    report = ensemble.fit(model, x_hold, y_hold, calibration=method)
    record = report.calibration
    assert record["method"] == method and report.as_dict()["calibration"] == record
    scaling = Scaling(
        method,
        temperature=record["temperature"],
        scale=None if method == "temperature" else tuple(record["scale"]),
        bias=None if method == "temperature" else tuple(record["bias"]),
    )
    hold = probabilities["hold"][:, chosen].mean(1)
    assert _nll(y_hold, calibrated(hold, scaling)) < _nll(y_hold, hold / hold.sum(1, keepdims=True))
    want = calibrated(probabilities["test"][:, chosen].mean(1), scaling)
    np.testing.assert_allclose(model.predict(x_test, verbose=0)["prediction"], want, atol=1e-5)
    path = ensemble.export_saved_model(model, tmp_path / "calibrated")
    served = tf.saved_model.load(path).signatures["serving_default"](features=tf.constant(x_test))
    np.testing.assert_allclose(served["prediction"].numpy(), want, atol=1e-5)


def test_layer_config_round_trip_and_identity():
    p = special.softmax(np.random.default_rng(0).normal(size=(6, 4)) * 3, axis=1).astype("float32")
    for layer, scaling in [
        (Calibration(temperature=2.5, name="t"), Scaling("temperature", temperature=2.5)),
        (
            Calibration(scale=[1.0, 2.0, 0.5, 1.5], bias=[0.0, -1.0, 0.3, 0.2], name="v"),
            Scaling("vector", scale=(1.0, 2.0, 0.5, 1.5), bias=(0.0, -1.0, 0.3, 0.2)),
        ),
    ]:
        copy = Calibration.from_config(layer.get_config())
        assert copy.get_config() == layer.get_config() and not copy.is_identity
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        for each in (layer, copy, restored):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(each(p)), calibrated(p, scaling), atol=1e-6)
    identity = Calibration()
    assert identity.is_identity
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(identity(p)), p)


def test_fit_with_temperature_then_a_plain_fit_resets_to_the_identity(digits, members, probabilities):
    _, _, x_hold, y_hold, x_test, _ = digits
    model = _build(members)
    before = model.predict(x_test, verbose=0)["prediction"]
    report = ensemble.fit(model, x_hold, y_hold, calibration="temperature")
    reference = _reference_temperature(probabilities["hold"].mean(1), y_hold)
    assert report.calibration["temperature"] == pytest.approx(reference, rel=1e-4)
    assert report.as_dict()["calibration"]["temperature"] == report.calibration["temperature"]
    assert ensemble.EnsembleView.of(model).calibration.temperature == report.calibration["temperature"]
    want = _scaled(probabilities["test"].mean(1), 1.0 / report.calibration["temperature"])
    np.testing.assert_allclose(model.predict(x_test, verbose=0)["prediction"], want, atol=1e-5)
    assert np.abs(want - before).max() > 1e-3  # the temperature changed the prediction

    again = ensemble.fit(model, x_hold, y_hold)
    assert again.calibration is None and "calibration" not in again.as_dict()
    assert ensemble.EnsembleView.of(model).calibration.is_identity
    np.testing.assert_array_equal(model.predict(x_test, verbose=0)["prediction"], before)


@pytest.mark.slow
def test_joint_weights_and_temperature_never_lose_to_sequential(digits, members, probabilities):
    _, _, x_hold, y_hold, x_test, _ = digits
    model = _build(members)
    report = ensemble.fit(model, x_hold, y_hold, method="optimal", calibration="temperature")
    weights = np.asarray(ensemble.EnsembleView.of(model).combiner.member_weights)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0, abs=1e-9)
    assert list(report.member_weights.values()) == pytest.approx(list(weights))
    temperature = report.calibration["temperature"]
    level_one = report.level_one.astype("float64")
    joint = _nll(y_hold, _scaled(np.einsum("rmc,m->rc", level_one, weights), 1.0 / temperature))
    sequential_weights = optimal_weights(level_one, y_hold)
    mixture = np.einsum("rmc,m->rc", level_one, sequential_weights)
    sequential = _nll(y_hold, _scaled(mixture, 1.0 / _reference_temperature(mixture, y_hold)))
    assert joint <= sequential + 1e-9
    # The function itself, started uniform, reaches the same NLL or better.
    w, scaling = fit_weights_and_temperature(level_one, y_hold)
    assert (
        _nll(y_hold, _scaled(np.einsum("rmc,m->rc", level_one, w), 1.0 / scaling.temperature))
        <= sequential + 1e-9
    )
    want = _scaled(np.einsum("rmc,m->rc", probabilities["test"], weights), 1.0 / temperature)
    np.testing.assert_allclose(model.predict(x_test, verbose=0)["prediction"], want, atol=1e-5)


def test_calibration_errors(digits, members):
    _, _, x_hold, y_hold, *_ = digits
    model = _build(members)
    with pytest.raises(ensemble.EnsembleError, match="Expected calibration in"):
        ensemble.fit(model, x_hold, y_hold, calibration="platt")
    hard = _build(members, combiners.VoteCombiner(voting="hard"))
    with pytest.raises(ensemble.EnsembleError, match="votes hard"):
        ensemble.fit(hard, x_hold, y_hold, calibration="temperature")
    rng = np.random.default_rng(0)
    regressors = {
        name: _dense_member(rng.normal(size=(1, 64)), np.zeros(1), name, None) for name in ("r1", "r2")
    }
    regression = _build(regressors, task="regression")
    assert ensemble.EnsembleView.of(regression).calibration is None
    with pytest.raises(ensemble.EnsembleError, match="regression ensemble"):
        ensemble.fit(regression, x_hold, y_hold.astype("float32"), calibration="temperature")
    for temperature in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="positive, finite temperature"):
            Calibration(temperature=temperature)
    with pytest.raises(ValueError, match="scale and bias together"):
        Calibration(scale=[1.0, 2.0])
    with pytest.raises(ValueError, match="scale and bias together"):
        Calibration(scale=[1.0, 2.0], bias=[0.0])
    with pytest.raises(ValueError, match="finite numbers"):
        Calibration(scale=[1.0, math.nan], bias=[0.0, 0.0])
    with pytest.raises(ValueError, match="not both"):
        Calibration(temperature=2.0, scale=[1.0, 2.0], bias=[0.0, 0.0])
    layer = ensemble.EnsembleView.of(model).calibration
    with pytest.raises(ValueError, match="Expected 10 scales"):
        layer.set_scaling(scale=[1.0] * 3, bias=[0.0] * 3)
    assert layer.is_identity


def test_uncertainty_outputs_weigh_members_as_the_fitted_combiner(digits, members):
    _, _, x_hold, y_hold, x_test, _ = digits
    model = _build(members)
    ensemble.fit(model, x_hold, y_hold, method="optimal")
    weights = np.asarray(ensemble.EnsembleView.of(model).combiner.member_weights, "float64")
    assert weights.max() - weights.min() > 0.05  # far from uniform: the test can tell them apart
    out = model.predict(x_test, verbose=0)
    p = out["member_predictions"].astype("float64")
    mixture = np.einsum("rmc,m->rc", p, weights)
    np.testing.assert_allclose(out["prediction"], mixture, atol=1e-6)
    information = special.entr(mixture).sum(1) - special.entr(p).sum(2) @ weights
    np.testing.assert_allclose(out["mutual_information"], np.maximum(information, 0.0), atol=1e-5)
    unweighted = special.entr(p.mean(1)).sum(1) - special.entr(p).sum(2).mean(1)
    assert np.abs(unweighted - information).max() > 1e-2
    differs = p.argmax(2) != out["prediction"].argmax(1)[:, None]
    assert differs.any()
    np.testing.assert_allclose(out["disagreement"], differs.astype("float64") @ weights, atol=1e-6)


def test_rows_all_ranked_right_cannot_make_the_temperature_certain(held_out):
    p, y = held_out
    right = np.flatnonzero(p.argmax(1) == y)[:30]  # 30 rows, every one ranked right (issue 27)
    assert len(right) == 30
    p, y = p[right], y[right]
    sure = fit_scaling(p, y, prior_rows=0.0).temperature  # the likelihood alone: towards T = 0
    bounded = fit_scaling(p, y)
    assert bounded.temperature == pytest.approx(_reference_temperature(p, y), rel=1e-5)
    assert bounded.temperature > 10 * sure
    # No surer on the fitting rows than 30 right answers in 30 warrant (Laplace: 1 - 1/32).
    confidence = calibrated(p, bounded).max(axis=1).mean()
    assert confidence < 1 - 1 / 32 < calibrated(p, Scaling("temperature", sure)).max(axis=1).mean()
    for method in ("temperature", "vector"):  # the pseudo-row is a distribution over the classes
        with pytest.raises(ValueError, match="prior_rows"):
            fit_scaling(p, y, method=method, prior_rows=-1.0)


def test_vector_scaling_stays_bounded_when_a_class_is_separable(held_out):
    p, y = held_out  # the good member: the fitting rows of some class are separable
    vector = fit_scaling(p, y, method="vector")
    assert max(abs(v) for v in vector.scale) < 50 and max(abs(b) for b in vector.bias) < 50


@pytest.mark.slow
def test_a_member_calibrated_alone_loads_exports_and_keeps_its_record(tmp_path, digits, members):
    x_train, y_train, x_hold, y_hold, x_test, _ = digits
    keras.saving.save_model(members["overconfident"], tmp_path / "over.keras")
    ensemble.record_training_rows(tmp_path / "over.keras", x_train)
    source = ensemble.load_member(tmp_path / "over.keras", name="over", output="probabilities")
    assert source.training_rows is not None
    member = ensemble.calibrate_member(source, x_hold, y_hold)
    raw_hold, raw_test = (np.asarray(source({"features": v})) for v in (x_hold, x_test))
    expected = _scaled(raw_test, 1.0 / _reference_temperature(raw_hold, y_hold))
    assert member.name == "over" and member.input_names == source.input_names
    np.testing.assert_array_equal(member.training_rows, source.training_rows)
    model = ensemble.build_ensemble(
        [member, ensemble.load_member(members["good"], name="good")], combiners.MeanCombiner()
    )
    out = model.predict(x_test, verbose=0)
    np.testing.assert_allclose(out["member_predictions"][:, 0], expected, atol=1e-4)
    path = str(tmp_path / "export")
    ensemble.export_saved_model(model, path)
    serving = tf.saved_model.load(path).signatures["serving_default"]
    served = serving(features=tf.constant(x_test))["member_predictions"].numpy()
    np.testing.assert_allclose(served, out["member_predictions"], atol=1e-6)
    # Its own training rows are refused, as for any fit.
    with pytest.raises(ensemble.EnsembleError, match="over"):
        ensemble.calibrate_member(source, x_train, y_train)
    with pytest.raises(ensemble.EnsembleError, match="temperature"):
        ensemble.calibrate_member(source, x_hold, y_hold, method="isotonic")
