"""Edge cases of the stacker and calibration fits found in review: each is an error naming the
problem before anything changes, or an optimum an independent solver confirms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, special

import combiners
import ensemble
from ensemble.fitting.temperature import fit_weights_and_temperature
from tests.conftest import dense_classifier


def _joint_nll(P: np.ndarray, y: np.ndarray, w: np.ndarray, s: float) -> float:
    mixture = np.einsum("rmc,m->rc", P, w)
    z = s * np.log(np.maximum(mixture, 1e-7 * w.sum()))
    return float(np.mean(special.logsumexp(z, axis=1) - z[np.arange(len(y)), y]))


def test_joint_weights_and_temperature_reach_the_optimum_where_the_clip_binds():
    # Confident members: about half the mixture's entries sit under the graph's clip (1e-7).
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=300)
    logits = rng.normal(size=(300, 3, 10)) * 6
    logits[np.arange(300), :, y] += np.array([9.0, 6.0, 3.0])
    P = special.softmax(logits, axis=-1)
    w, scaling = fit_weights_and_temperature(P, y)
    ours = _joint_nll(P, y, w, 1.0 / scaling.temperature)

    def objective(params: np.ndarray) -> float:  # weights through a softmax, scale through exp
        return _joint_nll(P, y, special.softmax(params[:3]), float(np.exp(params[3])))

    reference = optimize.minimize(
        objective,
        np.zeros(4),
        method="Nelder-Mead",
        options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000},
    )
    assert ours <= reference.fun + 1e-6


@pytest.fixture()
def small():
    model = ensemble.build_ensemble(
        [dense_classifier(i, name=f"m{i}") for i in range(2)], combiners.StackingCombiner()
    )
    rng = np.random.default_rng(0)
    return model, rng.normal(size=(60, 8)).astype("float32"), rng.integers(0, 3, size=60)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_non_positive_or_non_finite_C_is_refused(small, bad):
    model, x, y = small
    with pytest.raises(ensemble.EnsembleError, match="Expected C to be a positive"):
        ensemble.fit_stacking(model, x, y, C=bad)


def test_a_class_with_fewer_rows_than_folds_falls_back_and_says_so(small, caplog):
    model, x, y = small
    y = y.copy()
    y[y == 2] = 1
    y[:3] = 2  # 3 rows of class 2 for 5 folds: no stratified fold, no regression (issue 27)
    with caplog.at_level("WARNING", logger="ensemble.fitting.stacker_choice"):
        stacker = ensemble.fit_stacking(model, x, y)
    assert "3 of class 2" in caplog.text and "only the candidates of at most one parameter" in caplog.text
    one_parameter = ("raw", "mean_raw", "member", "mean", "mean_arith_raw", "mean_arith")
    assert stacker.prior in one_parameter and stacker.C == 0  # no regression among them


def test_a_refused_refit_leaves_the_calibration_as_it_was():
    model = ensemble.build_ensemble(
        [dense_classifier(i, name=f"m{i}") for i in range(2)], combiners.MeanCombiner()
    )
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 8)).astype("float32")
    # Labels the members rank right most of the time (their own top class, a quarter flipped).
    y = model.predict(x, verbose=0)["prediction"].argmax(1)
    y[::4] = (y[::4] + 1) % 3
    ensemble.fit(model, x, y, calibration="temperature")
    layer = ensemble.EnsembleView.of(model).calibration
    before = layer.temperature
    assert before != 1.0
    with pytest.raises(ensemble.EnsembleError, match="labels"):
        ensemble.fit(model, x, np.full(80, 7))
    assert layer.temperature == before


def test_a_calibration_no_temperature_fits_is_an_error_naming_it():
    model = ensemble.build_ensemble(
        [dense_classifier(i, name=f"m{i}") for i in range(2)], combiners.MeanCombiner()
    )
    x = np.random.default_rng(2).normal(size=(80, 8)).astype("float32")
    y = model.predict(x, verbose=0)["prediction"].argmin(1)  # the members' least likely class
    with pytest.raises(ensemble.EnsembleError, match=r"calibration='temperature'.*no positive temperature"):
        ensemble.fit(model, x, y, calibration="temperature")


@pytest.mark.parametrize("combiner", ["mean", "stack"])
@pytest.mark.slow
def test_every_fit_starts_from_the_combiner_as_built_method_none_included(combiner):
    # An earlier fit's weights never carry into the next: after a fit that learned weights (or a
    # stacker), fit(method='none') is the combiner as built, the plain (or geometric) mean,
    # exactly as on a fresh ensemble; and fitting again equals one fit on a fresh ensemble.
    def fresh():
        layer = combiners.MeanCombiner() if combiner == "mean" else combiners.StackingCombiner()
        return ensemble.build_ensemble([dense_classifier(i, name=f"m{i}") for i in range(3)], layer)

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(90, 8)).astype("float32"), np.arange(90) % 3
    model = fresh()
    members = np.asarray(model.predict(x, verbose=0)["member_predictions"], dtype="float64")
    as_built = members.mean(1) if combiner == "mean" else special.softmax(np.log(members).mean(1), axis=-1)
    learned = {"method": "optimal"} if combiner == "mean" else {}
    ensemble.fit(model, x, y, allow_overlap=True, **learned)
    fitted = model.predict(x, verbose=0)["prediction"]
    assert np.abs(fitted - as_built).max() > 1e-3  # the fit changed something
    report = ensemble.fit(model, x, y, method="none", allow_overlap=True)
    np.testing.assert_allclose(model.predict(x, verbose=0)["prediction"], as_built, atol=1e-5)
    assert report.member_weights is None or len(set(report.member_weights.values())) == 1
    ensemble.fit(model, x, y, allow_overlap=True, **learned)
    once = fresh()
    ensemble.fit(once, x, y, allow_overlap=True, **learned)
    np.testing.assert_allclose(
        model.predict(x, verbose=0)["prediction"], once.predict(x, verbose=0)["prediction"], atol=1e-5
    )
