"""Weighted hard voting tallies exactly: a tie is a tie, and goes to the lowest class index.

References: scikit-learn's `VotingClassifier` rule (`np.argmax(np.bincount(votes, weights))`,
exact in float64 for integer weights) and `fractions.Fraction` tallies for rational weights.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.ensemble import VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.tree import DecisionTreeClassifier

from combiners import VoteCombiner
from combiners.vote import exact_vote_weights

CLASSES, MEMBERS = 4, 4
# Every way 4 members can vote over 4 classes: many exact ties under the weights below.
VOTES = np.array(list(itertools.product(range(CLASSES), repeat=MEMBERS)))
PROBABILITIES = (np.eye(CLASSES)[VOTES] * 0.7 + 0.3 / CLASSES).astype("float32")


def fraction_winners(weights: list[float]) -> np.ndarray:
    """The class with the largest exact tally, the lowest index among equals."""
    exact = [Fraction(w).limit_denominator(10**9) for w in weights]

    def winner(row: np.ndarray) -> int:
        tallies = [
            sum((w for w, v in zip(exact, row, strict=True) if v == k), Fraction(0)) for k in range(CLASSES)
        ]
        return max(range(CLASSES), key=lambda k: (tallies[k], -k))

    return np.array([winner(row) for row in VOTES])


def combine(weights: list[float] | None) -> np.ndarray:
    return np.asarray(VoteCombiner(voting="hard", weights=weights, task="classification")(PROBABILITIES))


@pytest.mark.parametrize("weights", [[1, 2, 1, 3], [2, 1, 1, 1], [1, 1, 1, 1]])
def test_integer_weights_break_ties_like_sklearn(weights):
    sklearn_rule = np.array(
        [np.argmax(np.bincount(row, weights=weights, minlength=CLASSES)) for row in VOTES]
    )
    shares = combine(weights)
    np.testing.assert_array_equal(shares.argmax(-1), sklearn_rule)
    np.testing.assert_allclose(shares.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "weights", [[0.1, 0.2, 0.1, 0.3], [1 / 3, 1 / 3, 2 / 3, 1 / 3], [0.25, 0.5, 0.125, 0.125]]
)
def test_rational_weights_tie_exactly(weights):
    np.testing.assert_array_equal(combine(weights).argmax(-1), fraction_winners(weights))


def test_tied_shares_are_bit_equal():
    # Members 0 and 1 (weights 1 + 2) for class 0 against member 3 (weight 3) for class 1.
    shares = combine([1, 2, 1, 3])
    row = np.flatnonzero((VOTES == [0, 0, 2, 1]).all(1))[0]
    assert shares[row, 0] == shares[row, 1]
    assert shares[row].argmax() == 0


def test_exact_vote_weights_are_the_smallest_integers():
    assert exact_vote_weights([0.1, 0.2, 0.3], 3) == [1, 2, 3]
    assert exact_vote_weights([1 / 3, 2 / 3], 2) == [1, 2]
    assert exact_vote_weights(None, 3) == [1, 1, 1]
    assert exact_vote_weights([1.0, 1e-300], 2) is None  # past 2**24: float32 tallies
    assert exact_vote_weights([2**23, 2**23 + 1], 2) is None


def test_digits_votes_match_voting_classifier():
    x, y = load_digits(return_X_y=True)
    estimators = [
        ("logistic", LogisticRegression(max_iter=300)),
        ("tree", DecisionTreeClassifier(max_depth=4, random_state=0)),
        ("bayes", GaussianNB()),
        ("knn", KNeighborsClassifier(3)),
    ]
    weights = [1, 2, 1, 3]
    voting = VotingClassifier(estimators, voting="hard", weights=weights).fit(x[:1437], y[:1437])
    probabilities = np.stack([e.predict_proba(x[1437:]) for e in voting.estimators_], 1).astype("float32")
    shares = VoteCombiner(voting="hard", weights=weights, task="classification")(probabilities)
    np.testing.assert_array_equal(np.asarray(shares).argmax(-1), voting.predict(x[1437:]))


@pytest.mark.slow
def test_large_integer_totals_fall_back_and_still_export(tmp_path):
    """Weights with no small common denominator vote in float32 (as the mean weighs) and
    convert to TFLite's builtin ops, float16 included."""
    import keras

    import ensemble

    keras.utils.set_random_seed(0)
    sources = [
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")]) for _ in range(3)
    ]
    members = [ensemble.load_member(m, name=f"m{i}") for i, m in enumerate(sources)]
    model = ensemble.build_ensemble(members, VoteCombiner(voting="hard", weights=[1e-9, 1, 1]))
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    expected = np.asarray(model(x)["prediction"])
    np.testing.assert_allclose(expected.sum(-1), 1.0, rtol=1e-6)
    for quantize in ("none", "float16"):
        path = ensemble.export_tflite(model, tmp_path / f"{quantize}.tflite", quantize=quantize)
        np.testing.assert_allclose(
            ensemble.run_tflite(path, {"features": x})["prediction"], expected, atol=1e-3
        )
