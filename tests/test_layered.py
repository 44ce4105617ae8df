"""Multi-layer stacking (`combiners.LayeredCombiner`, `ensemble.fitting.fit_layered`): the
levels fitted on the members' predictions, the final combiner on the levels' out-of-fold
predictions, checked against the same recipe written with scikit-learn's LogisticRegression."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.linear_model import LogisticRegression

import ensemble
from combiners import MeanCombiner, StackingCombiner
from combiners.layered import LayeredCombiner
from ensemble.errors import EnsembleError
from ensemble.fitting.out_of_fold import fold_splits
from ensemble.train.members import trained_member

STACK = {"method": "sklearn", "C": 0.05}
combiner_of = ensemble.ensemble_combiner


@pytest.fixture(scope="module")
def setup(digits: tuple[np.ndarray, np.ndarray]) -> dict[str, object]:
    x, y = digits
    order = np.random.default_rng(0).permutation(len(x))
    train, fit_rows, test = order[:600], order[600:1100], order[1100:1400]
    members = []
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(4 + 4 * seed, activation="relu"),
                keras.layers.Dense(10, "softmax"),
            ]
        )
        model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
        model.fit(x[train], y[train], epochs=4, batch_size=64, verbose=0)
        members.append(trained_member(model, f"m{seed}", x[train], "classification"))
    return {
        "members": members,
        "train": (x[train], y[train]),
        "fit": (x[fit_rows], y[fit_rows]),
        "test": x[test],
    }


def _log(p: np.ndarray) -> np.ndarray:
    """The stacker's meta features, computed in float32 as the graph does."""
    return np.log(np.clip(p, 1e-7, 1)).astype("float32").astype("float64").reshape(len(p), -1)


def _logistic(features: np.ndarray, y: np.ndarray) -> LogisticRegression:
    """scikit-learn's multinomial LogisticRegression at its optimum, to tol=1e-12: Newton-CG gets
    there in a few dozen Newton steps where L-BFGS takes thousands (the same objective)."""
    return LogisticRegression(C=STACK["C"], tol=1e-12, max_iter=100_000, solver="newton-cg").fit(features, y)


@pytest.fixture(scope="module")
def reference_levels(setup) -> dict[str, np.ndarray]:
    """The levels in scikit-learn, fitted once for both `passthrough` cases (they share them):
    the members' predictions, the levels' out-of-fold predictions on the fitting rows (stacker
    by fold, mean) and the levels on the test rows (stacker fitted on every fitting row)."""
    members = lambda x: np.stack([m.predict(x, verbose=0) for m in setup["members"]], axis=1)  # noqa: E731
    x_fit, y_fit = setup["fit"]
    level_one, test_one = members(x_fit), members(setup["test"])
    out_of_fold = np.empty((len(x_fit), 2, 10))
    for train, held_out in fold_splits(x_fit, y_fit, cv=3, task="classification", seed=0):
        out_of_fold[held_out, 0] = _logistic(_log(level_one[train]), y_fit[train]).predict_proba(
            _log(level_one[held_out])
        )
    out_of_fold[:, 1] = level_one.mean(1)
    test_levels = np.stack(
        [_logistic(_log(level_one), y_fit).predict_proba(_log(test_one)), test_one.mean(1)], 1
    )
    return {
        "level_one": level_one,
        "out_of_fold": out_of_fold,
        "test_one": test_one,
        "test_levels": test_levels,
    }


@pytest.mark.slow  # five scikit-learn fits at tol=1e-12 (the levels shared): about 15 s
@pytest.mark.parametrize("passthrough", [False, True])
def test_layers_match_the_recipe_in_scikit_learn(setup, reference_levels, passthrough: bool) -> None:
    combiner = LayeredCombiner(
        [StackingCombiner(name="stack"), MeanCombiner(name="mean")], passthrough=passthrough
    )
    model = ensemble.build_ensemble(setup["members"], combiner)
    x_fit, y_fit = setup["fit"]
    report = ensemble.fit(model, x_fit, y_fit, cv=3, level_options=[STACK, {}], final_options=STACK)
    assert report.method == "layered" and report.regime == "holdout"

    level_one, out_of_fold, test_one, test_levels = (
        reference_levels[k] for k in ("level_one", "out_of_fold", "test_one", "test_levels")
    )
    np.testing.assert_allclose(report.fitted["out_of_fold"], out_of_fold, atol=2e-3)
    final_in = np.concatenate([out_of_fold, level_one], axis=1) if passthrough else out_of_fold
    final = _logistic(_log(final_in), y_fit)
    test_in = np.concatenate([test_levels, test_one], axis=1) if passthrough else test_levels
    outputs = model.predict(setup["test"], verbose=0)
    np.testing.assert_allclose(outputs["prediction"], final.predict_proba(_log(test_in)), atol=2e-3)
    np.testing.assert_allclose(outputs["member_predictions"], test_one, atol=1e-6)


