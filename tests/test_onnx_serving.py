"""export_onnx, what onnxruntime answers: the ensemble's outputs (NaN where it has NaN), for
every combiner, task, conformal output, member format, input layout and batch size."""

from __future__ import annotations

import os

import keras
import numpy as np
import onnx
import pytest

import combiners
import ensemble
from ensemble.export import read_onnx_manifest, run_onnx
from tests.conftest import CLASSES, FEATURES, dense_classifier, two_input_ensemble
from tests.legacy_formats import (
    DenseNet,
    write_tf1_checkpoint,
    write_tf1_saved_model,
    write_tf2_checkpoint,
    write_tf2_module_saved_model,
)

ATOL = 1e-5


def rows(n: int, seed: int = 0, features: int = FEATURES) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, features)).astype("float32")


def assert_serves_like(model: keras.Model, path: str, feeds: dict[str, np.ndarray]) -> None:
    """onnxruntime's answer for every output equals the Keras model's (NaN where it has NaN).
    The model is called on the rows, the forward pass `predict` runs, without tracing a predict
    function for every model (a third of a second each)."""
    served = run_onnx(path, feeds, batch_size=5)  # several chunks: the batch is dynamic
    expected = {key: np.asarray(value) for key, value in model(feeds).items()}
    assert sorted(served) == sorted(expected)
    for key, want in expected.items():
        assert served[key].dtype == want.dtype and served[key].shape == want.shape, key
        if want.dtype == bool:
            np.testing.assert_array_equal(served[key], want, err_msg=key)
        else:
            np.testing.assert_allclose(served[key], want, atol=ATOL, rtol=ATOL, err_msg=key)


def with_bad_rows(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[1, 0], x[4, -1] = np.nan, -np.inf
    return x


@pytest.fixture(scope="module")
def classification_rows(tmp_path_factory):
    """Three .keras members with recorded training rows, and rows none of them trained on."""
    root = tmp_path_factory.mktemp("onnx_members")
    paths = []
    for seed in range(3):
        path = root / f"m{seed}.keras"
        dense_classifier(seed).save(path)
        ensemble.record_training_rows(path, rows(40, seed=10 + seed))
        paths.append(path)
    x_hold = rows(60, seed=1)
    # Labels the members mostly agree with (a temperature fits), a fifth of them changed.
    mean = np.mean([dense_classifier(seed).predict(x_hold, verbose=0) for seed in range(3)], axis=0)
    rng = np.random.default_rng(2)
    y_hold = np.where(rng.random(60) < 0.2, rng.integers(0, CLASSES, size=60), mean.argmax(-1))
    return paths, x_hold, y_hold


def _members(paths):
    return [ensemble.load_member(p, name=p.stem) for p in paths]


def _stacker_head() -> keras.Model:
    inputs = keras.Input((3 * CLASSES,))
    return keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(inputs))


# (combiner, fit options or None for no fit)
CLASSIFIERS = {
    "mean": (lambda: combiners.MeanCombiner(), None),
    "mean_weights": (lambda: combiners.MeanCombiner(weights=[0.2, 0.5, 0.3]), None),
    "vote_hard": (lambda: combiners.VoteCombiner("hard"), None),
    "vote_hard_weights": (lambda: combiners.VoteCombiner("hard", weights=[1.0, 2.0, 0.5]), None),
    "vote_soft": (lambda: combiners.VoteCombiner("soft"), None),
    "vote_soft_weights": (lambda: combiners.VoteCombiner("soft", weights=[3.0, 1.0, 1.0]), None),
    "stack_sklearn": (lambda: combiners.StackingCombiner(), {}),
    "stack_passthrough": (lambda: combiners.StackingCombiner(passthrough=True), {}),
    "stack_keras": (lambda: combiners.StackingCombiner(), {"method": "keras", "epochs": 3}),
    "stack_meta_model": (
        lambda: combiners.StackingCombiner(meta_model=_stacker_head()),
        {"method": "keras", "epochs": 3},
    ),
    "select": (lambda: combiners.MeanCombiner(), {"method": "selection"}),
    "weighted": (lambda: combiners.MeanCombiner(), {"method": "optimal"}),
    "temperature": (lambda: combiners.MeanCombiner(), {"calibration": "temperature"}),
    "weighted_temperature": (
        lambda: combiners.MeanCombiner(),
        {"method": "optimal", "calibration": "temperature"},
    ),
}


@pytest.mark.parametrize("case", list(CLASSIFIERS), ids=list(CLASSIFIERS))
@pytest.mark.slow
def test_every_classification_combiner_serves_like_keras(case, classification_rows, tmp_path):
    paths, x_hold, y_hold = classification_rows
    combiner, fit = CLASSIFIERS[case]
    model = ensemble.build_ensemble(_members(paths), combiner())
    if fit is not None:
        report = ensemble.fit(model, x_hold, y_hold, **fit)
        assert report.rows == len(x_hold)
    path = ensemble.export_onnx(model, tmp_path / "model.onnx")
    assert path == os.fspath(tmp_path / "model.onnx")
    assert_serves_like(model, path, {"features": with_bad_rows(rows(12, seed=5))})


