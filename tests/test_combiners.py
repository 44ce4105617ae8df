"""Combiner layers against NumPy references, their errors and serialization."""

from __future__ import annotations

import json
from collections.abc import Callable

import keras
import numpy as np
import omegaconf
import pytest

from combiners import (
    CLASSIFICATION,
    REGRESSION,
    Combiner,
    MeanCombiner,
    StackingCombiner,
    VoteCombiner,
)

BATCH, MEMBERS, CLASSES, TARGETS, FEATURES = 8, 3, 4, 2, 5


def random_probabilities(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(CLASSES), size=(BATCH, MEMBERS))
    # A hard zero exercises the clip before the log in stacking.
    p[0, 0] = np.eye(CLASSES)[0]
    return p.astype("float32")


PROBABILITIES = random_probabilities(0)
TARGET_PREDICTIONS = np.random.default_rng(1).normal(size=(BATCH, MEMBERS, TARGETS)).astype("float32")
RAW_FEATURES = np.random.default_rng(2).normal(size=(BATCH, FEATURES)).astype("float32")
# Row 0: a tie inside each member (0.4 = 0.4, 0.45 = 0.45): the lowest index
# wins. Row 1: one vote each for classes 0 and 2: a tie in the shares.
TIED_PROBABILITIES = np.array(
    [
        [[0.4, 0.4, 0.2], [0.1, 0.45, 0.45]],
        [[0.7, 0.2, 0.1], [0.2, 0.1, 0.7]],
    ],
    dtype="float32",
)


def weighted_mean(p: np.ndarray, weights: list[float] | None = None) -> np.ndarray:
    return np.average(p, axis=1, weights=weights)


def hard_votes(p: np.ndarray, weights: list[float] | None = None) -> np.ndarray:
    votes = np.eye(p.shape[-1])[np.argmax(p, axis=-1)]
    return weighted_mean(votes, weights)


def geometric_mean(p: np.ndarray) -> np.ndarray:
    logits = np.log(np.clip(p, 1e-7, 1.0)).mean(axis=1)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


REFERENCE_CASES = [
    pytest.param(
        MeanCombiner,
        CLASSIFICATION,
        (PROBABILITIES,),
        weighted_mean(PROBABILITIES),
        id="mean-uniform",
    ),
    pytest.param(
        lambda: MeanCombiner(weights=[1, 2, 3]),
        REGRESSION,
        (TARGET_PREDICTIONS,),
        weighted_mean(TARGET_PREDICTIONS, [1, 2, 3]),
        id="mean-weighted",
    ),
    pytest.param(
        lambda: VoteCombiner(voting="soft", weights=[0.5, 0.0, 2.0]),
        CLASSIFICATION,
        (PROBABILITIES,),
        weighted_mean(PROBABILITIES, [0.5, 0.0, 2.0]),
        id="soft-vote-weighted",
    ),
    pytest.param(
        lambda: VoteCombiner(weights=[1, 2, 3]),
        CLASSIFICATION,
        (PROBABILITIES,),
        hard_votes(PROBABILITIES, [1, 2, 3]),
        id="hard-vote-weighted",
    ),
    pytest.param(
        VoteCombiner,
        CLASSIFICATION,
        (TIED_PROBABILITIES,),
        np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]]),
        id="hard-vote-ties",
    ),
    pytest.param(
        StackingCombiner,
        CLASSIFICATION,
        (PROBABILITIES,),
        geometric_mean(PROBABILITIES),
        id="stack-init-geometric-mean",
    ),
    pytest.param(
        StackingCombiner,
        REGRESSION,
        (TARGET_PREDICTIONS,),
        weighted_mean(TARGET_PREDICTIONS),
        id="stack-init-mean",
    ),
    pytest.param(
        lambda: StackingCombiner(passthrough=True),
        CLASSIFICATION,
        (PROBABILITIES, RAW_FEATURES),
        geometric_mean(PROBABILITIES),
        id="stack-passthrough-init",
    ),
    pytest.param(
        lambda: StackingCombiner(passthrough=True),
        REGRESSION,
        (TARGET_PREDICTIONS, RAW_FEATURES),
        weighted_mean(TARGET_PREDICTIONS),
        id="stack-passthrough-regression-init",
    ),
]