@pytest.mark.slow
def test_one_graph_that_saves_and_exports(setup, tmp_path) -> None:
    combiner = LayeredCombiner([StackingCombiner(name="stack"), MeanCombiner(name="mean")], passthrough=True)
    model = ensemble.build_ensemble(setup["members"], combiner)
    ensemble.fit(
        model, *setup["fit"], cv=3, level_options=[STACK, {}], final_options=STACK, calibration="temperature"
    )
    x_test = setup["test"]
    expected = model.predict(x_test, verbose=0)
    model.save(tmp_path / "layered.keras")
    again = keras.saving.load_model(tmp_path / "layered.keras").predict(x_test, verbose=0)
    np.testing.assert_allclose(again["prediction"], expected["prediction"], atol=1e-6)
    ensemble.export_saved_model(model, tmp_path / "export")
    served = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"](tf.constant(x_test))
    np.testing.assert_allclose(served["prediction"].numpy(), expected["prediction"], atol=1e-5)
    rows = x_test[:3].copy()
    rows[1, 5] = np.nan
    nan_row = model.predict(rows, verbose=0)["prediction"]
    assert np.isnan(nan_row[1]).all() and np.isfinite(nan_row[[0, 2]]).all()


def test_the_same_guard_and_clear_errors(setup) -> None:
    combiner = LayeredCombiner([MeanCombiner(name="mean"), StackingCombiner(name="stack")])
    model = ensemble.build_ensemble(setup["members"], combiner)
    with pytest.raises(EnsembleError, match="trained member"):  # the members' own rows
        ensemble.fit(model, *setup["train"], cv=3)
    with pytest.raises(EnsembleError, match="one mapping of fit options per level"):
        ensemble.fit(model, *setup["fit"], level_options=[{}])
    with pytest.raises(EnsembleError, match="calibration"):
        ensemble.fit(model, *setup["fit"], level_options=[{}, {"calibration": "temperature"}])
    with pytest.raises(EnsembleError, match="method='layered'"):
        ensemble.fit(model, *setup["fit"], method="sklearn")
    before = [w.copy() for w in combiner_of(model).get_weights()]
    with pytest.raises(EnsembleError, match="positive, finite"):  # the final fit, after the levels'
        ensemble.fit(model, *setup["fit"], cv=3, level_options=[{}, STACK], final_options={"C": -1.0})
    for old, new in zip(before, combiner_of(model).get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)  # nothing half-fitted
    plain = ensemble.build_ensemble(setup["members"], MeanCombiner())
    with pytest.raises(EnsembleError, match="method='layered'"):
        ensemble.fit(plain, *setup["fit"], method="layered")
    with pytest.raises(ValueError, match="non-empty list of combiners"):
        LayeredCombiner([])
    with pytest.raises(ValueError, match="distinct names"):
        LayeredCombiner([MeanCombiner(name="a"), MeanCombiner(name="a")])


@pytest.mark.slow
def test_regression_layers_match_ridge_on_the_mean_residual() -> None:
    from sklearn.linear_model import Ridge

    from tests.conftest import dense_classifier

    rng = np.random.default_rng(3)
    x = rng.normal(size=(240, 8)).astype("float32")
    members = [
        ensemble.load_member(dense_classifier(s, classes=2, final=None), name=f"r{s}") for s in range(3)
    ]
    level_one = np.stack([m.predict(x, verbose=0) for m in members], axis=1).astype("float64")
    y = (level_one.mean(1) + rng.normal(scale=0.3, size=(240, 2)) + x[:, :2]).astype("float32")
    model = ensemble.build_ensemble(
        members, LayeredCombiner([StackingCombiner(), MeanCombiner()]), task="regression"
    )
    ridge = {"method": "sklearn", "alpha": 2.0}
    report = ensemble.fit(model, x, y, cv=4, level_options=[ridge, {}], final_options=ridge)

    def stacked(train: np.ndarray, predict: np.ndarray, features: np.ndarray) -> np.ndarray:
        fitted = Ridge(alpha=2.0).fit(
            features[train].reshape(len(train), -1), y[train] - features[train].mean(1)
        )
        return features[predict].mean(1) + fitted.predict(features[predict].reshape(len(predict), -1))

    out_of_fold = np.empty((240, 2, 2))
    for train, held_out in fold_splits(x, y, cv=4, task="regression", seed=0):
        out_of_fold[held_out, 0] = stacked(train, held_out, level_one)
    out_of_fold[:, 1] = level_one.mean(1)
    np.testing.assert_allclose(report.fitted["out_of_fold"], out_of_fold, atol=1e-4)
    every = np.arange(240)
    levels = np.stack([stacked(every, every, level_one), level_one.mean(1)], axis=1)
    final = Ridge(alpha=2.0).fit(out_of_fold.reshape(240, -1), y - out_of_fold.mean(1))
    expected = levels.mean(1) + final.predict(levels.reshape(240, -1))
    np.testing.assert_allclose(model.predict(x, verbose=0)["prediction"], expected, atol=1e-4)


@pytest.mark.slow  # two layered fits with cross-validated levels
def test_fitting_twice_equals_one_fit_on_a_fresh_model(setup) -> None:
    """Each level's and the final combiner's fit start from the state the model was built with,
    not from the previous fit's: a Keras-trained level shows it (it trains from its weights)."""
    keras_fit = {"method": "keras", "epochs": 3, "seed": 0}

    def fitted(times: int) -> np.ndarray:
        combiner = LayeredCombiner([StackingCombiner(name="stack"), MeanCombiner(name="mean")])
        keras.utils.set_random_seed(7)  # the same first state for both models
        model = ensemble.build_ensemble(setup["members"], combiner)
        for _ in range(times):
            ensemble.fit(model, *setup["fit"], cv=2, level_options=[keras_fit, {}], final_options=keras_fit)
        return model.predict(setup["test"], verbose=0)["prediction"]

    np.testing.assert_allclose(fitted(2), fitted(1), atol=1e-6)
