"""Invariant 1: inside the ensemble each member equals itself loaded alone in a fresh process,
whatever else is loaded and in whatever order, though names collide everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import combiners
import ensemble
from tests.legacy_formats import DenseNet, write_tf1_saved_model
from tests.reference import predict_in_fresh_process

pytestmark = pytest.mark.slow

# One process trains every member as a separate run would: `clear_session` resets Keras's
# name counters, so every run names its model `sequential` and its layers `dense`, `dense_1`
# (asserted there), exactly as separate training runs would; one interpreter instead of one each.
_TRAIN_RUN = textwrap.dedent(
    """
    import sys, keras
    for seed, stem in zip(sys.argv[1::2], sys.argv[2::2]):
        keras.backend.clear_session()
        keras.utils.set_random_seed(int(seed))
        model = keras.Sequential([
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ])
        assert model.name == "sequential", model.name
        assert [layer.name for layer in model.layers] == ["dense", "dense_1"], model.layers
        model.save(stem + ".keras")
        model.save(stem + ".h5")
    """
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    arguments = [str(a) for seed, run in ((1, "run_a"), (2, "run_b")) for a in (seed, root / run)]
    subprocess.run(
        [sys.executable, "-c", _TRAIN_RUN, *arguments],
        check=True,
        env=env,
        cwd=root,
        capture_output=True,
        timeout=300,
    )
    for seed, run in ((3, "tf1_a"), (4, "tf1_b")):  # the same TF1 scope and variable names
        write_tf1_saved_model(root / run, DenseNet.random(sizes=(8, 16, 3), seed=seed), scope="model")
    return root


SOURCES = {
    "a_keras": ("run_a.keras", "keras"),
    "b_keras": ("run_b.keras", "keras"),
    "a_h5": ("run_a.h5", "keras"),
    "b_h5": ("run_b.h5", "keras"),
    "tf1_a": ("tf1_a", "saved_model"),
    "tf1_b": ("tf1_b", "saved_model"),
}


@pytest.fixture(scope="module")
def alone(runs):
    """Each source's prediction from a fresh process that loads it alone with plain TF/Keras."""
    x = np.random.default_rng(0).normal(size=(5, 8)).astype("float32")
    return x, {
        name: predict_in_fresh_process(kind, runs / filename, x) for name, (filename, kind) in SOURCES.items()
    }


@pytest.mark.parametrize(
    "order",
    [
        ["a_keras", "b_keras"],
        ["b_keras", "a_keras"],
        ["a_h5", "b_keras", "tf1_a", "tf1_b"],
        ["tf1_b", "tf1_a", "b_h5", "a_keras"],
    ],
    ids=["keras", "keras-reversed", "mixed", "mixed-reversed"],
)
def test_members_equal_themselves_loaded_alone(runs, alone, order):
    x, expected = alone
    members = [ensemble.load_member(runs / SOURCES[name][0], name=name) for name in order]
    model = ensemble.build_ensemble(members, combiners.MeanCombiner(), task="classification")
    out = np.asarray(model(x)["member_predictions"])
    for i, name in enumerate(order):
        np.testing.assert_allclose(out[:, i], expected[name], atol=1e-6, err_msg=name)


def test_names_really_collide(runs):
    a = ensemble.load_member(runs / "run_a.keras", name="a")
    b = ensemble.load_member(runs / "run_b.keras", name="b")
    assert a.model.name == b.model.name == "sequential"
    assert [w.path for w in a.model.weights] == [w.path for w in b.model.weights]
    assert not np.allclose(a.model.weights[0].numpy(), b.model.weights[0].numpy())
