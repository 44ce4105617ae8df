"""The doors' edges an adversarial pass found: multilabel test labels checked as the fit checks
them (the bad row named), NaN and empty test splits refused clearly, `fit_out_of_fold` on a
multilabel ensemble (per-label weights on scikit-learn's folds), `distill` refusing a
multilabel teacher, x past float32's range refused before `bag`/`boost` train, and per-label
weight tables and sigmoid logits told what is wrong with them."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

import ensemble
from combiners import MeanCombiner
from ensemble import EnsembleError, MemberError

RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, 4)).astype("float32")
Y = (X[:, :3] + 0.5 * RNG.normal(size=(60, 3)) > 0).astype("int64")  # 3 labels
CLASSES = Y[:, 0] + Y[:, 1]  # 3 classes
WIDE = X.astype("float64")
WIDE[2, 1] = 1e39  # finite in float64, infinite in the float32 graph


def dense(activation: str, seed: int, width: int = 3) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(width, activation=activation)])


@pytest.fixture(scope="module")
def multilabel():
    members = {"a": dense("sigmoid", 0), "b": dense("sigmoid", 1)}
    return ensemble.build_ensemble(members, MeanCombiner(), task="multilabel")


@pytest.fixture(scope="module")
def classifier():
    return ensemble.build_ensemble({"a": dense("softmax", 2), "b": dense("softmax", 3)}, MeanCombiner())


def _bad_labels(kind: str) -> np.ndarray:
    if kind == "strings":
        return Y.astype(str)
    y = Y.astype("float64")
    y[4, 1] = 2.0 if kind == "two" else np.nan
    return y


BAD_LABELS = [
    ("two", r"row 4 is \[\d\.0, 2\.0, \d\.0\] \(1 such row"),
    ("nan", r"row 4 is \[\d\.0, nan, \d\.0\] \(1 such row"),
    ("strings", r"dtype <U\d+; row 0 is \['\d', '\d', '\d'\]"),
]


@pytest.mark.parametrize("door", ["fit", "evaluate_ensemble"])
@pytest.mark.parametrize(("kind", "match"), BAD_LABELS, ids=[k for k, _ in BAD_LABELS])
def test_bad_multilabel_y_names_its_row_at_fit_and_at_evaluation(multilabel, door, kind, match):
    call = {
        "fit": lambda y: ensemble.fit(multilabel, X, y, method="optimal", allow_overlap=True),
        "evaluate_ensemble": lambda y: ensemble.evaluate_ensemble(multilabel, X, y),
    }[door]
    with pytest.raises(EnsembleError, match=match):
        call(_bad_labels(kind))


def test_a_nan_test_row_and_an_empty_split_are_named(multilabel):
    x = X.copy()
    x[3, 2] = np.nan
    # The cause is named, in x, before the members predict NaN from it.
    with pytest.raises(EnsembleError, match=r"x holds NaN .*first rows \[3\]\), column\(s\) \[2\]"):
        ensemble.evaluate_ensemble(multilabel, x, Y)
    with pytest.raises(EnsembleError, match=r"at least one test row.*empty split \(0 rows\)"):
        ensemble.evaluate_ensemble(multilabel, X[:0], Y[:0])


def logistic(label_noise: float):
    """A fold model per label: scikit-learn's logistic regression, its P(label) columns."""

    def fit_predict(x_train, y_train, x_predict):
        flip = np.random.default_rng(0).random(y_train.shape) < label_noise
        y_train = np.where(flip, 1 - y_train, y_train)
        columns = [LogisticRegression().fit(x_train, y_train[:, j]) for j in range(y_train.shape[1])]
        return np.stack([m.predict_proba(x_predict)[:, 1] for m in columns], axis=1)

    return fit_predict


def test_fit_out_of_fold_fits_per_label_weights_on_the_folds_models_predictions(multilabel):
    builders = {"a": logistic(0.0), "b": logistic(0.3)}
    report = ensemble.fit_out_of_fold(multilabel, X, Y, builders, cv=3, method="optimal")
    expected = np.empty((len(X), 2, 3))  # scikit-learn's folds, as cross_val_predict draws them
    for train, held_out in KFold(3, shuffle=True, random_state=0).split(X):
        for index, name in enumerate(builders):
            expected[held_out, index] = builders[name](X[train], Y[train], X[held_out])
    np.testing.assert_allclose(report.level_one, expected, atol=1e-6)
    assert report.regime == "oof" and np.shape(report.fitted) == (2, 3)
    given = ensemble.fit(multilabel, X, Y, level_one=expected, level_one_unseen=True, method="optimal")
    np.testing.assert_allclose(report.fitted, given.fitted, atol=1e-6)
    assert (np.asarray(report.fitted)[0] > np.asarray(report.fitted)[1]).all()  # the clean member
    out = multilabel.predict(X, verbose=0)
    weights = np.asarray(given.fitted) / np.sum(given.fitted, axis=0)
    reference = (out["member_predictions"] * weights[None]).sum(axis=1)
    np.testing.assert_allclose(out["prediction"], reference, atol=1e-6)


