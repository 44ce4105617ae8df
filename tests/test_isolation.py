"""Invariant 1: inside the ensemble each member equals itself loaded alone in a fresh process,
whatever else is loaded and in whatever order, though names collide everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import combiners
import ensemble
from tests import reference
from tests.legacy_formats import DenseNet, write_tf1_saved_model

pytestmark = pytest.mark.slow

SOURCES = {
    "a_keras": ("run_a.keras", "keras"),
    "b_keras": ("run_b.keras", "keras"),
    "a_h5": ("run_a.h5", "keras"),
    "b_h5": ("run_b.h5", "keras"),
    "tf1_a": ("tf1_a", "saved_model"),
    "tf1_b": ("tf1_b", "saved_model"),
}

# One child process imports TensorFlow and Keras once (and never this project: cwd is the runs
# directory, no PYTHONPATH) and then forks, as `tests/fault_worker.py` does, one grandchild per
# job; nothing runs in the parent between the import and the forks, so each grandchild starts
# from the state a fresh interpreter has after `import tensorflow`, at a seventh of the cost.
# The first grandchild trains every member as a separate run would: `clear_session` resets
# Keras's name counters, so every run names its model `sequential` and its layers `dense`,
# `dense_1` (asserted there), exactly as separate training runs would. Then one grandchild per
# source loads that source ALONE with the code of `tests.reference.predict_in_fresh_process`
# (its `_SCRIPT`, run as written) and saves its prediction: the independent reference.
_CHILD = textwrap.dedent(
    """
    import json, os, sys, traceback
    import keras, numpy as np, tensorflow as tf

    def train(runs):
        for seed, stem in runs:
            keras.backend.clear_session()
            keras.utils.set_random_seed(seed)
            model = keras.Sequential([
                keras.Input((8,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(3, activation="softmax"),
            ])
            assert model.name == "sequential", model.name
            assert [layer.name for layer in model.layers] == ["dense", "dense_1"], model.layers
            model.save(stem + ".keras")
            model.save(stem + ".h5")

    def alone(script, kind, path, out):
        os.makedirs(out)
        os.chdir(out)
        np.save("x.npy", np.load(os.path.join(root, "x.npy")))
        sys.argv = ["-c", kind, path, "{}"]
        exec(compile(script, "<reference>", "exec"), {"__name__": "__main__"})

    def forked(job, *args):
        pid = os.fork()
        if pid == 0:
            try:
                job(*args)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{job.__name__}{args[1:]} failed")

    root, script, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    forked(train, plan["train"])
    for name, (kind, path) in plan["sources"].items():
        forked(alone, script, kind, path, os.path.join(root, "alone", name))
    """
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed, run in ((3, "tf1_a"), (4, "tf1_b")):  # the same TF1 scope and variable names
        write_tf1_saved_model(root / run, DenseNet.random(sizes=(8, 16, 3), seed=seed), scope="model")
    np.save(root / "x.npy", np.random.default_rng(0).normal(size=(5, 8)).astype("float32"))
    plan = {
        "train": [[1, str(root / "run_a")], [2, str(root / "run_b")]],
        "sources": {name: [kind, str(root / filename)] for name, (filename, kind) in SOURCES.items()},
    }
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), reference._SCRIPT, json.dumps(plan)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def alone(runs):
    """Each source's prediction from a process that loaded it alone with plain TF/Keras."""
    return np.load(runs / "x.npy"), {name: np.load(runs / "alone" / name / "y.npy") for name in SOURCES}


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
