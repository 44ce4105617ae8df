"""A row holding a NaN or infinity is NaN in every output, on every path (eager, predict,
compiled, SavedModel export, registry, TFLite); the other rows are the members' own answer;
a batch of no rows gives empty outputs everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import combiners
import ensemble
from tests.conftest import FEATURES, dense_classifier

ROWS = 6
BAD = {1: np.nan, 4: np.inf}  # row: the value put in its feature 2


def relu_classifier(seed: int):
    """A relu hidden layer: its fused matmul+relu kernel maps NaN to a finite value."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def make(combiner):
    members = [ensemble.load_member(relu_classifier(s), name=f"relu{s}") for s in range(2)]
    members.append(ensemble.load_member(dense_classifier(5), name="tanh"))
    return ensemble.build_ensemble(members, combiner)


@pytest.fixture(scope="module")
def rows():
    x = np.random.default_rng(0).normal(size=(ROWS, FEATURES)).astype("float32")
    clean = x.copy()
    for row, value in BAD.items():
        x[row, 2] = value
    return x, clean


def check(outputs, reference):
    """NaN on the bad rows in every output; the reference's values on the others."""
    good = [r for r in range(ROWS) if r not in BAD]
    for key, value in outputs.items():
        value = np.asarray(value)
        assert np.isnan(value[list(BAD)]).all(), f"{key}: a non-finite row got a finite answer"
        np.testing.assert_allclose(value[good], np.asarray(reference[key])[good], atol=1e-5, err_msg=key)


COMBINERS = {
    "mean": lambda: combiners.MeanCombiner(weights=[1, 2, 1]),
    "hard": lambda: combiners.VoteCombiner(voting="hard"),
    "soft": lambda: combiners.VoteCombiner(voting="soft"),
}


@pytest.mark.parametrize("kind", sorted(COMBINERS))
def test_in_memory_paths(kind, rows):
    x, clean = rows
    model = make(COMBINERS[kind]())
    reference = model(clean)
    check(model(x), reference)
    check(model.predict(x, verbose=0), reference)
    check(ensemble.compiled_predict(model)(x), reference)


@pytest.mark.parametrize("kind", sorted(COMBINERS))
@pytest.mark.slow
def test_empty_batches(kind, rows, tmp_path):
    x, _ = rows
    model = make(COMBINERS[kind]())
    full = model.predict(x, verbose=0)
    calls = (
        model(x[:0]),
        model.predict(x[:0], verbose=0),
        model.predict(tf.constant(x[:0]), verbose=0),
        ensemble.compiled_predict(model)(x[:0]),
    )
    for outputs in calls:
        assert set(outputs) == set(full)
        for key, value in outputs.items():
            assert np.shape(value) == (0, *np.shape(full[key])[1:]), key


def test_regression_rows(rows):
    import keras

    x, clean = rows
    keras.utils.set_random_seed(3)
    regressors = [
        keras.Sequential(
            [keras.Input((FEATURES,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)]
        )
        for _ in range(2)
    ]
    members = [ensemble.load_member(m, name=f"r{i}") for i, m in enumerate(regressors)]
    model = ensemble.build_ensemble(members, combiners.MeanCombiner(), task="regression")
    check(model.predict(x, verbose=0), model(clean))
    assert model(x[:0])["std"].shape == (0, 2)


def test_stacking_with_passthrough(rows):
    x, clean = rows
    model = make(combiners.StackingCombiner(passthrough=True))
    fit_x = np.random.default_rng(1).normal(size=(90, FEATURES)).astype("float32")
    ensemble.fit(model, fit_x, np.arange(90) % 3)
    check(model.predict(x, verbose=0), model(clean))
    assert model.predict(x[:0], verbose=0)["prediction"].shape == (0, 3)


@pytest.mark.slow
def test_export_registry_and_tflite(rows, tmp_path):
    x, clean = rows
    model = make(combiners.VoteCombiner(voting="hard"))
    reference = model(clean)
    path = tmp_path / "export"
    ensemble.export_saved_model(model, path)
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    check(serve(tf.constant(x)), reference)
    assert serve(tf.constant(x[:0]))["prediction"].shape == (0, 3)
    registry = ensemble.ModelRegistry()
    registry.register("ensemble", path)
    check(registry.predict("ensemble", x), reference)
    assert np.shape(registry.predict("ensemble", x[:0])["prediction"]) == (0, 3)
    tflite = ensemble.export_tflite(model, tmp_path / "model.tflite", quantize="none")
    outputs = ensemble.run_tflite(tflite, {"features": x})
    good = [r for r in range(ROWS) if r not in BAD]
    assert np.isnan(np.asarray(outputs["prediction"])[list(BAD)]).all()
    np.testing.assert_allclose(
        np.asarray(outputs["prediction"])[good], np.asarray(reference["prediction"])[good], atol=1e-5
    )
    empty = ensemble.run_tflite(tflite, {"features": x[:0]})
    assert empty["prediction"].shape == (0, 3) and empty["entropy"].shape == (0,)
