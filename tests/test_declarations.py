"""A declaration that contradicts the model is an error naming the member: logits declared on
probabilities (a second softmax), probabilities declared on logits or on k > 1 independent
sigmoids (from every kind of source), a regression model under task='classification', NaN or
infinite weights (in a Keras model and in a frozen TF1 graph)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import combiners
import ensemble
from tests.conftest import FEATURES, dense_classifier
from tests.legacy_formats import DenseNet, write_tf1_saved_model, write_tf2_module_saved_model


@pytest.mark.parametrize("final", ["softmax", "sigmoid"])
def test_logits_on_a_final_softmax_or_sigmoid_is_an_error(final):
    with pytest.raises(ensemble.MemberError, match=rf"'soft'.*output='logits'.*ends in a {final}"):
        ensemble.load_member(dense_classifier(0, final=final), name="soft", output="logits")


def _sigmoids(tmp_path, fmt):
    """Input(4) -> Dense(3, sigmoid), three multi-label scores, from a source of kind `fmt`."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="sigmoid")])
    if fmt == "object":
        return model
    if fmt == "saved_model":
        model.export(str(tmp_path / "tags"), verbose=False)
        return tmp_path / "tags"
    if fmt == "tf_module":  # no layers to read the activation from: the rows' range tells
        module = tf.Module()
        module.dense = model
        module.serve = tf.function(model, input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        tf.saved_model.save(module, str(tmp_path / "module"), signatures={"serving_default": module.serve})
        return tmp_path / "module"
    model.save(tmp_path / f"tags.{fmt}")
    return tmp_path / f"tags.{fmt}"


# A Keras source ends visibly in a sigmoid; a SavedModel only shows rows in [0, 1].
SIGMOID_SOURCES = [
    ("object", "ends in a sigmoid over 3 columns"),
    ("keras", "ends in a sigmoid over 3 columns"),
    ("h5", "ends in a sigmoid over 3 columns"),
    ("saved_model", r"lies in \[0, 1\] over 3 columns"),
    ("tf_module", r"lies in \[0, 1\] over 3 columns"),
]


@pytest.mark.parametrize(("fmt", "seen"), SIGMOID_SOURCES, ids=[fmt for fmt, _ in SIGMOID_SOURCES])
def test_probabilities_on_independent_sigmoids_is_an_error(tmp_path, fmt, seen):
    source = _sigmoids(tmp_path, fmt)
    match = (
        rf"'tags'.*output='probabilities'.*\(batch, 3\) {seen}.*: 3 independent sigmoids are "
        r"multi-label scores.*rows sum to [\d.]+ to [\d.]+ on probe rows.*softmax.*output='logits'"
        r".*task='regression'"
    )
    with pytest.raises(ensemble.MemberError, match=match):
        ensemble.load_member(source, name="tags", output="probabilities")


def test_logits_on_rows_that_sum_to_one_is_an_error(tmp_path):
    # A plain tf.Module: no layers to read the activation from, so the probe rows decide.
    path = write_tf2_module_saved_model(
        tmp_path / "module", DenseNet.random((FEATURES, 8, 3), final="softmax")
    )
    with pytest.raises(ensemble.MemberError, match=r"'module'.*rows are probabilities already"):
        ensemble.load_member(path, name="module", output="logits")
    member = ensemble.load_member(path, name="module", output="probabilities")
    x = np.random.default_rng(0).normal(size=(5, FEATURES)).astype("float32")
    np.testing.assert_allclose(
        member(x), DenseNet.random((FEATURES, 8, 3), final="softmax").predict(x), atol=1e-6
    )


def test_probabilities_on_logits_is_an_error(tmp_path):
    with pytest.raises(ensemble.MemberError, match=r"'raw'.*output='probabilities'.*no probabilities"):
        ensemble.load_member(dense_classifier(0, final=None), name="raw", output="probabilities")
    path = write_tf1_saved_model(tmp_path / "tf1", DenseNet.random((FEATURES, 8, 3), final="linear"))
    with pytest.raises(ensemble.MemberError, match=r"'tf1'.*no probabilities"):
        ensemble.load_member(path, name="tf1", output="probabilities")


def test_a_single_logit_column_declared_probabilities_is_an_error():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1, kernel_initializer="ones")])
    with pytest.raises(ensemble.MemberError, match=r"'logit'.*leaves \[0, 1\]"):
        ensemble.load_member(model, name="logit", output="probabilities")
    assert ensemble.load_member(model, name="logit", output="logits")(np.ones((2, FEATURES))).shape == (2, 2)


