"""The training functions on the edges a review found: a `Softmax` layer is a softmax, labels
and teacher rows are checked before anything trains, K is the classes in y (as scikit-learn),
snapshots follow the fit's own steps, soups compare layer configs, and the guard sees what
trained a student or a soup."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import ensemble
from combiners import MeanCombiner
from ensemble import EnsembleError

RNG = np.random.default_rng(0)
X = RNG.normal(size=(120, 4)).astype("float32")
Y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)  # classes 0, 1, 2


def classifier(width: int = 3, softmax_layer: bool = False, activation: str = "relu", seed: int = 0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((4,)), keras.layers.Dense(8, activation=activation)]
    if softmax_layer:
        layers += [keras.layers.Dense(width), keras.layers.Softmax()]
    else:
        layers += [keras.layers.Dense(width, activation="softmax")]
    return keras.Sequential(layers)


def strong(**kwargs):
    model = classifier(**kwargs)
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    return model


@pytest.fixture(scope="module")
def teacher():
    members = []
    for seed in (1, 2):
        model = classifier(seed=seed)
        model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
        model.fit(X, Y, epochs=5, verbose=0)  # no test asks more of it than answers of its kind
        members.append(ensemble.load_member(model, name=f"t{seed}"))
    return ensemble.build_ensemble(members, MeanCombiner())


@pytest.mark.slow
def test_a_softmax_layer_is_a_softmax(teacher):
    student = ensemble.distill(teacher, classifier(softmax_layer=True), X, epochs=2, verbose=0)
    assert student.output_kind == "probabilities"
    boosted = ensemble.boost(
        lambda i: strong(softmax_layer=True, seed=i), X, Y, rounds=1, epochs=5, verbose=0
    )  # five epochs: better than chance, which is all boosting needs to keep the member
    assert ensemble.ensemble_members(boosted)[0].output_kind == "probabilities"


@pytest.mark.slow
def test_k_is_the_classes_in_y_as_scikit_learn_counts_it():
    # Five epochs leave the first member imperfect and better than chance: its weight then
    # shows K (3 classes in y, not 10 outputs), whatever its error.
    model = ensemble.boost(lambda i: strong(width=10, seed=i), X, Y, rounds=2, epochs=5, verbose=0)
    votes = model.predict(X, verbose=0)["member_predictions"][:, 0].argmax(-1)
    error = np.mean(votes != Y)  # round 0 trains on uniform weights
    expected = np.log((1 - error) / error) + np.log(3 - 1)  # K = 3 classes in y, not 10 outputs
    assert ensemble.ensemble_combiner(model).member_weights[0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda t: ensemble.boost(lambda i: classifier(width=2), X, Y, rounds=1, epochs=1),
            "emits 2 classes",
        ),
        (
            lambda t: ensemble.boost(lambda i: classifier(), X, Y[:50], rounds=1),
            r"one target per row of x \(120\)",
        ),
        (lambda t: ensemble.boost(lambda i: classifier(), X, Y, rounds=1, sample_weight=Y), "sample_weight"),
        (
            lambda t: ensemble.distill(t, classifier(), X, y=Y - 1, label_weight=0.5, epochs=1),
            "has label -1",
        ),
        (
            lambda t: ensemble.distill(t, classifier(), X, y=Y[:10], label_weight=0.5, epochs=1),
            r"one target per row of x \(120\). Received: 10",
        ),
    ],
)
def test_labels_are_checked_before_anything_trains(teacher, call, match):
    with pytest.raises(EnsembleError, match=match):
        call(teacher)


def test_a_row_the_teacher_answers_nan_is_named_before_training(teacher):
    x = X.copy()
    x[3, 1] = np.nan
    student = classifier()
    before = [w.copy() for w in student.get_weights()]
    with pytest.raises(EnsembleError, match="row 3 is not finite"):
        ensemble.distill(teacher, student, x, epochs=2, verbose=0)
    for a, b in zip(before, student.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # nothing trained


@pytest.mark.slow
def test_the_guard_sees_what_trained_a_student_and_a_soup(teacher):
    student = ensemble.distill(teacher, classifier(), X[:60], epochs=2, verbose=0)
    np.testing.assert_array_equal(student.training_rows, X[:60])
    bagged = ensemble.bag(lambda i: classifier(seed=i), X, Y, members=2, epochs=1, verbose=0)
    soup = ensemble.soup(ensemble.ensemble_members(bagged))
    assert len(soup.training_rows) == 2 * len(X)
    with pytest.raises(EnsembleError, match="trained member"):
        ensemble.check_leakage(ensemble.build_ensemble([soup, student], MeanCombiner()), X[:10])


def test_soups_compare_layer_configs():
    relu = ensemble.load_member(classifier(activation="relu"), name="relu_m")
    tanh = ensemble.load_member(classifier(activation="tanh"), name="tanh_m")
    with pytest.raises(EnsembleError, match="'relu_m' and 'tanh_m' differ"):
        ensemble.soup([relu, tanh])


def test_a_multi_target_student_learns_each_targets_spread():
    members = []
    for seed in (1, 2, 3):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.set_weights([RNG.normal(size=(4, 2)).astype("float32"), np.zeros(2, "float32")])
        members.append(ensemble.load_member(model, name=f"r{seed}"))
    teacher = ensemble.build_ensemble(members, MeanCombiner(), task="regression")
    student = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)]
    )
    result = ensemble.distill(teacher, student, X, epochs=3, uncertainty=True, verbose=0)
    assert np.asarray(result.model(X[:5])["std"]).shape == (5, 2)


def test_snapshots_follow_the_fits_own_steps_and_refuse_what_would_break_them():
    build = lambda: classifier()  # noqa: E731
    split = ensemble.snapshots(
        build, X, Y, cycles=2, epochs_per_cycle=2, batch_size=16, validation_split=0.25, verbose=0
    )
    assert len(ensemble.ensemble_members(split)) == 2

    def fused():
        model = classifier()
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", steps_per_execution=4)
        return model

    with pytest.raises(EnsembleError, match="steps_per_execution=1"):
        ensemble.snapshots(fused, X, Y, cycles=2, epochs_per_cycle=1)
    with pytest.raises(EnsembleError, match="pass no epochs"):
        ensemble.snapshots(build, X, Y, cycles=2, epochs_per_cycle=1, epochs=5)
    stop = keras.callbacks.LambdaCallback()
    stop.on_epoch_end = lambda epoch, logs=None: setattr(stop.model, "stop_training", True)
    with pytest.raises(EnsembleError, match="stopped after 0 of 2 cycles"):
        ensemble.snapshots(build, X, Y, cycles=2, epochs_per_cycle=2, callbacks=[stop], verbose=0)
