"""build_ensemble: one graph whose outputs equal NumPy references computed from each member alone."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import combiners
import ensemble
from tests.conftest import CLASSES, FEATURES, dense_classifier, entropy, softmax


def _alone(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False))


def test_classification_outputs_match_numpy(x):
    sources = [dense_classifier(1), dense_classifier(2, final=None), dense_classifier(3)]
    expected = np.stack(
        [_alone(sources[0], x), softmax(_alone(sources[1], x)), _alone(sources[2], x)], axis=1
    )
    members = [
        ensemble.load_member(sources[0], name="a"),
        ensemble.load_member(sources[1], name="b", output="logits"),
        ensemble.load_member(sources[2], name="c"),
    ]
    weights = np.array([2.0, 1.0, 1.0])
    model = ensemble.build_ensemble(members, combiners.MeanCombiner(weights=list(weights)))
    out = {k: np.asarray(v) for k, v in model(x).items()}

    shares = weights / weights.sum()
    prediction = (expected * shares[None, :, None]).sum(1)
    votes = expected.argmax(-1)
    np.testing.assert_allclose(out["member_predictions"], expected, atol=1e-6)
    np.testing.assert_allclose(out["prediction"], prediction, atol=1e-6)
    np.testing.assert_allclose(out["prediction"].sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out["entropy"], entropy(prediction), atol=1e-5)
    # The uncertainty outputs weigh the members as the combiner does (2:1:1 here).
    np.testing.assert_allclose(
        out["mutual_information"], entropy(prediction) - entropy(expected) @ shares, atol=1e-5
    )
    np.testing.assert_allclose(
        out["disagreement"], (votes != prediction.argmax(-1)[:, None]) @ shares, atol=1e-6
    )
    assert set(out) == {"prediction", "member_predictions", "entropy", "mutual_information", "disagreement"}


def test_regression_outputs_match_numpy(x):
    sources = [dense_classifier(s, classes=2, final=None) for s in (4, 5)]
    expected = np.stack([_alone(m, x) for m in sources], axis=1)
    model = ensemble.build_ensemble(
        {"r1": sources[0], "r2": sources[1]}, combiners.MeanCombiner(), task="regression"
    )
    out = {k: np.asarray(v) for k, v in model(x).items()}
    assert set(out) == {"prediction", "member_predictions", "std"}
    np.testing.assert_allclose(out["prediction"], expected.mean(1), atol=1e-6)
    np.testing.assert_allclose(out["std"], expected.std(1), atol=1e-6)


def test_one_dimensional_regression_output_becomes_a_column(x):
    inputs = keras.Input((FEATURES,))
    flat = keras.Model(inputs, keras.ops.sum(inputs, axis=-1))  # (batch,)
    model = ensemble.build_ensemble({"sum": flat}, combiners.MeanCombiner(), task="regression")
    np.testing.assert_allclose(model(x)["prediction"], x.sum(-1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("output", ["probabilities", "logits"])
def test_single_sigmoid_column_becomes_two_class_probabilities(x, output):
    source = dense_classifier(6, classes=1, final="sigmoid" if output == "probabilities" else None)
    column = _alone(source, x)
    positive = column if output == "probabilities" else 1 / (1 + np.exp(-column))
    member = ensemble.load_member(source, name="binary", output=output)
    out = ensemble.build_ensemble([member], combiners.MeanCombiner())(x)
    np.testing.assert_allclose(out["prediction"], np.hstack([1 - positive, positive]), atol=1e-6)


def test_members_reading_different_named_inputs():
    image_in = keras.Input((4, 4, 1), name="img")
    image_model = keras.Model(
        image_in, keras.layers.Dense(CLASSES, activation="softmax")(keras.layers.Flatten()(image_in))
    )
    meta_in = keras.Input((5,), name="meta_in")
    meta_model = keras.Model(meta_in, keras.layers.Dense(CLASSES, activation="softmax")(meta_in))
    both = {"image": keras.Input((4, 4, 1), name="image"), "meta": keras.Input((5,), name="meta")}
    joined = keras.layers.Concatenate()([keras.layers.Flatten()(both["image"]), both["meta"]])
    both_model = keras.Model(both, keras.layers.Dense(CLASSES, activation="softmax")(joined))

    model = ensemble.build_ensemble(
        [
            ensemble.load_member(image_model, name="vision", inputs="image"),
            ensemble.load_member(meta_model, name="tabular", inputs="meta"),
            ensemble.load_member(both_model, name="fusion"),  # its own input names: image, meta
        ],
        combiners.MeanCombiner(),
    )
    rng = np.random.default_rng(1)
    feed = {
        "image": rng.normal(size=(3, 4, 4, 1)).astype("float32"),
        "meta": rng.normal(size=(3, 5)).astype("float32"),
    }
    assert sorted(model.input) == ["image", "meta"]
    out = model(feed)
    expected = np.stack(
        [_alone(image_model, feed["image"]), _alone(meta_model, feed["meta"]), _alone(both_model, feed)],
        axis=1,
    )
    np.testing.assert_allclose(out["member_predictions"], expected, atol=1e-6)


def test_passthrough_stacking_sees_raw_inputs(x):
    model = ensemble.build_ensemble(
        [dense_classifier(1, name="a"), dense_classifier(2, name="b")],
        combiners.StackingCombiner(passthrough=True),
    )
    stack = ensemble.ensemble_combiner(model)
    # Members' log-probabilities then the raw features: 2 * classes + features rows.
    assert stack.trainable_weights[0].shape == (2 * CLASSES + FEATURES, CLASSES)
    out = model(x)
    geometric = softmax(np.log(np.clip(np.asarray(out["member_predictions"]), 1e-7, 1)).mean(1))
    np.testing.assert_allclose(out["prediction"], geometric, atol=1e-5)


def test_members_are_frozen_and_deterministic(x):
    source = dense_classifier(7, dropout=0.5)
    before = [w.copy() for w in source.get_weights()]
    member = ensemble.load_member(source, name="m")
    assert member.trainable_weights == [] and member.non_trainable_weights
    assert source.trainable, "freezing the member must not freeze the caller's model"
    model = ensemble.build_ensemble([member], combiners.StackingCombiner())
    assert {id(w) for w in model.trainable_weights} == {
        id(w) for w in ensemble.ensemble_combiner(model).trainable_weights
    }
    first = np.asarray(model(x, training=True)["member_predictions"])
    second = np.asarray(model(x, training=True)["member_predictions"])
    np.testing.assert_array_equal(first, second)  # dropout stays off inside a member
    for a, b in zip(before, source.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "combiner",
    [
        combiners.MeanCombiner(weights=[1, 3]),
        combiners.VoteCombiner(voting="hard", weights=[2, 1]),
        combiners.VoteCombiner(voting="soft"),
        combiners.StackingCombiner(passthrough=True),
    ],
    ids=["mean", "hard-vote", "soft-vote", "stack-passthrough"],
)
def test_keras_round_trip_and_second_batch_size(tmp_path, x, combiner):
    members = [
        ensemble.load_member(dense_classifier(1), name="a"),
        ensemble.load_member(dense_classifier(2, final=None), name="b", output="logits"),
    ]
    model = ensemble.build_ensemble(members, combiner)
    path = tmp_path / "ensemble.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    for batch in (x, np.concatenate([x, x, x])):
        expected, actual = model(batch), reloaded(batch)
        for key in expected:
            np.testing.assert_allclose(actual[key], expected[key], atol=1e-6, err_msg=key)
    provenance = [(m.name, m.format, m.source) for m in ensemble.ensemble_members(reloaded)]
    assert provenance == [("a", "object", "<in-memory>"), ("b", "object", "<in-memory>")]


def test_task_is_inferred_and_checked(x):
    probabilities = ensemble.load_member(dense_classifier(1), name="p")
    assert probabilities.output_kind == "probabilities"  # seen from the final softmax
    model = ensemble.build_ensemble([probabilities], combiners.MeanCombiner())
    assert ensemble.ensemble_task(model) == "classification"
    unknown = ensemble.load_member(dense_classifier(2, final=None), name="u")
    with pytest.raises(ensemble.EnsembleError, match=r"Cannot infer the task: member\(s\) \['u'\]"):
        ensemble.build_ensemble([probabilities, unknown], combiners.MeanCombiner())


def test_a_sigmoid_regressor_joins_a_regression_ensemble(x):
    bounded = dense_classifier(9, classes=1, final="sigmoid")  # e.g. a target scaled to [0, 1]
    member = ensemble.load_member(bounded, name="bounded")
    assert member.output_kind == "probabilities" and member.output_inferred
    model = ensemble.build_ensemble([member], combiners.MeanCombiner(), task="regression")
    np.testing.assert_allclose(model(x)["prediction"], _alone(bounded, x), atol=1e-6)
    declared = ensemble.load_member(bounded, name="declared", output="probabilities")
    with pytest.raises(ensemble.EnsembleError, match=r"declare class outputs"):
        ensemble.build_ensemble([declared], combiners.MeanCombiner(), task="regression")


def test_set_member_weights_checks_the_new_count(x):
    model = ensemble.build_ensemble(
        [dense_classifier(1, name="a"), dense_classifier(2, name="b")], combiners.MeanCombiner()
    )
    with pytest.raises(ValueError, match=r"Expected 2 weights, one per member. Received: weights=\[1.0\]"):
        ensemble.ensemble_combiner(model).set_member_weights([1.0])