def test_right_declarations_load():
    x = np.random.default_rng(1).normal(size=(4, FEATURES)).astype("float32")
    logits = dense_classifier(0, final=None)
    member = ensemble.load_member(logits, name="logits", output="logits")
    np.testing.assert_allclose(member(x), keras.ops.softmax(logits(x)), atol=1e-6)
    assert (
        ensemble.load_member(dense_classifier(0), name="probs", output="probabilities").output_kind
        == "probabilities"
    )


def test_a_regression_member_under_classification_is_an_error():
    keras.utils.set_random_seed(0)
    regressor = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(3)])
    members = [
        ensemble.load_member(dense_classifier(0), name="clf"),
        ensemble.load_member(regressor, name="reg"),
    ]
    with pytest.raises(ensemble.MemberError, match=r"'reg'.*task='classification'.*not"):
        ensemble.build_ensemble(members, combiners.MeanCombiner(), task="classification")
    # The same member is fine where it belongs.
    ensemble.build_ensemble([members[1]], combiners.MeanCombiner(), task="regression")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_keras_weights_are_named(value):
    model = dense_classifier(0)
    kernel, bias = model.layers[-1].get_weights()
    bias[1] = value
    model.layers[-1].set_weights([kernel, bias])
    with pytest.raises(ensemble.MemberError, match=r"'diverged'.*weight '.*bias'.*1 NaN or infinite"):
        ensemble.load_member(model, name="diverged")


def test_non_finite_frozen_tf1_constants_are_named(tmp_path):
    net = DenseNet.random((FEATURES, 8, 3), seed=2)
    net.layers[0][0][3, 4] = np.nan
    path = write_tf1_saved_model(tmp_path / "tf1_nan", net)
    with pytest.raises(ensemble.MemberError, match=r"'tf1_nan'.*weight .*NaN or infinite"):
        ensemble.load_member(path, name="tf1_nan", output="probabilities")


def test_legitimate_models_are_not_refused(tmp_path):
    """No false alarms: a bounded multi-target regressor (an inferred sigmoid), a logits head
    chosen from a model whose other head ends in a softmax, an exported ensemble (its graph
    holds -inf and NaN constants on purpose) loaded as a member."""
    inputs = keras.Input((FEATURES,))
    bounded = keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid")(inputs))
    regressor = ensemble.load_member(bounded, name="bounded")
    ensemble.build_ensemble([regressor], combiners.MeanCombiner(), task="regression")
    logits = keras.layers.Dense(3)(inputs)
    two_heads = keras.Model(inputs, [logits, keras.layers.Softmax()(logits)])
    head = ensemble.load_member(two_heads, name="head", output_key=0, output="logits")
    x = np.random.default_rng(0).normal(size=(4, FEATURES)).astype("float32")
    np.testing.assert_allclose(head(x), keras.ops.softmax(two_heads(x)[0]), atol=1e-6)
    inner = ensemble.build_ensemble(
        [ensemble.load_member(dense_classifier(s), name=f"m{s}") for s in range(2)], combiners.VoteCombiner()
    )
    path = ensemble.export_saved_model(inner, tmp_path / "inner")
    nested = ensemble.load_member(path, name="nested", output_key="prediction", output="probabilities")
    np.testing.assert_allclose(nested(x), inner(x)["prediction"], atol=1e-6)
