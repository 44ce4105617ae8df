"""Out-of-fold predictions against scikit-learn's `cross_val_predict`, leak checks and errors."""

from __future__ import annotations

import logging
from collections.abc import Callable

import keras
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_diabetes, load_digits, load_iris, load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ensemble.errors import EnsembleError, MemberError
from ensemble.fitting import OutOfFold, out_of_fold_predictions, stack_out_of_fold


def sklearn_fit_predict(estimator, method: str) -> Callable[..., np.ndarray]:
    """A `fit_predict` that trains a fresh clone of `estimator` on each call."""

    def fit_predict(x_train, y_train, x_predict):
        return getattr(clone(estimator).fit(x_train, y_train), method)(x_predict)

    return fit_predict


def two_targets() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_diabetes(return_X_y=True)
    return x, np.column_stack([y, np.log(y)])


REFERENCE_CASES = [
    (
        lambda: load_iris(return_X_y=True),
        make_pipeline(StandardScaler(), LogisticRegression()),
        "classification",
        5,
    ),
    (
        lambda: load_wine(return_X_y=True),
        make_pipeline(StandardScaler(), LogisticRegression()),
        "classification",
        3,
    ),
    (lambda: load_diabetes(return_X_y=True), Ridge(alpha=0.5), "regression", 5),
    (two_targets, Ridge(alpha=0.5), "regression", 4),
]


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize(
    ("load", "estimator", "task", "cv"),
    REFERENCE_CASES,
    ids=["iris-logistic", "wine-logistic", "diabetes-ridge", "diabetes-ridge-2-targets"],
)
def test_matches_cross_val_predict(load, estimator, task, cv, seed):
    x, y = load()
    if task == "classification":
        splitter, method = StratifiedKFold(cv, shuffle=True, random_state=seed), "predict_proba"
    else:
        splitter, method = KFold(cv, shuffle=True, random_state=seed), "predict"
    expected = cross_val_predict(estimator, x, y, cv=splitter, method=method)

    oof = out_of_fold_predictions(sklearn_fit_predict(estimator, method), x, y, cv=cv, task=task, seed=seed)

    assert isinstance(oof, OutOfFold)
    np.testing.assert_allclose(oof.predictions, expected.reshape(len(x), -1), rtol=0, atol=1e-8)
    assert oof.predictions.ndim == 2
    for fold, (_, held_out) in enumerate(splitter.split(x, y)):
        np.testing.assert_array_equal(np.flatnonzero(oof.folds == fold), held_out)


@pytest.mark.parametrize(
    ("task", "cv"), [("classification", 5), ("regression", 3)], ids=["stratified", "kfold"]
)
def test_rows_never_seen_by_the_model_that_predicted_them(task, cv):
    features, y = load_iris(return_X_y=True)
    rows = len(features)
    # Column 0 is the row id, so the memorising member knows exactly which rows it saw.
    x = np.column_stack([np.arange(rows), features])
    trained_on, predicted = [], []

    def memorise(x_train, y_train, x_predict):
        seen = set(x_train[:, 0].astype(int))
        ids = x_predict[:, 0].astype(int)
        trained_on.append(seen)
        predicted.append(ids)
        return np.column_stack([[i in seen for i in ids], ids]).astype(float)

    oof = out_of_fold_predictions(memorise, x, y.astype(float), cv=cv, task=task)

    assert not oof.predictions[:, 0].any(), "a row was predicted by a model trained on it"
    np.testing.assert_array_equal(oof.predictions[:, 1], np.arange(rows))  # each lands on its own row
    np.testing.assert_array_equal(np.sort(np.concatenate(predicted)), np.arange(rows))  # exactly once
    assert len(predicted) == cv
    assert sorted(set(oof.folds.tolist())) == list(range(cv))
    for fold, seen in enumerate(trained_on):
        held_out = set(np.flatnonzero(oof.folds == fold).tolist())
        assert seen == set(range(rows)) - held_out


