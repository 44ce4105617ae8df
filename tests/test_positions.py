"""Members that predict per position (batch, positions, classes) are declared with every axis,
combined position by position by the mean and the vote, and refused by stacking at build."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import combiners
import ensemble

POSITIONS, FEATURES, CLASSES = 5, 4, 3


def token_classifier(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((POSITIONS, FEATURES))
    return keras.Model(
        inputs,
        keras.layers.Dense(CLASSES, activation="softmax")(keras.layers.Dense(8, activation="tanh")(inputs)),
    )


@pytest.fixture(scope="module")
def sources():
    return [token_classifier(s) for s in range(3)]


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(6, POSITIONS, FEATURES)).astype("float32")


def members(sources):
    return [ensemble.load_member(m, name=f"tok{i}") for i, m in enumerate(sources)]


def test_member_declares_every_axis(sources):
    member = ensemble.load_member(sources[0], name="tok")
    spec = member.compute_output_spec(keras.KerasTensor((None, POSITIONS, FEATURES)))
    assert tuple(spec.shape) == (None, POSITIONS, CLASSES)


def test_mean_combines_position_by_position(sources, x):
    model = ensemble.build_ensemble(members(sources), combiners.MeanCombiner(weights=[1, 2, 1]))
    own = np.stack([np.asarray(m(x)) for m in sources], axis=1)  # (batch, members, positions, classes)
    outputs = model.predict(x, verbose=0)
    expected = (own * np.array([1, 2, 1])[None, :, None, None]).sum(1) / 4
    np.testing.assert_allclose(outputs["prediction"], expected, atol=1e-6)
    np.testing.assert_allclose(outputs["member_predictions"], own, atol=1e-6)
    p = outputs["prediction"]
    np.testing.assert_allclose(outputs["entropy"], -(p * np.log(np.clip(p, 1e-7, 1))).sum(-1), atol=1e-5)
    assert outputs["disagreement"].shape == outputs["mutual_information"].shape == (6, POSITIONS)


def test_hard_vote_per_position(sources, x):
    model = ensemble.build_ensemble(members(sources), combiners.VoteCombiner(voting="hard"))
    votes = np.stack([np.asarray(m(x)).argmax(-1) for m in sources], axis=1)  # (batch, members, positions)
    shares = np.stack([(votes == k).mean(1) for k in range(CLASSES)], axis=-1)
    np.testing.assert_allclose(model(x)["prediction"], shares, atol=1e-6)


def test_stacking_is_refused_at_build_and_fitting_is_refused(sources, x):
    with pytest.raises(
        ensemble.EnsembleError,
        match=r"StackingCombiner .*per position, shape \(batch, 5, width\).*MeanCombiner",
    ):
        ensemble.build_ensemble(members(sources), combiners.StackingCombiner())
    model = ensemble.build_ensemble(members(sources), combiners.MeanCombiner())
    with pytest.raises(ensemble.EnsembleError, match=r"predict per position.*fixed weights"):
        ensemble.fit(model, x, np.zeros(len(x), "int64"), method="optimal")


def test_members_of_different_position_counts_are_refused(sources):
    keras.utils.set_random_seed(9)
    inputs = keras.Input((POSITIONS, FEATURES))
    pooled = keras.Model(
        inputs, keras.layers.Dense(CLASSES, activation="softmax")(keras.layers.Flatten()(inputs))
    )
    mixed = [*members(sources[:1]), ensemble.load_member(pooled, name="pooled")]
    with pytest.raises(ensemble.EnsembleError, match=r"differ in shape"):
        ensemble.build_ensemble(mixed, combiners.MeanCombiner())


@pytest.mark.slow
def test_export_keeps_the_positions(sources, x, tmp_path):
    model = ensemble.build_ensemble(members(sources), combiners.MeanCombiner())
    path = ensemble.export_saved_model(model, tmp_path / "export")
    served = tf.saved_model.load(str(path)).signatures["serving_default"](tf.constant(x))
    np.testing.assert_allclose(served["prediction"], model(x)["prediction"], atol=1e-6)
    assert served["entropy"].shape == (6, POSITIONS)
