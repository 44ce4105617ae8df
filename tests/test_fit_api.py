"""`ensemble.fit` and `ensemble.fit_out_of_fold`: the fitting step as library API, what it
picks, what it reports, what it refuses; and `build_ensemble` leaving the caller's objects
alone."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split

import combiners
import ensemble
from ensemble.fitting import ensemble_selection
from tests.conftest import CLASSES, FEATURES, dense_classifier


def members(count: int = 3) -> list[ensemble.Member]:
    return [ensemble.load_member(dense_classifier(seed), name=f"m{seed}") for seed in range(count)]


def rows(n: int = 60, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, FEATURES)).astype("float32"), rng.integers(0, CLASSES, size=n)


@pytest.mark.parametrize(
    ("combiner", "method"),
    [
        (lambda: combiners.StackingCombiner(), "sklearn"),
        (
            lambda: combiners.StackingCombiner(meta_model=keras.layers.Dense(CLASSES, activation="softmax")),
            "keras",
        ),
        (lambda: combiners.MeanCombiner(), "none"),
        (lambda: combiners.VoteCombiner(voting="hard"), "none"),
    ],
    ids=["default-stacker", "custom-meta-model", "mean", "vote"],
)
def test_auto_picks_the_fit_the_combiner_needs(combiner, method):
    x, y = rows()
    model = ensemble.build_ensemble(members(), combiner())
    report = ensemble.fit(model, x, y, **({"epochs": 2, "verbose": 0} if method == "keras" else {}))
    assert report.method == method
    assert report.regime == "holdout" and report.rows == len(y) and report.overlaps == {}
    json.dumps(report.as_dict())  # plain values only: what metrics.json records
    recorded = report.as_dict()["fit"]
    if method != "sklearn":
        assert recorded == (None if method == "none" else {"method": method, **report.options})
        return
    # What the default stacker chose is recorded, members by name (issue 27: its C was null).
    stacker = report.fitted
    chosen = recorded.pop("chosen")
    assert recorded == {"method": method, **report.options}
    assert chosen["candidate"] == stacker.prior and chosen["C"] == (stacker.C or None)
    assert chosen["member"] == (None if stacker.member is None else f"m{stacker.member}")
    assert chosen["description"] == stacker.describe([f"m{j}" for j in range(3)])
    assert set(chosen["held_out_nll"]) >= {"raw 0", "raw 1", "raw 2", "mean_raw"}


def test_selection_sets_the_weights_numpy_computes():
    x, y = rows()
    model = ensemble.build_ensemble(members(4), combiners.MeanCombiner())
    report = ensemble.fit(model, x, y, method="selection", rounds=20)
    level_one = report.level_one.astype("float64")
    expected = ensemble_selection(level_one, y, rounds=20)  # the pure-NumPy reference
    np.testing.assert_allclose(list(report.member_weights.values()), expected)
    fitted = ensemble.EnsembleView.of(model).combiner
    np.testing.assert_allclose(fitted.member_weights, expected)
    weighted = np.einsum("rmc,m->rc", level_one, expected / expected.sum())
    np.testing.assert_allclose(model.predict(x, verbose=0)["prediction"], weighted, atol=1e-6)


def test_given_level_one_is_out_of_fold_and_members_do_not_run():
    x, y = rows()
    model = ensemble.build_ensemble(members(), combiners.MeanCombiner())
    given = np.full((len(y), 3, CLASSES), 1.0 / CLASSES, dtype="float32")
    store = ensemble.LevelOneStore()
    report = ensemble.fit(model, x, y, method="optimal", level_one=given, store=store)
    assert report.regime == "given" and store.computed == []
    np.testing.assert_array_equal(report.level_one, given)


def test_the_guard_counts_and_refuses_rows_that_trained_a_member(tmp_path):
    x, y = rows()
    path = tmp_path / "m.keras"
    dense_classifier(7).save(path)
    ensemble.record_training_rows(path, x[:10])
    model = ensemble.build_ensemble(
        [ensemble.load_member(path, name="m"), *members(2)], combiners.StackingCombiner()
    )
    with pytest.raises(ensemble.EnsembleError, match=r"trained member\(s\) \{'m': 10\}"):
        ensemble.fit(model, x, y)
    report = ensemble.fit(model, x, y, allow_overlap=True)
    assert report.overlaps == {"m": 10}
    assert ensemble.fit(model, x[10:], y[10:]).overlaps == {"m": 0}


@pytest.mark.parametrize(
    ("combiner", "kwargs", "match"),
    [
        (combiners.MeanCombiner, {"method": "gradient"}, r"Expected method in \('auto'"),
        (
            combiners.StackingCombiner,
            {"method": "selection"},
            r"method='selection' learns a MeanCombiner's weights",
        ),
        (combiners.MeanCombiner, {"method": "sklearn"}, r"fit_stacking fits the default meta-model"),
        (
            combiners.MeanCombiner,
            {"method": "keras"},
            r"method='keras' trains a combiner's weights; MeanCombiner",
        ),
        (
            combiners.MeanCombiner,
            {"method": "none", "epochs": 5},
            r"method='none' fits nothing. Received options: \['epochs'\]",
        ),
    ],
    ids=[
        "unknown-method",
        "selection-on-a-stacker",
        "sklearn-on-a-mean",
        "keras-on-a-mean",
        "options-for-none",
    ],
)
def test_bad_fit_requests_are_named(combiner, kwargs, match):
    x, y = rows()
    with pytest.raises(ensemble.EnsembleError, match=match):
        ensemble.fit(ensemble.build_ensemble(members(), combiner()), x, y, **kwargs)


def test_fit_out_of_fold_matches_sklearns_cross_val_predict():
    x, y = load_breast_cancer(return_X_y=True)
    # Standardised: lbfgs converges in tens of iterations instead of thousands (raw features
    # span 1e-3 to 1e3); the folds and the equality with cross_val_predict are what is checked.
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")[:200]
    y = y[:200]
    regularisations = {"m0": 0.1, "m1": 1.0}

    def builder(c):
        def fit_predict(x_train, y_train, x_predict):
            return LogisticRegression(C=c, max_iter=5000).fit(x_train, y_train).predict_proba(x_predict)

        return fit_predict

    # The final members, stand-ins trained on every row (their predictions are not used here).
    final = [
        ensemble.load_member(dense_classifier(i, features=30, classes=2), name=n)
        for i, n in enumerate(regularisations)
    ]
    model = ensemble.build_ensemble(final, combiners.MeanCombiner())
    report = ensemble.fit_out_of_fold(
        model, x, y, {n: builder(c) for n, c in regularisations.items()}, cv=4, seed=3, method="optimal"
    )
    folds = StratifiedKFold(n_splits=4, shuffle=True, random_state=3)
    for i, c in enumerate(regularisations.values()):
        expected = cross_val_predict(
            LogisticRegression(C=c, max_iter=5000), x, y, cv=folds, method="predict_proba"
        )
        np.testing.assert_allclose(report.level_one[:, i], expected, atol=1e-6)
    assert report.regime == "oof" and report.folds.shape == (200,) and set(report.folds) == {0, 1, 2, 3}
    assert set(report.member_weights) == set(regularisations)


def test_fit_out_of_fold_wants_one_builder_per_member():
    x, y = rows()
    model = ensemble.build_ensemble(members(2), combiners.MeanCombiner())
    with pytest.raises(ensemble.EnsembleError, match=r"Missing: \['m1'\]; not members: \['other'\]"):
        ensemble.fit_out_of_fold(model, x, y, {"m0": lambda *a: None, "other": lambda *a: None})


def test_build_ensemble_leaves_the_callers_combiner_and_members_alone():
    combiner = combiners.MeanCombiner()
    classification = ensemble.build_ensemble(members(), combiner)
    assert combiner.task is None and not combiner.built
    x, y = rows()
    ensemble.fit(classification, x, y, method="optimal")
    assert combiner.member_weights is None  # the ensemble's own copy holds the weights
    assert ensemble.EnsembleView.of(classification).combiner.member_weights is not None
    # The same combiner object then serves a regression ensemble.
    x_reg, _ = train_test_split(
        np.random.default_rng(0).normal(size=(40, 4)).astype("float32"), random_state=0
    )
    regressor = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    member = ensemble.load_member(regressor, name="bounded")  # a sigmoid: inferred as a classifier
    assert member.output_kind == "probabilities" and member.output_inferred
    regression = ensemble.build_ensemble([member], combiner, task="regression")
    assert ensemble.EnsembleView.of(regression).task == "regression"
    assert member.output_kind == "probabilities"  # the caller's member is unchanged
    np.testing.assert_allclose(
        regression.predict(x_reg, verbose=0)["prediction"], regressor.predict(x_reg, verbose=0), atol=1e-6
    )


def test_a_combiner_configured_for_another_task_is_refused():
    with pytest.raises(ensemble.EnsembleError, match=r"configured for a regression task"):
        ensemble.build_ensemble(members(), combiners.MeanCombiner(task="regression"))


def test_progress_display_is_not_recorded_as_a_fit_option():
    x, y = rows()
    model = ensemble.build_ensemble(members(), combiners.StackingCombiner())
    report = ensemble.fit(model, x, y, method="keras", epochs=2, verbose=0)
    assert report.options == {"epochs": 2}


@pytest.mark.slow
def test_weights_set_after_construction_survive_the_ensembles_copy():
    class Weighted(combiners.Combiner):  # a user's combiner on the base's weighted mean
        def _combine(self, member_predictions, features):
            return self._weighted_mean(member_predictions)

    combiner = Weighted()
    combiner.set_member_weights([0, 1, 0])
    model = ensemble.build_ensemble(members(), combiner)
    x, _ = rows()
    out = model.predict(x, verbose=0)
    np.testing.assert_allclose(out["prediction"], out["member_predictions"][:, 1], atol=1e-6)


def test_a_combiner_that_cannot_take_the_task_says_so():
    regressor = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    member = ensemble.load_member(regressor, name="r")
    with pytest.raises(
        ensemble.EnsembleError, match=r"VoteCombiner 'vote_combiner\w*' cannot combine a regression task"
    ):
        ensemble.build_ensemble([member], combiners.VoteCombiner(), task="regression")
