"""load_member: every format gives the source model's outputs, frozen, renamed, with provenance."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import combiners
import ensemble
from tests.legacy_formats import (
    DenseNet,
    write_tf1_checkpoint,
    write_tf1_saved_model,
    write_tf2_checkpoint,
    write_tf2_module_saved_model,
)

NET = DenseNet.random(sizes=(8, 16, 3), seed=11)


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(6, 8)).astype("float32")


def _member_output(member: ensemble.Member, x: np.ndarray) -> np.ndarray:
    return np.asarray(member(x))


def _keras_file(tmp_path, suffix: str) -> str:
    path = os.fspath(tmp_path / f"model{suffix}")
    NET.to_keras().save(path)
    return path


@pytest.mark.parametrize("suffix, fmt", [(".keras", "keras"), (".h5", "h5"), (".hdf5", "h5")])
def test_keras_files(tmp_path, x, suffix, fmt):
    path = _keras_file(tmp_path, suffix)
    member = ensemble.load_member(path, name="m")
    alone = np.asarray(keras.saving.load_model(path, compile=False)(x))
    np.testing.assert_allclose(_member_output(member, x), alone, atol=1e-6)
    np.testing.assert_allclose(_member_output(member, x), NET.predict(x), atol=1e-5)
    assert (member.name, member.format, member.source) == ("m", fmt, path)
    assert member.output_kind == "probabilities" and member.trainable_weights == []


def test_keras_export_saved_model(tmp_path, x):
    path = os.fspath(tmp_path / "exported")
    NET.to_keras().export(path, verbose=False)
    member = ensemble.load_member(path, name="exported", output="probabilities")
    loaded = tf.saved_model.load(path)  # keep it alive: its functions hold weak variable refs
    alone = np.asarray(loaded.serve(x))
    np.testing.assert_allclose(_member_output(member, x), alone, atol=1e-6)
    assert member.format == "saved_model"


def test_tf_module_saved_model(tmp_path, x):
    path = write_tf2_module_saved_model(tmp_path / "module", NET)
    member = ensemble.load_member(path, name="module")
    loaded = tf.saved_model.load(os.fspath(path))
    alone = loaded.signatures["serving_default"](x=tf.constant(x))
    np.testing.assert_allclose(_member_output(member, x), alone["output_0"], atol=1e-6)


def test_tf1_saved_model_defaults(tmp_path, x):
    path = write_tf1_saved_model(tmp_path / "tf1", NET)
    member = ensemble.load_member(path, name="tf1")
    np.testing.assert_allclose(_member_output(member, x), NET.predict(x), atol=1e-5)


def test_tf1_saved_model_tags_signature_and_output_key(tmp_path, x):
    path = write_tf1_saved_model(
        tmp_path / "tf1",
        NET,
        tags=("custom",),
        signature_key="predict",
        output_keys=("probabilities", "logits", "classes"),
        extra_signatures=("serving_default",),
    )
    member = ensemble.load_member(
        path, name="tf1", tags=["custom"], signature="predict", output_key="probabilities"
    )
    np.testing.assert_allclose(_member_output(member, x), NET.predict(x), atol=1e-5)
    logits = ensemble.load_member(
        path,
        name="tf1_logits",
        tags=["custom"],
        signature="predict",
        output_key="logits",
        output="logits",
    )
    np.testing.assert_allclose(_member_output(logits, x), NET.predict(x), atol=1e-5)


@pytest.mark.parametrize("scope", ["net", "outer/inner", ""])
def test_tf1_checkpoint_by_name_under_scope(tmp_path, x, scope):
    prefix = write_tf1_checkpoint(tmp_path / "ckpt" / "model.ckpt", NET, scope=scope)
    architecture = DenseNet.random(sizes=(8, 16, 3), seed=99).to_keras  # same shapes, other values
    for source in (prefix, os.path.dirname(prefix)):  # the prefix, or its directory
        member = ensemble.load_member(source, name="ckpt", architecture=architecture, scope=scope or None)
        np.testing.assert_allclose(_member_output(member, x), NET.predict(x), atol=1e-5)
        assert member.format == "checkpoint"


def test_tf1_checkpoint_architecture_as_file_config_or_dotted_path(tmp_path, x):
    prefix = write_tf1_checkpoint(tmp_path / "model.ckpt", NET, scope="net")
    blank = DenseNet.random(sizes=(8, 16, 3), seed=5).to_keras()
    arch_file = os.fspath(tmp_path / "arch.keras")
    blank.save(arch_file)
    config = keras.saving.serialize_keras_object(blank)
    dotted = "tests.test_loading.blank_architecture"  # an import: only with safe_mode=False
    for architecture in (arch_file, config, dotted):
        safe = {"safe_mode": False} if architecture == dotted else {}
        member = ensemble.load_member(prefix, name="ckpt", architecture=architecture, scope="net", **safe)
        np.testing.assert_allclose(_member_output(member, x), NET.predict(x), atol=1e-5)


def blank_architecture() -> keras.Model:
    """An architecture builder importable by dotted path, as a Hydra config would name it."""
    return DenseNet.random(sizes=(8, 16, 3), seed=6).to_keras()


def test_tf1_checkpoint_variable_map(tmp_path, x):
    prefix = write_tf1_checkpoint(tmp_path / "model.ckpt", NET, scope="net")
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    arch = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(hidden))
    mapping = {
        "hidden/kernel": "net/dense_0/kernel",
        "hidden/bias": "net/dense_0/bias",
        "head/kernel": "net/dense_1/kernel",
        "head/bias": "net/dense_1/bias",
    }
    member = ensemble.load_member(prefix, name="mapped", architecture=arch, variable_map=mapping)
    np.testing.assert_allclose(_member_output(member, x), NET.predict(x), atol=1e-5)


def test_tf2_object_checkpoint(tmp_path, x):
    path = write_tf2_checkpoint(tmp_path / "tf2" / "ckpt", NET, root="net")
    architecture = DenseNet.random(sizes=(8, 16, 3), seed=7).to_keras
    member = ensemble.load_member(path, name="tf2", architecture=architecture)
    np.testing.assert_allclose(_member_output(member, x), NET.predict(x), atol=1e-5)


def test_in_memory_model_is_copied_not_shared(x):
    source = NET.to_keras()
    member = ensemble.load_member(source, name="copy")
    np.testing.assert_allclose(_member_output(member, x), np.asarray(source(x)), atol=1e-6)
    assert source.trainable and all(w.trainable for w in source.weights)
    source.layers[0].kernel.assign(np.zeros((8, 16), "float32"))  # the caller trains on
    np.testing.assert_allclose(_member_output(member, x), NET.predict(x), atol=1e-5)
    assert (member.format, member.source) == ("object", "<in-memory>")


def _lambda_model() -> keras.Model:
    inputs = keras.Input((8,))
    return keras.Model(inputs, keras.layers.Lambda(lambda t: t[:, :3] * 2.0, output_shape=(3,))(inputs))


def test_keras_safe_mode_is_kept_unless_the_caller_opts_out(tmp_path, x):
    path = os.fspath(tmp_path / "lambda.keras")
    _lambda_model().save(path)
    with pytest.raises(ensemble.MemberError, match=r"Member 'lam'.*safe_mode"):
        ensemble.load_member(path, name="lam")
    member = ensemble.load_member(path, name="lam", safe_mode=False)
    np.testing.assert_allclose(_member_output(member, x), x[:, :3] * 2.0, atol=1e-6)


def test_multi_output_keras_model_needs_an_output_key(x):
    inputs = keras.Input((8,))
    head = keras.layers.Dense(3, activation="softmax", name="probs")(inputs)
    aux = keras.layers.Dense(1, name="aux")(inputs)
    model = keras.Model(inputs, {"probs": head, "aux": aux})
    with pytest.raises(ensemble.MemberError, match=r"Member 'multi'.*several outputs"):
        ensemble.load_member(model, name="multi")
    member = ensemble.load_member(model, name="multi", output_key="probs", output="probabilities")
    np.testing.assert_allclose(_member_output(member, x), np.asarray(model(x)["probs"]), atol=1e-6)


def test_checkpoints_restored_into_one_architecture_object_stay_isolated(tmp_path, x):
    nets = [DenseNet.random(sizes=(8, 16, 3), seed=s) for s in (21, 22)]
    paths = [write_tf2_checkpoint(tmp_path / f"c{i}" / "ckpt", net, root="net") for i, net in enumerate(nets)]
    architecture = DenseNet.random(sizes=(8, 16, 3), seed=23).to_keras()
    a, b = (ensemble.load_member(p, name=f"m{i}", architecture=architecture) for i, p in enumerate(paths))
    np.testing.assert_allclose(_member_output(a, x), nets[0].predict(x), atol=1e-5)
    np.testing.assert_allclose(_member_output(b, x), nets[1].predict(x), atol=1e-5)
    assert a.model is not architecture and architecture.trainable


def test_output_kind_is_not_inferred_for_an_output_key_of_a_multi_output_model(x):
    inputs = keras.Input((8,))
    logits = keras.layers.Dense(3, name="logits")(inputs)
    model = keras.Model(inputs, {"logits": logits, "probs": keras.layers.Softmax()(logits)})
    member = ensemble.load_member(model, name="multi", output_key="logits")
    assert member.output_kind is None
    np.testing.assert_allclose(_member_output(member, x), np.asarray(model(x)["logits"]), atol=1e-6)


@pytest.mark.parametrize("nested", [False, True])
def test_an_in_memory_model_with_an_adapted_normalization_is_itself(nested):
    # The member is a copy (freezing it leaves the caller's model alone); an adapted
    # Normalization's mean and variance reach its call only through finalize_state, which
    # Keras runs after loading variables and set_weights does not (the copy then scaled by
    # mean 0 and variance 1: 0.97 off on wine).
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 5)) * [1, 10, 100, 1000, 0.1] + [5, -50, 500, 0, 1]).astype("float32")
    norm = keras.layers.Normalization()
    norm.adapt(x)
    keras.utils.set_random_seed(0)
    head = keras.Sequential([keras.Input((5,)), norm, keras.layers.Dense(3, activation="softmax")])
    model = keras.Sequential([keras.Input((5,)), head]) if nested else head
    member = ensemble.load_member(model, name="scaled", output="probabilities")
    np.testing.assert_allclose(member.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    built = ensemble.build_ensemble([member], combiners.MeanCombiner())
    np.testing.assert_allclose(
        built.predict(x, verbose=0)["prediction"], model.predict(x, verbose=0), atol=1e-6
    )


def test_a_keras_file_that_is_no_archive_is_named_as_such_not_as_missing(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip")
    with pytest.raises(ensemble.MemberError, match=r"Member 'b'.*broken\.keras is not a \.keras archive"):
        ensemble.load_member(path, name="b")
