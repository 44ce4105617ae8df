"""The legacy-format writers, checked against the NumPy reference with plain TensorFlow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
import tensorflow as tf

from tests.legacy_formats import (
    DenseNet,
    write_tf1_checkpoint,
    write_tf1_saved_model,
    write_tf2_checkpoint,
    write_tf2_module_saved_model,
)
from tests.reference import predict_in_fresh_process

ATOL = 1e-5
SIZES = (6, 5, 3)


@pytest.fixture
def net() -> DenseNet:
    return DenseNet.random(SIZES, seed=1)


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(2).normal(size=(4, SIZES[0])).astype(np.float32)


def saved_variables(saved_model_dir) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(os.path.join(saved_model_dir, "variables", "variables"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def expected_variables(net: DenseNet, scope: str) -> dict[str, np.ndarray]:
    prefix = f"{scope}/" if scope else ""
    names = {}
    for i, (kernel, bias) in enumerate(net.layers):
        names[f"{prefix}dense_{i}/kernel"] = kernel
        names[f"{prefix}dense_{i}/bias"] = bias
    return names


@pytest.mark.parametrize("final", ["softmax", "linear", "tanh", "relu"])
def test_dense_net_matches_its_keras_twin(final, x):
    net = DenseNet.random(SIZES, seed=3, final=final)
    model = net.to_keras(name="twin")
    assert model.name == "twin"
    assert [layer.name for layer in model.layers] == ["dense_0", "dense_1"]
    np.testing.assert_allclose(model(x, training=False), net.predict(x), atol=ATOL)
    back = DenseNet.from_keras(model)
    assert back.activations == net.activations
    for (k0, b0), (k1, b1) in zip(back.layers, net.layers, strict=True):
        np.testing.assert_array_equal(k0, k1)
        np.testing.assert_array_equal(b0, b1)


def test_dense_net_rejects_unknown_activation():
    with pytest.raises(ValueError, match="gelu"):
        DenseNet([(np.ones((2, 2)), np.zeros(2))], ["gelu"])


def test_tf1_saved_model_serves_every_output_key(tmp_path, net, x):
    path = write_tf1_saved_model(
        tmp_path / "tf1",
        net,
        tags=("serve", "gpu"),
        signature_key="predict",
        input_key="features",
        output_keys=("probs", "logits", "classes"),
        extra_signatures=("serving_default",),
    )
    loaded = tf.saved_model.load(str(path), tags=["serve", "gpu"])
    assert sorted(loaded.signatures) == ["predict", "serving_default"]
    fn = loaded.signatures["predict"]
    assert list(fn.structured_input_signature[1]) == ["features"]
    out = fn(features=tf.constant(x))
    assert sorted(out) == ["classes", "logits", "probs"]
    np.testing.assert_allclose(out["probs"], net.predict(x), atol=ATOL)
    np.testing.assert_allclose(out["logits"], net.logits(x), atol=ATOL)
    assert out["classes"].dtype == tf.int64
    np.testing.assert_array_equal(out["classes"], net.predict(x).argmax(-1))
    decoy = loaded.signatures["serving_default"](features=tf.constant(x))
    np.testing.assert_allclose(decoy["probs"], net.logits(x), atol=ATOL)


def test_tf1_saved_models_with_one_scope_collide(tmp_path, net, x):
    other = DenseNet.random(SIZES, seed=9, final="linear")
    first = write_tf1_saved_model(tmp_path / "a", net)
    second = write_tf1_saved_model(tmp_path / "b", other, output_keys=("predictions",))
    variables = saved_variables(first)
    assert sorted(variables) == sorted(saved_variables(second))
    for name, value in expected_variables(net, "model").items():
        np.testing.assert_array_equal(variables[name], value)
    for path, model, key in [(first, net, "probabilities"), (second, other, "predictions")]:
        out = tf.saved_model.load(str(path)).signatures["serving_default"](x=tf.constant(x))
        np.testing.assert_allclose(out[key], model.predict(x), atol=ATOL)


@pytest.mark.parametrize("scope", ["model", "", "tower_1/model"], ids=["scope", "no_scope", "nested"])
def test_tf1_checkpoint_names_and_values(tmp_path, net, scope):
    prefix = write_tf1_checkpoint(tmp_path / "ckpt" / "model.ckpt", net, scope=scope)
    assert prefix == str(tmp_path / "ckpt" / "model.ckpt")
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")) == prefix
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    expected = expected_variables(net, scope)
    assert sorted(reader.get_variable_to_shape_map()) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value)


def test_tf2_checkpoint_restores_into_a_fresh_keras_model(tmp_path, net, x):
    path = write_tf2_checkpoint(tmp_path / "ckpt", net, root="member")
    assert tf.train.load_checkpoint(path).get_variable_to_shape_map()
    fresh = DenseNet.random(SIZES, seed=5).to_keras()
    tf.train.Checkpoint(member=fresh).read(path).assert_consumed()
    np.testing.assert_allclose(fresh(x, training=False), net.predict(x), atol=ATOL)


def test_tf2_module_saved_model_signature(tmp_path, net, x):
    path = write_tf2_module_saved_model(tmp_path / "module", net)
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    assert list(fn.structured_input_signature[1]) == ["x"]
    assert list(fn.structured_outputs) == ["output_0"]
    np.testing.assert_allclose(fn(x=tf.constant(x))["output_0"], net.predict(x), atol=ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_fresh_process_loads_keras_files(tmp_path, net, x, suffix):
    path = tmp_path / f"member{suffix}"
    net.to_keras(name="member").save(path)
    np.testing.assert_allclose(predict_in_fresh_process("keras", path, x), net.predict(x), atol=ATOL)


@pytest.mark.slow
def test_fresh_process_loads_tf1_saved_model(tmp_path, net, x):
    path = write_tf1_saved_model(
        tmp_path / "tf1", net, tags=("serve", "tpu"), output_keys=("probabilities", "logits")
    )
    y = predict_in_fresh_process(
        "saved_model", path, x, tags=("serve", "tpu"), input_key="x", output_key="logits"
    )
    np.testing.assert_allclose(y, net.logits(x), atol=ATOL)


@pytest.mark.slow
def test_fresh_process_failure_shows_child_stderr(tmp_path, x):
    with pytest.raises(RuntimeError, match="saved_model"):
        predict_in_fresh_process("saved_model", tmp_path / "missing", x)


@pytest.mark.slow
def test_fresh_process_loads_keras_export(tmp_path, net, x):
    path = tmp_path / "export"
    net.to_keras(name="member").export(path, verbose=False)
    y = predict_in_fresh_process("keras_export", path, x)
    np.testing.assert_allclose(y, net.predict(x), atol=ATOL)
