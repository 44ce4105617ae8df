"""Bad input: each case raises a clear error that names the member, field or path."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import combiners
import ensemble
from tests.conftest import dense_classifier
from tests.legacy_formats import DenseNet, write_tf1_checkpoint, write_tf1_saved_model


@pytest.fixture
def files(tmp_path):
    """A valid .keras file, a truncated one, random bytes as .h5, and an unknown file."""
    good = tmp_path / "good.keras"
    dense_classifier(1).save(good)
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    noise = tmp_path / "noise.h5"
    noise.write_bytes(np.random.default_rng(0).bytes(2048))
    unknown = tmp_path / "weights.txt"
    unknown.write_text("not a model")
    multi = write_tf1_saved_model(
        tmp_path / "multi", DenseNet.random(sizes=(8, 3)), output_keys=("probabilities", "logits")
    )
    ckpt = write_tf1_checkpoint(tmp_path / "ckpt" / "m.ckpt", DenseNet.random(sizes=(8, 4, 3)), scope="net")
    return {
        "good": good,
        "truncated": truncated,
        "noise": noise,
        "unknown": unknown,
        "multi": multi,
        "ckpt": ckpt,
        "missing": tmp_path / "nowhere.keras",
        "dir": tmp_path,
    }


LOAD_ERRORS = [
    ("missing", {}, r"Member 'm': source '.*nowhere\.keras' does not exist"),
    ("truncated", {}, r"Member 'm': cannot load 'keras' source '.*truncated\.keras'"),
    ("noise", {}, r"Member 'm': cannot load 'h5' source '.*noise\.h5'"),
    ("unknown", {}, r"Member 'm': cannot tell the format of '.*weights\.txt'"),
    ("good", {"format": "onnx"}, r"Member 'm': expected format 'auto' or one of"),
    ("multi", {}, r"Member 'm': .*has 2 outputs \['logits', 'probabilities'\]; choose one"),
    ("multi", {"output_key": "classes"}, r"Member 'm': .*no output 'classes'.*\['logits', 'probabilities'\]"),
    (
        "multi",
        {"signature": "predict"},
        r"Member 'm': .*no signature 'predict'. Available signatures: \['serving_default'\]",
    ),
    ("good", {"tags": ["serve"]}, r"Member 'm': option\(s\) \['tags'\] do not apply to a 'keras' source"),
    ("good", {"output": "scores"}, r"Member 'm': expected output in \('probabilities', 'logits'\)"),
    ("good", {"inputs": ["a", "b"]}, r"Member 'm': expected 1 input name\(s\), one per model input"),
    ("ckpt", {}, r"Member 'm': .*pass architecture="),
    (
        "ckpt",
        {"architecture": "tests.test_errors.wrong_architecture", "scope": "net", "safe_mode": False},
        r"Member 'm': .*no variable 'net/dense_\d+/kernel' for weight 'dense_\d+/kernel' .*"
        r"Its variables under 'net': \['net/dense_0/bias', 'net/dense_0/kernel'",
    ),
    (
        "ckpt",
        {"architecture": "tests.test_errors.wrong_shapes", "scope": "net", "safe_mode": False},
        r"Member 'm': .*'net/dense_0/kernel' .* has shape \(8, 4\), but weight 'dense_0/kernel' .* expects \(8, 5\)",
    ),
]


def wrong_architecture() -> keras.Model:
    """Layer names the checkpoint does not have."""
    return dense_classifier(0, classes=3)


def wrong_shapes() -> keras.Model:
    return DenseNet.random(sizes=(8, 5, 3)).to_keras()


@pytest.mark.parametrize(
    "source, options, match", LOAD_ERRORS, ids=[f"{s}-{'-'.join(o) or 'default'}" for s, o, _ in LOAD_ERRORS]
)
def test_load_errors(files, source, options, match):
    with pytest.raises(ensemble.MemberError, match=match):
        ensemble.load_member(files[source], name="m", **options)


def test_member_names_are_checked():
    with pytest.raises(ensemble.MemberError, match=r"expected a member name: a non-empty string without '/'"):
        ensemble.load_member(dense_classifier(1), name="a/b")


def _members(*specs):
    return [ensemble.load_member(dense_classifier(seed, **kw), name=name) for name, seed, kw in specs]


BUILD_ERRORS = [
    (
        lambda: (_members(("a", 1, {}), ("b", 2, {"classes": 4})), combiners.MeanCombiner()),
        ensemble.EnsembleError,
        r"Members' outputs differ in width: \{'a': 3, 'b': 4\}",
    ),
    (
        lambda: (_members(("a", 1, {}), ("b", 2, {"features": 5})), combiners.MeanCombiner()),
        ensemble.EnsembleError,
        r"Members 'a' and 'b' both read input 'features' but expect float32\[8\] and float32\[5\]",
    ),
    (
        lambda: (_members(("a", 1, {}), ("a", 2, {})), combiners.MeanCombiner()),
        ensemble.EnsembleError,
        r"Member names must be unique. Repeated: \['a'\]",
    ),
    (
        lambda: (_members(("std", 1, {})), combiners.MeanCombiner()),
        ensemble.EnsembleError,
        r"Member name\(s\) \['std'\] are reserved",
    ),
    (
        lambda: (_members(("a", 1, {}), ("b", 2, {})), combiners.MeanCombiner(weights=[1, 2, 3])),
        ValueError,
        r"Expected 2 weights, one per member. Received: weights=\[1.0, 2.0, 3.0\]",
    ),
    (lambda: ([], combiners.MeanCombiner()), ensemble.EnsembleError, "at least one member"),
    (
        lambda: (_members(("features", 1, {})), combiners.MeanCombiner()),
        ensemble.EnsembleError,
        r"Member 'features' has the name of an input of the ensemble",
    ),
    (
        lambda: (_members(("a", 1, {})), "mean"),
        ensemble.EnsembleError,
        "Expected combiner to be a combiners.Combiner",
    ),
]


@pytest.mark.parametrize(
    "make, error, match",
    BUILD_ERRORS,
    ids=[
        "widths",
        "inputs",
        "duplicate-names",
        "reserved-name",
        "weight-count",
        "no-members",
        "input-name",
        "not-a-combiner",
    ],
)
def test_build_errors(make, error, match):
    members, combiner = make()
    with pytest.raises(error, match=match):
        ensemble.build_ensemble(members, combiner)


@pytest.mark.parametrize(
    "weights, match",
    [([1, -1], "negative"), ([0, 0], "all weights are zero"), ([1, float("nan")], "finite")],
    ids=["negative", "all-zero", "nan"],
)
def test_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        combiners.MeanCombiner(weights=weights)


def test_hard_voting_on_regression():
    members = _members(("a", 1, {"final": None}), ("b", 2, {"final": None}))
    with pytest.raises(ValueError, match="cannot combine a regression task"):
        ensemble.build_ensemble(members, combiners.VoteCombiner(voting="hard"), task="regression")


def test_regression_task_contradicting_a_classifier():
    with pytest.raises(
        ensemble.EnsembleError, match=r"task='regression', but member\(s\) \['a'\] declare class outputs"
    ):
        ensemble.build_ensemble(_members(("a", 1, {})), combiners.MeanCombiner(), task="regression")


def test_a_member_listed_under_another_name():
    with pytest.raises(ensemble.EnsembleError, match=r"Member 'a' is listed under the name 'b'"):
        ensemble.build_ensemble({"b": _members(("a", 1, {}))[0]}, combiners.MeanCombiner())


@pytest.mark.slow
def test_non_tensorflow_backend_is_a_clear_error():
    env = {**os.environ, "KERAS_BACKEND": "numpy", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", "import ensemble"],
        env=env,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        timeout=120,
    )
    assert done.returncode != 0
    assert (
        "needs the TensorFlow backend of Keras; the configured backend is 'numpy' (from KERAS_BACKEND)"
        in done.stderr
    )


def test_a_tf1_input_of_unknown_rank_is_named(tmp_path):
    import tensorflow as tf

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.float32, name="x")  # no shape at all
        y = tf.nn.softmax(x)
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(str(tmp_path / "norank"))
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"p": y})
        builder.add_meta_graph_and_variables(
            session, ["serve"], signature_def_map={"serving_default": signature}
        )
        builder.save()
    with pytest.raises(ensemble.MemberError, match=r"Member 'm': .*(known rank|unknown rank)"):
        ensemble.load_member(tmp_path / "norank", name="m")