@pytest.mark.parametrize("factory, task, inputs, expected", REFERENCE_CASES)
def test_matches_numpy_reference(
    factory: Callable[[], Combiner],
    task: str,
    inputs: tuple[np.ndarray, ...],
    expected: np.ndarray,
) -> None:
    combiner = factory()
    combiner.configure(task)
    output = keras.ops.convert_to_numpy(combiner(*inputs))
    assert output.dtype == np.float32
    np.testing.assert_allclose(output, expected, atol=1e-6)


def test_hard_vote_shares_sum_to_one() -> None:
    shares = VoteCombiner(weights=[3, 1, 1], task=CLASSIFICATION)(PROBABILITIES)
    np.testing.assert_allclose(keras.ops.sum(shares, axis=-1), 1.0, atol=1e-6)


ERROR_CASES = [
    pytest.param(
        lambda: MeanCombiner(weights=[1, 2])(PROBABILITIES),
        r"Expected 3 weights, one per member. Received: weights=\[1.0, 2.0\]",
        id="weight-count",
    ),
    pytest.param(
        lambda: MeanCombiner(weights=[1, -1, 1]),
        r"Expected non-negative weights. Received: weights=\[1.0, -1.0, 1.0\]",
        id="negative-weight",
    ),
    pytest.param(
        lambda: VoteCombiner(weights=[0, 0, 0]),
        "all weights are zero",
        id="all-zero-weights",
    ),
    pytest.param(
        lambda: MeanCombiner(weights=[1, float("nan"), 1]),
        "Expected finite weights",
        id="nan-weight",
    ),
    pytest.param(
        lambda: MeanCombiner(weights=["a", 1, 1]),
        "Expected weights to be a list of numbers",
        id="non-numeric-weight",
    ),
    pytest.param(
        lambda: VoteCombiner(voting="majority"),
        r"Expected voting to be one of \('hard', 'soft'\). "
        r"Received: voting='majority'",
        id="bad-voting",
    ),
    pytest.param(
        lambda: VoteCombiner().configure(REGRESSION),
        r"VoteCombiner\(voting='hard'\) cannot combine a regression task: "
        "hard voting needs class probabilities",
        id="hard-vote-regression",
    ),
    pytest.param(
        lambda: VoteCombiner(voting="soft", task=REGRESSION),
        "soft voting needs class probabilities",
        id="soft-vote-regression",
    ),
    pytest.param(
        lambda: MeanCombiner(task="ranking"),
        "Received: task='ranking'",
        id="unknown-task",
    ),
    pytest.param(
        lambda: MeanCombiner(task=CLASSIFICATION).configure(REGRESSION),
        "already configured for a classification task",
        id="task-conflict",
    ),
    pytest.param(
        lambda: StackingCombiner()(PROBABILITIES),
        r"call `configure\(task\)` or pass `task=`",
        id="stack-without-task",
    ),
    pytest.param(
        lambda: StackingCombiner(passthrough=True, task=CLASSIFICATION)(PROBABILITIES),
        "needs the raw features",
        id="passthrough-without-features",
    ),
    pytest.param(
        lambda: MeanCombiner()(PROBABILITIES[:, 0]),
        r"Received: member_predictions_shape=\(8, 4\)",
        id="wrong-rank",
    ),
]