def test_a_calibrated_ensemble_refuses_its_members_training_rows_and_serves(classification_rows, tmp_path):
    paths, x_hold, y_hold = classification_rows
    model = ensemble.build_ensemble(_members(paths), combiners.MeanCombiner())
    with pytest.raises(ensemble.EnsembleError):  # the guard: rows m0 trained on
        ensemble.fit(model, rows(40, seed=10), y_hold[:40], calibration="temperature")
    report = ensemble.fit(model, x_hold, y_hold, calibration="temperature")
    assert report.calibration["temperature"] != 1.0
    assert_serves_like(model, ensemble.export_onnx(model, tmp_path / "t.onnx"), {"features": rows(9, 3)})


def _regressors(count: int = 3, features: int = 2) -> list[ensemble.Member]:
    members = []
    for seed in range(count):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((features,))
        hidden = keras.layers.Dense(8, activation="tanh")(inputs)
        members.append(
            ensemble.load_member(keras.Model(inputs, keras.layers.Dense(1)(hidden)), name=f"r{seed}")
        )
    return members


def _regression_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype("float32")
    return x, (x.sum(1, keepdims=True) * 50 + rng.normal(size=(n, 1))).astype("float32")


REGRESSORS = {
    "mean": (lambda: combiners.MeanCombiner(), None),
    "mean_weights": (lambda: combiners.MeanCombiner(weights=[0.5, 0.25, 0.25]), None),
    "stack_sklearn": (lambda: combiners.StackingCombiner(), {}),
    "stack_keras": (lambda: combiners.StackingCombiner(), {"method": "keras", "epochs": 3}),
    "weighted": (lambda: combiners.MeanCombiner(), {"method": "optimal"}),
}


@pytest.mark.parametrize("case", list(REGRESSORS), ids=list(REGRESSORS))
def test_every_regression_combiner_serves_like_keras(case, tmp_path):
    combiner, fit = REGRESSORS[case]
    model = ensemble.build_ensemble(_regressors(), combiner(), task="regression")
    if fit is not None:
        ensemble.fit(model, *_regression_rows(50, seed=0), **fit)
    path = ensemble.export_onnx(model, tmp_path / "r.onnx")
    x = with_bad_rows(_regression_rows(11, seed=1)[0])
    assert_serves_like(model, path, {"features": x})
    assert read_onnx_manifest(path)["task"] == "regression"


def test_run_onnx_casts_feeds_as_the_signature_would_and_names_bad_ones(tmp_path):
    model = ensemble.build_ensemble(_regressors(), combiners.MeanCombiner(), task="regression")
    path = ensemble.export_onnx(model, tmp_path / "r.onnx")
    x = _regression_rows(9, seed=2)[0]
    as_float32 = run_onnx(path, {"features": x.astype("float32")})
    as_float64 = run_onnx(path, {"features": x.astype("float64").tolist()})  # lists too
    for key, value in as_float32.items():
        np.testing.assert_array_equal(as_float64[key], value)
    with pytest.raises(ensemble.EnsembleError, match=r"Missing: \['features'\]; unknown: \['x'\]"):
        run_onnx(path, {"x": x})


@pytest.mark.parametrize("method", ["aps", "thr"])
@pytest.mark.slow
def test_conformal_prediction_sets_are_booleans_equal_to_keras(method, classification_rows, tmp_path):
    paths, x_hold, y_hold = classification_rows
    model = ensemble.build_ensemble(_members(paths), combiners.MeanCombiner())
    model = ensemble.add_conformal(model, x_hold, y_hold, alpha=0.2, method=method)
    path = ensemble.export_onnx(model, tmp_path / "c.onnx")
    served = run_onnx(path, {"features": rows(30, seed=8)})
    assert served["prediction_set"].dtype == bool and served["prediction_set"].any()
    assert_serves_like(model, path, {"features": with_bad_rows(rows(30, seed=8))})


@pytest.mark.parametrize("method", ["absolute", "normalized"])
def test_conformal_regression_intervals_equal_keras(method, tmp_path):
    model = ensemble.build_ensemble(_regressors(), combiners.MeanCombiner(), task="regression")
    model = ensemble.add_conformal(model, *_regression_rows(80, seed=3), alpha=0.1, method=method)
    path = ensemble.export_onnx(model, tmp_path / "i.onnx")
    assert {"interval_low", "interval_high"} <= set(read_onnx_manifest(path)["outputs"])
    assert_serves_like(model, path, {"features": with_bad_rows(_regression_rows(10, seed=4)[0])})


