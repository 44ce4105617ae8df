"""Every fit function checks its rows alike: non-finite x, y or level_one counted and named,
a class without a row refused, and `verbose=0` silent in every pass it reaches."""

from __future__ import annotations

import re

import numpy as np
import pytest

import combiners
import ensemble
from tests.conftest import CLASSES, FEATURES, dense_classifier

ROWS = 60


def ensemble_of(combiner):
    members = [ensemble.load_member(dense_classifier(s), name=f"m{s}") for s in range(2)]
    return ensemble.build_ensemble(members, combiner)


FITTERS = {
    "fit_combiner": (
        lambda: combiners.StackingCombiner(),
        lambda m, x, y, **k: ensemble.fit_combiner(m, x, y, epochs=2, **k),
    ),
    "fit_stacking": (lambda: combiners.StackingCombiner(), ensemble.fit_stacking),
    "fit_mean_weights": (lambda: combiners.MeanCombiner(), ensemble.fit_mean_weights),
    "fit": (lambda: combiners.StackingCombiner(), ensemble.fit),
}


@pytest.fixture
def rows():
    x = np.random.default_rng(0).normal(size=(ROWS, FEATURES)).astype("float32")
    return x, np.arange(ROWS) % CLASSES


@pytest.mark.parametrize("name", sorted(FITTERS))
def test_non_finite_rows_are_counted_and_named(name, rows):
    make, fitter = FITTERS[name]
    x, y = rows
    x = x.copy()
    x[[3, 17], 5] = np.nan
    x[40, 1] = np.inf
    with pytest.raises(
        ensemble.EnsembleError,
        match=r"x holds NaN or infinite values in 3 row\(s\) of 60 \(first rows \[3, 17, 40\]\), column\(s\) \[1, 5\]",
    ):
        fitter(ensemble_of(make()), x, y)


@pytest.mark.parametrize("name", sorted(FITTERS))
def test_a_class_without_rows_is_refused_by_every_fit(name, rows):
    make, fitter = FITTERS[name]
    x, y = rows
    y = np.where(y == 2, 0, y)
    with pytest.raises(ensemble.EnsembleError, match=r"Class\(es\) \[2\] have no row in y"):
        fitter(ensemble_of(make()), x, y)


def test_non_finite_given_level_one_and_regression_targets(rows):
    x, y = rows
    model = ensemble_of(combiners.StackingCombiner())
    level_one = np.full((ROWS, 2, CLASSES), 1 / CLASSES, dtype="float32")
    level_one[7, 1, 0] = np.nan
    with pytest.raises(
        ensemble.EnsembleError, match=r"level_one holds NaN .* 1 row\(s\) of 60 \(first rows \[7\]\)"
    ):
        ensemble.fit(model, x, y, level_one=level_one, level_one_unseen=True)
    import keras

    regressors = [keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)]) for _ in range(2)]
    members = [ensemble.load_member(m, name=f"r{i}") for i, m in enumerate(regressors)]
    regression = ensemble.build_ensemble(members, combiners.StackingCombiner(), task="regression")
    targets = np.random.default_rng(1).normal(size=ROWS)
    targets[9] = np.nan
    with pytest.raises(ensemble.EnsembleError, match=r"y holds NaN .* \(first rows \[9\]\)"):
        ensemble.fit(regression, x, targets)


def test_named_inputs_say_which_input(rows):
    from tests.conftest import two_input_ensemble

    model = two_input_ensemble()
    features = {
        "image": np.random.default_rng(2).normal(size=(ROWS, 4)).astype("float32"),
        "meta": np.random.default_rng(3).normal(size=(ROWS, 2)).astype("float32"),
    }
    features["meta"][11, 1] = np.nan
    with pytest.raises(ensemble.EnsembleError, match=r"x\['meta'\] holds NaN .*\[11\]"):
        ensemble.fit(model, features, rows[1], method="optimal")


@pytest.mark.parametrize("name", ["fit_combiner", "fit"])
def test_verbose_zero_draws_no_progress_bar(name, rows, capsys):
    make, fitter = FITTERS[name]
    x, y = rows
    fitter(
        ensemble_of(make()), x, y, verbose=0, **({"method": "keras", "epochs": 2} if name == "fit" else {})
    )
    captured = capsys.readouterr()
    assert "step" not in captured.out + captured.err


def test_a_fit_that_learns_nothing_takes_rows_without_every_class(rows):
    x, y = rows
    model = ensemble_of(combiners.VoteCombiner())
    report = ensemble.fit(model, x, np.where(y == 2, 0, y), method="none")
    assert report.method == "none" and report.rows == ROWS


def test_given_level_one_of_other_rows_or_order_is_named_in_a_warning(rows, caplog):
    # Predictions passed as level_one (not out of fold) are spot-checked against the members'
    # own on rows of x: in x's order, silent; reversed, a warning naming the member and row.
    x, y = rows
    model = ensemble_of(combiners.MeanCombiner())
    level_one = np.asarray(model.predict(x, verbose=0)["member_predictions"])
    ensemble.fit(model, x, y, method="optimal", level_one=level_one)
    assert "level_one, row" not in caplog.text
    ensemble.fit(model, x, y, method="optimal", level_one=level_one[::-1])
    assert re.search(r"level_one, row 0: member 'm0' predicts .* but level_one holds", caplog.text)
    caplog.clear()  # out of fold (level_one_unseen): models other than the members, no check
    ensemble.fit(model, x, y, method="optimal", level_one=level_one[::-1], level_one_unseen=True)
    assert "level_one, row" not in caplog.text