def test_classification_folds_are_stratified():
    x, y = load_wine(return_X_y=True)
    oof = out_of_fold_predictions(lambda a, b, c: np.zeros(len(c)), x, y, cv=4)
    for fold in range(4):
        counts = np.bincount(y[oof.folds == fold], minlength=3)
        np.testing.assert_allclose(counts, np.bincount(y) / 4, atol=1)


def test_one_dimensional_predictions_become_one_column():
    x, y = load_diabetes(return_X_y=True)
    oof = out_of_fold_predictions(sklearn_fit_predict(Ridge(), "predict"), x, y, task="regression")
    assert oof.predictions.shape == (len(x), 1)


def fold_counter() -> Callable[..., np.ndarray]:
    """A member that predicts, for every held-out row, how many times it has been trained."""
    calls = []

    def fit_predict(x_train, y_train, x_predict):
        calls.append(len(x_train))
        return np.full(len(x_predict), len(calls) - 1)

    return fit_predict


def test_stack_uses_the_same_folds_for_every_member():
    x, y = load_iris(return_X_y=True)
    level_one, folds = stack_out_of_fold(
        {"first": fold_counter(), "second": fold_counter()}, x, y, cv=3, seed=4
    )

    assert level_one.shape == (len(x), 2, 1)
    np.testing.assert_array_equal(level_one[:, 0, 0], folds)
    np.testing.assert_array_equal(level_one[:, 1, 0], folds)
    np.testing.assert_array_equal(folds, out_of_fold_predictions(fold_counter(), x, y, cv=3, seed=4).folds)


def test_stack_is_in_member_order_and_matches_each_member():
    x, y = load_iris(return_X_y=True)
    members = {
        "naive_bayes": sklearn_fit_predict(GaussianNB(), "predict_proba"),
        "logistic": sklearn_fit_predict(
            make_pipeline(StandardScaler(), LogisticRegression()), "predict_proba"
        ),
    }
    level_one, folds = stack_out_of_fold(members, x, y, cv=5, seed=1)

    assert level_one.shape == (len(x), 2, 3)
    for column, fit_predict in enumerate(members.values()):
        alone = out_of_fold_predictions(fit_predict, x, y, cv=5, seed=1)
        np.testing.assert_array_equal(level_one[:, column], alone.predictions)
        np.testing.assert_array_equal(folds, alone.folds)