@pytest.mark.slow
def test_multi_input_ensemble_from_the_model_and_from_its_export(tmp_path):
    model = two_input_ensemble()
    feeds = {"image": rows(7, 1, features=4), "meta": rows(7, 2, features=2)}
    feeds["meta"][3, 1] = np.nan
    export = ensemble.export_saved_model(model, tmp_path / "export")
    for name, source in (("model", model), ("export", export)):
        path = ensemble.export_onnx(source, tmp_path / f"{name}.onnx")
        graph = onnx.load(path).graph
        assert [i.name for i in graph.input] == ["image", "meta"]
        assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in graph.input)
        assert all(o.type.tensor_type.shape.dim[0].dim_param == "batch" for o in graph.output)
        assert_serves_like(model, path, feeds)


def test_captured_tensors_become_constants_not_inputs(tmp_path):
    """An adapted Keras `Normalization` holds its mean and variance as captured tensors."""
    norm = keras.layers.Normalization()
    norm.adapt(rows(50, seed=3) * 4 + 2)
    inputs = keras.Input((FEATURES,))
    member = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(norm(inputs)))
    members = [ensemble.load_member(member, name="norm"), ensemble.load_member(dense_classifier(1), name="m")]
    model = ensemble.build_ensemble(members, combiners.MeanCombiner())
    path = ensemble.export_onnx(model, tmp_path / "n.onnx")
    assert [i.name for i in onnx.load(path).graph.input] == ["features"]
    assert_serves_like(model, path, {"features": with_bad_rows(rows(8, seed=4))})


# `tf_keras_files`: tests/conftest.py, written once per run and shared with test_keras2_files.


@pytest.mark.slow
def test_every_member_format_converts(tmp_path, tf_keras_files):
    """.keras, tf_keras .h5 and .keras, TF2 SavedModels (Keras export and a plain tf.Module),
    a TF1 SavedModel, TF1 and TF2 checkpoints with an architecture: the SavedModel's members."""
    nets = [DenseNet.random(sizes=(8, 16, 3), seed=s) for s in range(7)]
    nets[0].to_keras().save(tmp_path / "a.keras")
    nets[1].to_keras().export(os.fspath(tmp_path / "b_sm"), verbose=False)
    write_tf2_module_saved_model(tmp_path / "c_module", nets[2])
    write_tf1_saved_model(tmp_path / "d_tf1", nets[3])
    tf1_ckpt = write_tf1_checkpoint(tmp_path / "e" / "model.ckpt", nets[4], scope="net")
    tf2_ckpt = write_tf2_checkpoint(tmp_path / "f" / "ckpt", nets[5], root="net")
    blank = DenseNet.random(sizes=(8, 16, 3), seed=99).to_keras
    members = [
        ensemble.load_member(tmp_path / "a.keras", name="a"),
        ensemble.load_member(tmp_path / "b_sm", name="b", output="probabilities"),
        ensemble.load_member(tmp_path / "c_module", name="c", output="probabilities"),
        ensemble.load_member(tmp_path / "d_tf1", name="d", output="probabilities"),
        ensemble.load_member(tf1_ckpt, name="e", architecture=blank, scope="net"),
        ensemble.load_member(tf2_ckpt, name="f", architecture=blank),
        ensemble.load_member(tf_keras_files / "dense.h5", name="g"),  # tf_keras: 8 features, 3 classes
        ensemble.load_member(tf_keras_files / "dense.keras", name="h"),
        ensemble.load_member(tf_keras_files / "dense_sm", name="i", output="probabilities"),
    ]
    model = ensemble.build_ensemble(members, combiners.StackingCombiner(passthrough=True))
    feeds = {"features": with_bad_rows(rows(9, seed=6))}
    assert_serves_like(model, ensemble.export_onnx(model, tmp_path / "formats.onnx"), feeds)
    export = ensemble.export_saved_model(model, tmp_path / "export")
    assert_serves_like(model, ensemble.export_onnx(export, tmp_path / "from_export.onnx"), feeds)


@pytest.mark.slow
def test_dynamic_batch_of_one_seven_and_none(tmp_path):
    """onnxruntime runs a batch of no rows: empty outputs of the right shapes, as TensorFlow."""
    members = [ensemble.load_member(dense_classifier(s), name=f"m{s}") for s in range(2)]
    model = ensemble.build_ensemble(members, combiners.VoteCombiner("hard"))
    path = ensemble.export_onnx(model, tmp_path / "m.onnx")
    for n in (1, 7):
        assert_serves_like(model, path, {"features": rows(n, seed=n)})
    empty = run_onnx(path, {"features": rows(0)})
    expected = model(rows(0))
    for key, value in empty.items():
        assert value.shape == tuple(expected[key].shape) and value.shape[0] == 0, key