def test_fit_out_of_fold_checks_multilabel_y_and_fold_predictions(multilabel):
    calls = []

    def counted(x_train, y_train, x_predict):
        calls.append(len(x_train))
        return np.full((len(x_predict), 3), 0.5)

    with pytest.raises(EnsembleError, match=r"row 4 is \[\d\.0, 2\.0, \d\.0\]"):
        ensemble.fit_out_of_fold(multilabel, X, _bad_labels("two"), {"a": counted, "b": counted}, cv=3)
    assert calls == []  # refused before any fold model trains

    def logits(x_train, y_train, x_predict):
        return np.full((len(x_predict), 3), 2.5)

    with pytest.raises(MemberError, match=r"Member 'b'.*in \[0, 1\].*row 0 is \[2\.5, 2\.5, 2\.5\].*sigmoid"):
        ensemble.fit_out_of_fold(multilabel, X, Y, {"a": counted, "b": logits}, cv=3, method="optimal")


def test_distill_refuses_a_multilabel_teacher_before_training(multilabel):
    student = dense("sigmoid", 4)
    before = [w.copy() for w in student.get_weights()]
    with pytest.raises(EnsembleError, match=r"distill does not support task='multilabel' yet.*3 labels"):
        ensemble.distill(multilabel, student, X, epochs=1, verbose=0)
    for old, new in zip(before, student.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


DOORS = {
    "bag": lambda build, x, _: ensemble.bag(build, x, CLASSES, members=2, epochs=1, verbose=0),
    "boost": lambda build, x, _: ensemble.boost(build, x, CLASSES, rounds=2, epochs=1, verbose=0),
    "boost (float targets)": lambda build, x, _: ensemble.boost(
        build, x, X[:, 0].astype("float64"), rounds=2, epochs=1, verbose=0
    ),
    "soup": lambda _, x, teacher: ensemble.soup(
        [dense("softmax", 2), dense("softmax", 3)], method="greedy", x=x, y=CLASSES
    ),
    "distill": lambda build, x, teacher: ensemble.distill(teacher, build(0), x, epochs=1, verbose=0),
}


@pytest.mark.parametrize("door", list(DOORS))
@pytest.mark.parametrize(
    ("value", "cause"),
    [(1e39, r"\[1e\+39\]; float64 values past float32's range"), (np.nan, r"\[nan\]\. Drop")],
    ids=["past-float32", "nan"],
)
def test_x_not_finite_in_float32_is_refused_before_anything_trains(classifier, door, value, cause):
    built = []

    def build(index):
        built.append(index)
        return dense("softmax", 5 + index)

    x = X.astype("float64")
    x[2, 1] = value
    with pytest.raises(
        EnsembleError, match=rf"x(\['\w+'\])?: row 2 is not finite .*column\(s\) \[1\].*{cause}"
    ):
        DOORS[door](build, x, classifier)
    assert built == [] or door == "distill"  # distill's student is built, never trained


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([[0, 1, 1], [0, 4, 1]], r"all weights are zero.*label 0 \(column 0\) is \[0, 0\]"),
        ([[1, -2, 1], [1, 4, 1]], r"non-negative weights.*label 1 \(column 1\) is \[-2, 4\]"),
    ],
    ids=["zero-column", "negative"],
)
def test_a_bad_per_label_weight_table_names_the_label_and_shows_the_table(weights, match):
    with pytest.raises(ValueError, match=match) as raised:
        MeanCombiner(weights=weights)
    assert f"Received: weights={weights!r}" in str(raised.value)


def test_sigmoid_declared_logits_is_told_what_the_ensemble_would_do():
    with pytest.raises(
        MemberError, match=r"ends in a sigmoid.*a sigmoid per label under task='multilabel'"
    ) as raised:
        ensemble.load_member(dense("sigmoid", 6), name="s", output="logits")
    assert "a second softmax would flatten" not in str(raised.value)
