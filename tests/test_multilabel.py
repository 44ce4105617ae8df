"""A sigmoid over k > 1 columns is k independent (multi-label) scores, not one distribution over
k classes: `build_ensemble` refuses it as a classifier, whether the task is given or inferred,
and takes it as a bounded regressor under task='regression'. One sigmoid column stays a binary
classifier (two class probabilities)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import combiners
import ensemble


def _model(width: int, final: str | None, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(width, activation=final)])


X = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")

# (final activations of the members, task) -> the error; the multi-label member is "tags".
REFUSED = [
    (
        ["sigmoid"],
        "classification",
        r"'tags': under task='classification', its output \(batch, 3\) ends in a sigmoid over 3 "
        r"columns: 3 independent sigmoids are multi-label scores, not one distribution over "
        r"classes; their rows sum to [\d.]+ to [\d.]+ on probe rows, not 1\. .*softmax "
        r"\(Dense\(3, activation='softmax'\)\).*output='logits'.*pass task='regression'",
    ),
    (
        ["sigmoid"],
        None,
        r"'tags': used as a classifier \(the task inferred from the members' class outputs\), its "
        r"output \(batch, 3\) ends in a sigmoid.*multi-label scores",
    ),
    (["softmax", "sigmoid"], None, r"'tags': used as a classifier.*multi-label scores"),
    (["softmax", "sigmoid"], "classification", r"'tags': under task='classification'.*multi-label"),
]


@pytest.mark.parametrize(
    ("finals", "task", "match"), REFUSED, ids=[f"{'+'.join(f)}-{t}" for f, t, _ in REFUSED]
)
def test_independent_sigmoids_are_refused_as_a_classifier(finals, task, match):
    members = [
        ensemble.load_member(_model(3, final, seed), name="tags" if final == "sigmoid" else f"m{seed}")
        for seed, final in enumerate(finals)
    ]
    with pytest.raises(ensemble.EnsembleError, match=match):
        ensemble.build_ensemble(members, combiners.MeanCombiner(), task=task)


def test_independent_sigmoids_from_a_saved_model_are_refused_as_a_classifier(tmp_path):
    """A SavedModel shows no activation and declares no output: its rows, all in [0, 1] but not
    summing to one, are named for what they look like."""
    _model(3, "sigmoid").export(str(tmp_path / "tags"), verbose=False)
    member = ensemble.load_member(tmp_path / "tags", name="tags")
    match = r"'tags': under task='classification', its output \(batch, 3\) lies in \[0, 1\].*multi-label"
    with pytest.raises(ensemble.EnsembleError, match=match):
        ensemble.build_ensemble([member], combiners.MeanCombiner(), task="classification")


# (width, final activation, task) -> the task built and the prediction the source implies.
ACCEPTED = [
    (3, "sigmoid", "regression", "regression"),  # a bounded multi-target regressor
    (1, "sigmoid", None, "classification"),  # a binary classifier: [1 - p, p]
    (1, "sigmoid", "classification", "classification"),
    (3, "softmax", None, "classification"),
    (3, "softmax", "classification", "classification"),
]


@pytest.mark.parametrize(
    ("width", "final", "task", "built"), ACCEPTED, ids=[f"{w}-{f}-{t}" for w, f, t, _ in ACCEPTED]
)
def test_legitimate_sigmoid_and_softmax_members_build(width, final, task, built):
    source = _model(width, final)
    member = ensemble.load_member(source, name="member")
    model = ensemble.build_ensemble([member], combiners.MeanCombiner(), task=task)
    assert ensemble.ensemble_task(model) == built
    expected = np.asarray(source(X))
    if built == "classification" and width == 1:
        expected = np.hstack([1 - expected, expected])
    prediction = np.asarray(model(X)["prediction"])
    np.testing.assert_allclose(prediction, expected, atol=1e-6)
    if built == "classification":
        np.testing.assert_allclose(prediction.sum(-1), 1.0, atol=1e-5)
