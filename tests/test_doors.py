"""Every door checks what comes in (issue 27, item 6): given and out-of-fold level-one
predictions are class probabilities of the ensemble's shape, float64 values past float32's
range are non-finite, every function taking x and y checks their lengths and the labels' kind
and range, and every fit starts from the combiner's initial state, whatever ran before."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import combiners
import ensemble
from ensemble import EnsembleError
from tests.conftest import CLASSES, FEATURES, dense_classifier, softmax

ROWS = 60
RNG = np.random.default_rng(0)
X = RNG.normal(size=(ROWS, FEATURES)).astype("float32")
Y = np.arange(ROWS) % CLASSES


def stacked(members: int = 2) -> keras.Model:
    models = [ensemble.load_member(dense_classifier(s), name=f"m{s}") for s in range(members)]
    return ensemble.build_ensemble(models, combiners.StackingCombiner())


def probabilities(members: int = 2) -> np.ndarray:
    return softmax(np.random.default_rng(1).normal(size=(ROWS, members, CLASSES))).astype("float32")


# --- level_one= and out-of-fold predictions --------------------------------------------------


def _bad_row(p: np.ndarray) -> np.ndarray:
    p = p.copy()
    p[7, 1] = [0.5, 0.4, 0.2]  # member m1, row 7: sums to 1.1
    return p


def _above_one(p: np.ndarray) -> np.ndarray:
    p = p.copy()
    p[:, 0] = [1.5, 0.0, 0.0]
    return p


LEVEL_ONE_ERRORS = [
    (
        "logits",
        lambda p: np.log(p) * 3.0,
        r"level_one of member 'm0' \(member 0\).*row 0.*Logits or log-probabilities\?",
    ),
    ("log-probabilities", np.log, r"level_one of member 'm0' \(member 0\).*row 0 .*below 0"),
    ("one-member-row", _bad_row, r"level_one of member 'm1' \(member 1\).*row 7 sums to 1\.1"),
    ("above-one", _above_one, r"member 'm0'.*row 0 holds 1\.5, above 1"),
    ("too-wide", lambda p: np.concatenate([p, p[:, :, :1]], -1), r"\(60, 2, 3\). Received: \(60, 2, 4\)"),
]


@pytest.mark.parametrize(
    "make, match", [c[1:] for c in LEVEL_ONE_ERRORS], ids=[c[0] for c in LEVEL_ONE_ERRORS]
)
def test_given_level_one_must_be_class_probabilities(make, match):
    model = stacked()
    with pytest.raises(EnsembleError, match=match):
        ensemble.fit(model, X, Y, level_one=make(probabilities()), level_one_unseen=True)


def test_a_transposed_level_one_is_named_as_such():
    # 3 members of 3 classes: (rows, classes, members) has the expected shape; its rows do not
    # sum to one over the classes, but do over the members.
    model = stacked(members=3)
    p = probabilities(members=3)
    with pytest.raises(EnsembleError, match=r"member 'm0'.*transposed.*np\.swapaxes\(level_one, 1, 2\)"):
        ensemble.fit(model, X, Y, level_one=np.swapaxes(p, 1, 2), level_one_unseen=True)
    with pytest.raises(EnsembleError, match=r"\(rows, members, width\) = \(60, 2, 3\).*transposed"):
        ensemble.fit(stacked(), X, Y, level_one=np.swapaxes(probabilities(), 1, 2), level_one_unseen=True)


def test_probabilities_within_rounding_are_taken():
    p = probabilities().astype("float64")
    p[:, :, 0] += 2e-5  # rows sum to 1 + 2e-5
    p[3, 0] = [1.0 + 5e-7, -5e-7, 0.0]  # just outside [0, 1], within 1e-6
    report = ensemble.fit(stacked(), X, Y, level_one=p, level_one_unseen=True, method="sklearn", C=1.0)
    assert report.rows == ROWS
    p16 = probabilities().astype("float16")  # float16 rows sum to one this loosely
    ensemble.fit(stacked(), X, Y, level_one=p16, level_one_unseen=True, method="sklearn", C=1.0)


def test_out_of_fold_logits_are_refused_with_the_member_named():
    model = stacked()

    def probabilities_of(seed):
        def fit_predict(x_train, y_train, x_predict):
            return softmax(np.random.default_rng(seed).normal(size=(len(x_predict), CLASSES)))

        return fit_predict

    def logits(x_train, y_train, x_predict):
        return np.random.default_rng(2).normal(size=(len(x_predict), CLASSES)) * 4

    builders = {"m0": probabilities_of(0), "m1": logits}
    with pytest.raises(
        ensemble.MemberError,
        match=r"Member 'm1': Expected out-of-fold predictions to be class probabilities.*row \d+.*Logits",
    ):
        ensemble.fit_out_of_fold(model, X, Y, builders, cv=3)
    with pytest.raises(ensemble.MemberError, match=r"Member 'm1': Expected out-of-fold predictions"):
        ensemble.stack_out_of_fold(builders, X, Y, cv=3, probabilities=True)
    with pytest.raises(
        ensemble.MemberError, match=r"Member 'm0': expected out-of-fold predictions of 3 columns.*Received: 2"
    ):
        ensemble.fit_out_of_fold(
            model, X, Y, {"m0": lambda a, b, c: np.full((len(c), 2), 0.5), "m1": logits}, cv=3
        )


# --- float64 past float32's range ------------------------------------------------------------


def test_float64_values_past_float32_range_are_not_finite():
    x = X.astype("float64")
    x[11, 4] = 1e39
    with pytest.raises(
        EnsembleError,
        match=r"x holds NaN or infinite values in 1 row\(s\) of 60 \(first rows \[11\]\), column\(s\) \[4\].*float32",
    ):
        ensemble.fit(stacked(), x, Y, method="sklearn", C=1.0)
    level_one = probabilities().astype("float64")
    level_one[8, 1, 2] = 1e39
    with pytest.raises(
        EnsembleError, match=r"level_one holds NaN .*\(first rows \[8\]\).*1 of them .*float32"
    ):
        ensemble.fit(stacked(), X, Y, level_one=level_one, level_one_unseen=True)
    regressors = [keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)]) for _ in range(2)]
    members = [ensemble.load_member(m, name=f"r{i}") for i, m in enumerate(regressors)]
    regression = ensemble.build_ensemble(members, combiners.StackingCombiner(), task="regression")
    targets = RNG.normal(size=ROWS)
    targets[5] = -1e40
    with pytest.raises(
        EnsembleError, match=r"y holds NaN or infinite values .*\(first rows \[5\]\).*float32"
    ):
        ensemble.fit(regression, X, targets)
    mean = ensemble.build_ensemble(
        [ensemble.load_member(dense_classifier(0), name="m0")], combiners.MeanCombiner()
    )
    with pytest.raises(
        EnsembleError, match=r"x holds NaN .*\(first rows \[11\]\) \(1 finite float64 .*float32"
    ):
        ensemble.add_conformal(mean, x, Y, allow_overlap=True)


# --- labels at every door --------------------------------------------------------------------


def test_fit_labels_name_the_first_bad_row_and_refuse_strings():
    model = stacked()
    y = Y.copy()
    y[[13, 20]] = [5, -1]
    with pytest.raises(EnsembleError, match=r"Expected class labels in \[0, 3\).*row 13 has label 5"):
        ensemble.fit(model, X, y)
    with pytest.raises(EnsembleError, match=r"Labels 1\.\.3\? Subtract 1"):
        ensemble.fit(model, X, Y + 1)
    with pytest.raises(EnsembleError, match=r"Received: dtype <U1.*row 0: 'a'.*LabelEncoder"):
        ensemble.fit(model, X, np.array(list("abc"))[Y])
    with pytest.raises(EnsembleError, match=r"Received: dtype object.*LabelEncoder"):
        ensemble.fit(model, X, np.array(["a", "b", "c"], dtype=object)[Y])
    with pytest.raises(EnsembleError, match=r"y\.argmax\(-1\)"):
        ensemble.fit(model, X, np.eye(CLASSES)[Y])


def test_add_conformal_and_calibrate_member_check_labels():
    model = ensemble.build_ensemble(
        [ensemble.load_member(dense_classifier(0), name="m0")], combiners.MeanCombiner()
    )
    strings = np.array(list("abc"))[Y]
    with pytest.raises(EnsembleError, match="LabelEncoder"):
        ensemble.add_conformal(model, X, strings)
    with pytest.raises(EnsembleError, match=r"one target per row of x \(60\). Received: 59"):
        ensemble.add_conformal(model, X, Y[:-1])
    with pytest.raises(EnsembleError, match="LabelEncoder"):
        ensemble.calibrate_member(dense_classifier(0, name="c0"), X, strings)


def strong(i: int = 0, width: int = CLASSES) -> keras.Model:
    model = dense_classifier(i, classes=width)
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    return model


TRAIN_ERRORS = [
    (
        "bag-more-labels",
        lambda: ensemble.bag(strong, X, np.tile(Y, 2), members=1),
        r"bag: Expected y with one target per row of x \(60\). Received: 120",
    ),
    (
        "bag-strings",
        lambda: ensemble.bag(strong, X, np.array(list("abc"))[Y], members=1),
        r"bag: .*dtype <U1.*LabelEncoder",
    ),
    (
        "bag-out-of-range",
        lambda: ensemble.bag(strong, X, np.where(Y == 2, 7, Y), members=1),
        r"bag: .*\[0, 3\).*row 2 has label 7",
    ),
    (
        "bag-regression-length",
        lambda: ensemble.bag(
            lambda i: keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)]),
            X,
            np.zeros(10),
            members=1,
        ),
        r"bag: Expected y with one target per row of x \(60\). Received: 10",
    ),
    (
        "boost-strings",
        lambda: ensemble.boost(strong, X, np.array(list("abc"))[Y], rounds=1),
        r"boost: .*dtype <U1.*LabelEncoder",
    ),
    (
        "boost-one-to-k",
        lambda: ensemble.boost(strong, X, Y + 1, rounds=1, epochs=1, verbose=0),
        r"boost: .*row 2 has label 3.*1\.\.3\? Subtract 1",
    ),
    (
        "soup-length",
        lambda: ensemble.soup([strong(0), strong(1)], x=X, y=Y[:30]),
        r"one target per row of x \(60\). Received: 30",
    ),
    (
        "soup-strings",
        lambda: ensemble.soup([strong(0), strong(1)], x=X, y=np.array(list("abc"))[Y]),
        r"LabelEncoder",
    ),
    (
        "snapshots-length",
        lambda: ensemble.snapshots(strong, X, Y[:10], cycles=1, epochs_per_cycle=1),
        r"snapshots: Expected y with one target per row of x \(60\). Received: 10",
    ),
    (
        "snapshots-strings",
        lambda: ensemble.snapshots(strong, X, np.array(list("abc"))[Y], cycles=1, epochs_per_cycle=1),
        r"snapshots: .*LabelEncoder",
    ),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in TRAIN_ERRORS], ids=[c[0] for c in TRAIN_ERRORS])
def test_training_doors_check_labels_before_anything_trains(call, match):
    with pytest.raises(EnsembleError, match=match):
        call()


def test_distill_refuses_string_labels():
    teacher = ensemble.build_ensemble(
        [ensemble.load_member(dense_classifier(0), name="t0")], combiners.MeanCombiner()
    )
    with pytest.raises(EnsembleError, match=r"Distilling 'student': .*LabelEncoder"):
        ensemble.distill(
            teacher, dense_classifier(1), X, y=np.array(list("abc"))[Y], label_weight=0.5, epochs=1
        )


# --- every fit starts from the same state ----------------------------------------------------


def _weights(model: keras.Model) -> list[np.ndarray]:
    return ensemble.ensemble_combiner(model).get_weights()


def _assert_same(a: keras.Model, b: keras.Model) -> None:
    for left, right in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_allclose(left, right, atol=1e-6)
    assert ensemble.ensemble_combiner(a).member_weights == ensemble.ensemble_combiner(b).member_weights
    np.testing.assert_allclose(
        a.predict(X, verbose=0)["prediction"], b.predict(X, verbose=0)["prediction"], atol=1e-6
    )


@pytest.mark.slow
def test_a_keras_fit_starts_from_the_initial_weights_whatever_ran_before():
    options = {"method": "keras", "epochs": 3, "seed": 0, "verbose": 0}
    fresh = stacked()
    ensemble.fit(fresh, X, Y, **options)
    twice = stacked()
    ensemble.fit(twice, X, Y, **options)
    ensemble.fit(twice, X, Y, **options)
    _assert_same(twice, fresh)
    after_sklearn = stacked()
    ensemble.fit(after_sklearn, X, Y, method="sklearn", C=1.0)
    ensemble.fit(after_sklearn, X, Y, **options)
    _assert_same(after_sklearn, fresh)


@pytest.mark.slow
def test_one_optimizer_given_twice_starts_fresh_each_time():
    optimizer = keras.optimizers.Adam(0.01)
    fresh = stacked()
    ensemble.fit_combiner(fresh, X, Y, epochs=3, seed=0, verbose=0, optimizer=keras.optimizers.Adam(0.01))
    twice = stacked()
    ensemble.fit_combiner(twice, X, Y, epochs=3, seed=0, verbose=0, optimizer=optimizer)
    ensemble.fit_combiner(twice, X, Y, epochs=3, seed=0, verbose=0, optimizer=optimizer)
    _assert_same(twice, fresh)
