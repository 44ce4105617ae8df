"""ensemble.distill: the loss against NumPy, and students that match their ensemble on its rows."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import ensemble
from combiners import MeanCombiner
from ensemble import EnsembleError
from ensemble.train import distillation_loss


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def teacher(digits):
    """Three small MLPs of different seeds, averaged."""
    x, y = digits
    members = []
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
        model.fit(x[:500], y[:500], epochs=15, batch_size=64, verbose=0)
        members.append(ensemble.load_member(model, name=f"mlp{seed}"))
    return ensemble.build_ensemble(members, MeanCombiner())


def student(activation: str | None = None) -> keras.Model:
    keras.utils.set_random_seed(7)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation=activation),
        ]
    )


def test_loss_is_hintons_in_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype("float32")
    soft = softmax(rng.normal(size=(6, 4)))
    labels = np.eye(4)[rng.integers(0, 4, 6)]
    targets = np.concatenate([soft, labels], -1).astype("float32")
    t, w = 2.5, 0.3
    imitation = -(soft * np.log(softmax(logits / t))).sum(-1) * t**2
    truth = -(labels * np.log(softmax(logits))).sum(-1)
    got = keras.ops.convert_to_numpy(distillation_loss("classification", t, w)(targets, logits))
    np.testing.assert_allclose(got, (1 - w) * imitation + w * truth, rtol=1e-5)
    mean, y = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    regression = distillation_loss("regression", label_weight=0.5)(
        np.concatenate([mean, y], -1), np.zeros((6, 2))
    )
    expected = 0.5 * (mean**2).mean(-1) + 0.5 * (y**2).mean(-1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(regression), expected, rtol=1e-5)


@pytest.mark.slow
def test_a_student_matches_its_ensemble_on_its_rows(digits, teacher):
    x, _ = digits
    rows = x[500:1300]
    epochs = []
    counter = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epochs.append(epoch))
    result = ensemble.distill(
        teacher, student(), rows, epochs=60, batch_size=128, callbacks=[counter], verbose=0
    )
    assert isinstance(result, ensemble.Member) and result.output_kind == "logits"
    assert len(epochs) == 60 and len(result.history.history["loss"]) == 60
    expected = teacher.predict(rows, verbose=0)["prediction"]
    got = np.asarray(result(rows))  # the member's probabilities
    untrained = np.asarray(ensemble.load_member(student(), name="untrained", output="logits")(rows))
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.95  # measured 0.96: near ties differ
    assert np.abs(got - expected).mean() < 0.1 * np.abs(untrained - expected).mean()  # 0.012 vs 0.17
    assert not result.trainable and not result.trainable_weights  # frozen like any member


@pytest.mark.slow
def test_a_probability_student_with_labels_and_temperature(digits, teacher, tmp_path):
    x, y = digits
    result = ensemble.distill(
        teacher, student("softmax"), x[500:1300], y=y[500:1300], label_weight=0.2,
        temperature=2.0, epochs=30, batch_size=128, verbose=0,
    )  # fmt: skip
    assert result.output_kind == "probabilities"
    held = teacher.predict(x[1300:], verbose=0)["prediction"]
    assert (np.asarray(result(x[1300:])).argmax(-1) == held.argmax(-1)).mean() >= 0.9
    # It saves, reloads and joins an ensemble like any member.
    result.model.save(tmp_path / "student.keras")
    again = ensemble.load_member(tmp_path / "student.keras", name="again")
    np.testing.assert_allclose(again(x[:20]), result(x[:20]), atol=1e-6)
    both = ensemble.build_ensemble([result, again], MeanCombiner())
    assert both.predict(x[:4], verbose=0)["prediction"].shape == (4, 10)


@pytest.mark.slow
def test_the_uncertainty_head_learns_the_mutual_information(digits, teacher, tmp_path):
    x, _ = digits
    rows = x[500:1300]
    result = ensemble.distill(
        teacher, student(), rows, epochs=80, batch_size=128, uncertainty=True, verbose=0
    )
    outputs = result.model(rows)
    assert sorted(outputs) == ["mutual_information", "prediction"]
    mi = np.asarray(outputs["mutual_information"])
    expected = teacher.predict(rows, verbose=0)["mutual_information"]
    assert mi.shape == expected.shape and (mi >= 0).all()
    assert abs(mi.mean() - expected.mean()) < 0.5 * expected.mean()
    assert np.corrcoef(mi, expected)[0, 1] > 0.5
    assert np.asarray(result(rows)).shape == (800, 10)  # the member emits the prediction
    # The one model ships both outputs: a SavedModel of it serves them in TensorFlow alone.
    import tensorflow as tf

    result.model.export(str(tmp_path / "student"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "student"))
    served = loaded.serve(tf.constant(rows[:5]))
    np.testing.assert_allclose(served["mutual_information"], mi[:5], atol=1e-6)


@pytest.mark.slow
def test_a_regression_student_learns_the_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype("float32")
    members = []
    for i, coef in enumerate(([1.0, 2.0, 0.0], [3.0, 0.0, -1.0])):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.set_weights([np.array(coef, "float32")[:, None], np.array([i], "float32")])
        members.append(ensemble.load_member(model, name=f"lin{i}"))
    teacher = ensemble.build_ensemble(members, MeanCombiner(), task="regression")
    linear = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    result = ensemble.distill(
        teacher, linear, x, epochs=25, batch_size=20, optimizer=keras.optimizers.Adam(0.05), verbose=0
    )
    kernel, bias = result.model.get_weights()
    np.testing.assert_allclose(kernel.ravel(), [2.0, 1.0, -0.5], atol=0.02)  # the mean's coefficients
    np.testing.assert_allclose(bias, [0.5], atol=0.02)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"model": "members"}, "not an ensemble|Expected an ensemble"),
        ({"label_weight": 0.5}, "pass y"),
        ({"temperature": 0.0}, "temperature > 0"),
        ({"student": "narrow"}, "width 3"),
    ],
)
def test_bad_input_is_named(digits, teacher, change, match):
    x, _ = digits
    kwargs = {"model": teacher, "student": student(), "x": x[:50], "epochs": 1}
    if change.pop("model", None):
        kwargs["model"] = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    if change.pop("student", None):
        kwargs["student"] = keras.Sequential([keras.Input((64,)), keras.layers.Dense(3)])
    with pytest.raises(EnsembleError, match=match):
        ensemble.distill(**kwargs, **change, verbose=0)
