"""What a second adversarial pass over issue 27 found near-silent: booleans given for three
classes, a test split's non-finite row blamed on the probabilities, labels the evaluation left
to scikit-learn, a multilabel label constant in the fitting rows, and one-hot targets for a
learner compiled with a sparse loss."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
from sklearn.metrics import log_loss

import ensemble
from combiners import MeanCombiner
from ensemble import EnsembleError

RNG = np.random.default_rng(3)
X = RNG.normal(size=(40, 4)).astype("float32")
LABELS = RNG.integers(0, 3, 40)


def dense(activation: str, seed: int, width: int = 3) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(width, activation=activation)])


@pytest.fixture(scope="module")
def three():
    return ensemble.build_ensemble({"a": dense("softmax", 0), "b": dense("softmax", 1)}, MeanCombiner())


@pytest.mark.parametrize("door", ["fit", "evaluate_ensemble"])
def test_booleans_for_three_classes_are_refused(three, door):
    with pytest.raises(
        EnsembleError, match=r"0 to 2 for the 3 columns.*booleans, which name only classes 0 and 1"
    ):
        getattr(ensemble, door)(three, X, LABELS > 0)


def test_booleans_for_two_classes_are_the_labels_0_and_1():
    two = ensemble.build_ensemble({"a": dense("softmax", 2, 2), "b": dense("softmax", 3, 2)}, MeanCombiner())
    y = LABELS > 0
    scores = ensemble.evaluate_ensemble(two, X, y)
    mean = np.mean(
        [m.predict(X, verbose=0) for m in (dense("softmax", 2, 2), dense("softmax", 3, 2))], axis=0
    )
    assert scores == ensemble.evaluate_ensemble(two, X, y.astype(int))
    assert scores["mean"]["nll"] == pytest.approx(log_loss(y.astype(int), mean), rel=1e-5)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (
            LABELS.astype(str),
            r"evaluate_ensemble: Expected integer class labels .*dtype <U\d+.*LabelEncoder",
        ),
        (
            np.array([*LABELS[:-1].tolist(), "b"], dtype=object),
            r"evaluate_ensemble: .*dtype object.*LabelEncoder",
        ),
        (LABELS + 1, r"row \d+ has label 3.*Labels 1\.\.3\? Subtract 1"),
    ],
    ids=["digits-as-text", "mixed", "one-to-k"],
)
def test_the_evaluation_checks_labels_as_the_fit_does(three, labels, match):
    with pytest.raises(EnsembleError, match=match):
        ensemble.evaluate_ensemble(three, X, labels)


def test_a_non_finite_test_row_is_named_in_x(three):
    x = X.astype("float64")
    x[5, 2] = np.inf
    with pytest.raises(
        EnsembleError,
        match=r"x holds NaN or infinite values in 1 row\(s\) of 40 \(first rows \[5\]\), column\(s\) \[2\].*No metric",
    ):
        ensemble.evaluate_ensemble(three, x, LABELS)


def test_a_multilabel_label_constant_in_the_fitting_rows_keeps_equal_weights(caplog):
    model = ensemble.build_ensemble(
        {"a": dense("sigmoid", 4), "b": dense("sigmoid", 5)}, MeanCombiner(), task="multilabel"
    )
    y = (X[:, :3] > 0).astype("int64")
    y[:, 1] = 0  # label 1 never present
    with caplog.at_level(logging.WARNING, logger="ensemble"):
        ensemble.fit(model, X, y, method="optimal")
    table = np.asarray(ensemble.EnsembleView.of(model).combiner.label_weights)
    np.testing.assert_allclose(table[:, 1], [0.5, 0.5])
    assert not np.allclose(table[:, 0], 0.5) or not np.allclose(table[:, 2], 0.5)  # the others fitted
    assert "Label column 1 is absent in every one of the 40 fitting rows" in caplog.text


def test_one_hot_targets_for_a_sparse_loss_are_refused_before_training():
    built = []

    def build(index):
        model = dense("softmax", 6 + index)
        model.compile("adam", "sparse_categorical_crossentropy")
        built.append(model)
        return model

    with pytest.raises(EnsembleError, match=r"bag: y holds rows of class probabilities.*sparse loss"):
        ensemble.bag(build, X, np.eye(3)[LABELS], members=2, epochs=1, verbose=0)
    assert len(built) == 1 and not built[0].optimizer.iterations.numpy()