@pytest.mark.parametrize("action, match", ERROR_CASES)
def test_errors(action: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        action()


def small_meta_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.layers.Dense(6, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )


# (factory, task, passthrough): every combiner, as the ensemble builder uses it.
SERIALIZATION_CASES = [
    pytest.param(lambda: MeanCombiner(weights=(1, 2, 3)), CLASSIFICATION, False, id="mean"),
    pytest.param(
        lambda: VoteCombiner(weights=[2, 1, 1]),
        CLASSIFICATION,
        False,
        id="hard-vote",
    ),
    pytest.param(lambda: VoteCombiner(voting="soft"), CLASSIFICATION, False, id="soft-vote"),
    pytest.param(StackingCombiner, CLASSIFICATION, False, id="stack"),
    pytest.param(StackingCombiner, REGRESSION, False, id="stack-regression"),
    pytest.param(
        lambda: StackingCombiner(passthrough=True),
        CLASSIFICATION,
        True,
        id="stack-passthrough",
    ),
    pytest.param(
        lambda: StackingCombiner(meta_model=small_meta_model()),
        CLASSIFICATION,
        False,
        id="stack-custom-meta-model",
    ),
]


def inputs_for(task: str, passthrough: bool) -> list[np.ndarray]:
    predictions = PROBABILITIES if task == CLASSIFICATION else TARGET_PREDICTIONS
    return [predictions, RAW_FEATURES] if passthrough else [predictions]


def perturb_weights(layer: keras.layers.Layer) -> None:
    """Moves trained state off its initial values, so reloads must restore it."""
    rng = np.random.default_rng(3)
    for variable in layer.weights:
        variable.assign(variable + rng.normal(scale=0.1, size=variable.shape))


@pytest.mark.parametrize("factory, task, passthrough", SERIALIZATION_CASES)
def test_config_round_trip(factory: Callable[[], Combiner], task: str, passthrough: bool) -> None:
    inputs = inputs_for(task, passthrough)
    combiner = factory()
    combiner.configure(task)
    combiner(*inputs)
    perturb_weights(combiner)

    config = combiner.get_config()
    json.dumps(config)  # plain Python values only
    assert config["task"] == task
    clone = type(combiner).from_config(config)
    clone(*inputs)
    clone.set_weights(combiner.get_weights())
    np.testing.assert_allclose(clone(*inputs), combiner(*inputs), atol=1e-6)


@pytest.mark.parametrize("factory, task, passthrough", SERIALIZATION_CASES)
def test_keras_file_round_trip(
    factory: Callable[[], Combiner], task: str, passthrough: bool, tmp_path
) -> None:
    inputs = inputs_for(task, passthrough)
    combiner = factory()
    combiner.configure(task)
    symbolic = [keras.Input(x.shape[1:]) for x in inputs]
    model = keras.Model(symbolic, combiner(*symbolic))
    perturb_weights(model)

    path = tmp_path / "combiner.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        reloaded.predict(inputs, verbose=0),
        model.predict(inputs, verbose=0),
        atol=1e-6,
    )
    # Another batch size than the one saved with.
    half = [x[: BATCH // 2] for x in inputs]
    np.testing.assert_allclose(reloaded(half), model(half), atol=1e-6)


@pytest.mark.parametrize(
    "weights",
    [[1, 2, 3], (1, 2, 3), np.array([1, 2, 3]), omegaconf.ListConfig([1, 2, 3])],
    ids=["list", "tuple", "numpy", "listconfig"],
)
def test_weights_become_plain_floats(weights: object) -> None:
    combiner = MeanCombiner(weights=weights)
    assert combiner.member_weights == [1.0, 2.0, 3.0]
    stored = combiner.get_config()["weights"]
    assert type(stored) is list and all(type(w) is float for w in stored)
    assert json.dumps(stored) == "[1.0, 2.0, 3.0]"


def test_stacking_trains_only_its_meta_model() -> None:
    combiner = StackingCombiner(task=CLASSIFICATION)
    combiner(PROBABILITIES)
    meta_variables = combiner.meta_model_.trainable_weights
    assert [v.shape for v in combiner.trainable_weights] == [
        (MEMBERS * CLASSES, CLASSES),
        (CLASSES,),
    ]
    assert {id(v) for v in combiner.trainable_weights} == {id(v) for v in meta_variables}
    assert MeanCombiner(task=CLASSIFICATION).trainable_weights == []