def test_named_inputs_are_indexed_together():
    features, y = load_diabetes(return_X_y=True)
    x = {"a": features[:, :4], "b": features[:, 4:]}

    def fit_predict(x_train, y_train, x_predict):
        assert set(x_train) == set(x_predict) == {"a", "b"}
        joined = [np.concatenate([part["a"], part["b"]], axis=1) for part in (x_train, x_predict)]
        return Ridge().fit(joined[0], y_train).predict(joined[1])

    named = out_of_fold_predictions(fit_predict, x, y, task="regression", seed=3)
    plain = out_of_fold_predictions(
        sklearn_fit_predict(Ridge(), "predict"), features, y, task="regression", seed=3
    )
    np.testing.assert_allclose(named.predictions, plain.predictions, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(named.folds, plain.folds)


def test_logs_one_line_per_fold(caplog):
    x, y = load_iris(return_X_y=True)
    with caplog.at_level(logging.INFO, logger="ensemble.fitting.out_of_fold"):
        out_of_fold_predictions(lambda a, b, c: np.zeros(len(c)), x, y, cv=4)
    folds = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(folds) == 4
    assert folds[0].startswith("Fold 0 of 4 folds: trained on")


def test_verbose_shows_a_progress_bar(capsys):
    x, y = load_iris(return_X_y=True)
    out_of_fold_predictions(lambda a, b, c: np.zeros(len(c)), x, y, cv=3, verbose=True)
    assert "3/3" in capsys.readouterr().out


@pytest.mark.slow
def test_keras_member():
    x, y = load_digits(return_X_y=True)
    x, y = (x[:300] / 16.0).astype("float32"), y[:300]

    def fit_predict(x_train, y_train, x_predict):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((x.shape[1],)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
        model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)
        return model.predict(x_predict, verbose=0)

    oof = out_of_fold_predictions(fit_predict, x, y, cv=3)

    assert oof.predictions.shape == (300, 10)
    np.testing.assert_allclose(oof.predictions.sum(axis=1), 1.0, atol=1e-5)
    assert (oof.predictions.argmax(axis=1) == y).mean() > 0.8


def zeros(x_train, y_train, x_predict):
    return np.zeros((len(x_predict), 2))


def one_row_short(x_train, y_train, x_predict):
    return np.zeros((len(x_predict) - 1, 2))


def widths_differ(x_train, y_train, x_predict):
    return np.zeros((len(x_predict), 2 + len(x_train) % 2))


X12 = np.arange(24.0).reshape(12, 2)
Y12 = np.repeat([0, 1, 2], 4)

ERRORS = [
    ({"cv": 1}, r"Expected cv >= 2 folds\. Received: cv=1"),
    ({"cv": 13, "task": "regression"}, r"Expected cv <= 12, the number of rows\. Received: cv=13"),
    (
        {"y": np.array([0] * 10 + [7] * 2), "cv": 3},
        r"Expected cv <= 2, the rows of the smallest class 7, .* Received: cv=3",
    ),
    ({"y": Y12[:-1]}, r"Expected len\(y\) == 12, one target per row of x\. Received: len\(y\)=11"),
    (
        {"fit_predict": one_row_short},
        r"Fold 0: expected predictions of shape \(4,\) or \(4, width\), .* Received: shape=\(3, 2\)",
    ),
    (
        {"fit_predict": lambda a, b, c: np.zeros((len(c), 2, 2)), "cv": 3},
        r"Fold 0: expected predictions of shape .* Received: shape=\(4, 2, 2\)",
    ),
    (
        {
            "fit_predict": widths_differ,
            "cv": 3,
            "task": "regression",
            "x": np.zeros((10, 2)),
            "y": np.zeros(10),
        },
        r"Fold 1: expected width 2 as in fold 0\. Received: shape=\(3, 3\)",
    ),
    (
        {"task": "ranking"},
        r"Expected task in \('classification', 'regression', 'multilabel'\)\. Received: task='ranking'",
    ),
    ({"y": np.eye(3)[Y12]}, r"Expected 1-D class labels for classification\. Received: y\.shape=\(12, 3\)"),
    ({"x": {"a": X12, "b": X12[:-1]}}, r"same rows\. Received: rows=\{'a': 12, 'b': 11\}"),
    ({"x": {}}, r"Expected at least one named input"),
]


@pytest.mark.parametrize(
    ("overrides", "match"),
    ERRORS,
    ids=[
        "cv-below-2",
        "cv-above-rows",
        "cv-above-smallest-class",
        "y-rows",
        "fit-predict-rows",
        "fit-predict-3d",
        "fit-predict-width",
        "unknown-task",
        "one-hot-labels",
        "named-inputs-rows",
        "no-named-inputs",
    ],
)
def test_errors(overrides, match):
    arguments = {"fit_predict": zeros, "x": X12, "y": Y12, "cv": 3, "task": "classification"}
    arguments.update(overrides)
    fit_predict, x, y = arguments.pop("fit_predict"), arguments.pop("x"), arguments.pop("y")
    with pytest.raises(ValueError, match=match) as raised:
        out_of_fold_predictions(fit_predict, x, y, **arguments)
    assert isinstance(raised.value, EnsembleError)


@pytest.mark.parametrize(
    ("members", "error", "match"),
    [
        ({}, EnsembleError, r"Expected at least one member\. Received: members=\{\}"),
        ({"ok": zeros, "short": one_row_short}, MemberError, r"Member 'short': Fold 0: expected predictions"),
        (
            {"two": zeros, "one": lambda a, b, c: np.zeros(len(c))},
            EnsembleError,
            r"same width\. Received: widths=\{'two': 2, 'one': 1\}",
        ),
    ],
    ids=["no-members", "member-rows", "member-widths"],
)
def test_stack_errors(members, error, match):
    with pytest.raises(error, match=match):
        stack_out_of_fold(members, X12, Y12, cv=3)
