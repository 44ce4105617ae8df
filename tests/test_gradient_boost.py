"""ensemble.boost on float targets: gradient boosting of Keras regressors on their residuals,
against a NumPy loop on a deterministic learner, real MLPs on diabetes, exports and errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import ensemble
from combiners import AdditiveCombiner
from ensemble import EnsembleError

FEATURES, HIDDEN = 5, 12


def random_features(index: int, features: int = FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """The fixed ReLU features of round `index` (seeded by it), the same for both boostings."""
    rng = np.random.default_rng(100 + index)
    return rng.normal(size=(features, HIDDEN)), rng.normal(size=HIDDEN)


def relu_design(x: np.ndarray, index: int) -> np.ndarray:
    kernel, bias = random_features(index, x.shape[1])
    hidden = np.maximum(x.astype("float32") @ kernel.astype("float32") + bias.astype("float32"), 0)
    return np.concatenate([hidden, np.ones((len(x), 1))], axis=1).astype("float64")


def least_squares(x: np.ndarray, targets: np.ndarray, index: int) -> np.ndarray:
    """The output layer (kernel rows, then the bias row) fitted to `targets` in closed form."""
    return np.linalg.lstsq(relu_design(x, index), targets, rcond=None)[0]


class RandomReLU(keras.Model):
    """Fixed random ReLU features (seeded by the round) and a linear output layer whose `fit`
    solves least squares in closed form: deterministic, so boosting it must match NumPy."""

    def __init__(self, index: int, features: int = FEATURES, targets: int = 1):
        inputs = keras.Input((features,))
        hidden = keras.layers.Dense(HIDDEN, activation="relu", trainable=False)
        output = keras.layers.Dense(targets)
        super().__init__(inputs, output(hidden(inputs)))
        kernel, bias = random_features(index, features)
        hidden.set_weights([kernel.astype("float32"), bias.astype("float32")])
        self.index, self.output_layer, self.seen = index, output, []

    def fit(self, x, y, **kwargs):
        self.seen.append(np.array(x))
        solution = least_squares(np.asarray(x), np.asarray(y, "float64").reshape(len(x), -1), self.index)
        self.output_layer.set_weights([solution[:-1].astype("float32"), solution[-1].astype("float32")])


def numpy_boosting(x, y, rounds, rate, held, n_iter_no_change=None):
    """The reference: Friedman's least-squares boosting on the same learner, in float64."""
    y = y.reshape(len(y), -1)
    fit = ~held
    bias = y[fit].mean(0)
    f_fit, f_all, losses, stages = np.tile(bias, (fit.sum(), 1)), np.tile(bias, (len(x), 1)), [], []
    for m in range(rounds):
        w = least_squares(x[fit], y[fit] - f_fit, m).astype("float32").astype("float64")
        f_fit = f_fit + rate * (relu_design(x[fit], m) @ w)
        f_all = f_all + rate * (relu_design(x, m) @ w)
        stages.append(f_all.copy())
        losses.append(np.mean((y[held] - f_all[held]) ** 2))
        if n_iter_no_change is not None and m - int(np.argmin(losses)) >= n_iter_no_change:
            break
    best = int(np.argmin(losses)) if n_iter_no_change is not None else len(stages) - 1
    return bias, stages[best], best + 1


def held_mask(rows, fraction, seed):
    held = np.zeros(rows, dtype=bool)
    held[np.random.default_rng(seed).permutation(rows)[: int(np.ceil(fraction * rows))]] = True
    return held


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, FEATURES)).astype("float32")
    y = (np.sin(2 * x[:, 0]) + x[:, 1] ** 2 - x[:, 2] * x[:, 3] + rng.normal(0, 0.1, 200)).astype("float32")
    return x, y


@pytest.fixture(scope="module")
def boosted(regression):
    x, y = regression
    learners: list[RandomReLU] = []

    def build(i):
        learners.append(RandomReLU(i))
        return learners[-1]

    return ensemble.boost(build, x, y, rounds=8, learning_rate=0.3, validation_fraction=0.2, seed=3), learners


@pytest.mark.slow
def test_prediction_weights_bias_and_std_match_numpy(regression, boosted):
    x, y = regression
    model, learners = boosted
    held = held_mask(len(x), 0.2, 3)
    bias, reference, count = numpy_boosting(x.astype("float64"), y.astype("float64"), 8, 0.3, held)
    out = model.predict(x, verbose=0)
    np.testing.assert_allclose(out["prediction"], reference, atol=1e-4)
    combiner = ensemble.ensemble_combiner(model)
    assert isinstance(combiner, AdditiveCombiner) and count == 8
    assert combiner.member_weights == [0.3] * 8
    np.testing.assert_allclose(combiner.bias, [y[~held].astype("float64").mean()], rtol=1e-6)
    np.testing.assert_allclose(combiner.bias, bias, rtol=1e-6)
    rms = np.sqrt(np.mean((y[held] - reference[held, 0]) ** 2))
    np.testing.assert_allclose(out["std"], np.full((len(x), 1), rms), rtol=1e-4)
    for learner, member in zip(learners, ensemble.ensemble_members(model), strict=True):
        np.testing.assert_array_equal(learner.seen[0], x[~held])  # trained on the fit rows only
        np.testing.assert_array_equal(member.training_rows, x[~held])


@pytest.mark.slow
def test_early_stopping_keeps_the_members_up_to_numpys_best_round(regression):
    x, y = regression
    # Large steps overfit the 40 fit rows quickly, so the held-out error turns up early.
    kwargs = dict(rounds=30, learning_rate=0.8, validation_fraction=0.8, seed=1)
    model = ensemble.boost(RandomReLU, x, y, n_iter_no_change=2, **kwargs)
    held = held_mask(len(x), 0.8, 1)
    _, reference, count = numpy_boosting(x.astype("float64"), y.astype("float64"), 30, 0.8, held, 2)
    assert count < 28  # it did stop early
    assert len(ensemble.ensemble_members(model)) == count
    np.testing.assert_allclose(model.predict(x, verbose=0)["prediction"], reference, atol=1e-4)


@pytest.mark.slow
def test_two_targets_and_the_default_learning_rate(regression):
    x, y = regression
    targets = np.stack([y, 2 * x[:, 4]], axis=1)
    model = ensemble.boost(lambda i: RandomReLU(i, targets=2), x, targets, rounds=3)
    combiner = ensemble.ensemble_combiner(model)
    held = held_mask(len(x), 0.1, 0)
    assert combiner.member_weights == [0.1] * 3 and len(combiner.bias) == 2
    bias, reference, _ = numpy_boosting(x.astype("float64"), targets.astype("float64"), 3, 0.1, held)
    np.testing.assert_allclose(combiner.bias, bias, rtol=1e-6)
    out = model.predict(x, verbose=0)
    np.testing.assert_allclose(out["prediction"], reference, atol=1e-4)
    rms = np.sqrt(np.mean((targets[held] - reference[held]) ** 2, axis=0))
    np.testing.assert_allclose(out["std"][0], rms, rtol=1e-4)


def mlp(index: int) -> keras.Model:
    keras.utils.set_random_seed(index)
    model = keras.Sequential(
        [keras.Input((10,)), keras.layers.Dense(1, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(keras.optimizers.Adam(0.02), "mse")
    return model


@pytest.mark.slow  # about 25 s: eight rounds of Keras fits
def test_boosted_mlps_beat_one_weak_learner_on_diabetes():
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")
    y = ((y - y.mean()) / y.std()).astype("float32")
    train, test = np.arange(342), np.arange(342, 442)
    fit = dict(epochs=10, batch_size=32, verbose=0)
    model = ensemble.boost(mlp, x[train], y[train], rounds=8, learning_rate=0.5, **fit)
    alone = mlp(0)
    alone.fit(x[train], y[train], **fit)

    def rmse(prediction):
        return float(np.sqrt(np.mean((np.ravel(prediction) - y[test]) ** 2)))

    boosted_rmse = rmse(model.predict(x[test], verbose=0)["prediction"])
    alone_rmse = rmse(alone.predict(x[test], verbose=0))
    assert boosted_rmse < alone_rmse - 0.02, (boosted_rmse, alone_rmse)  # measured 0.72 vs 0.77


@pytest.mark.slow
def test_exports_give_the_same_prediction_and_std_and_nan_rows_stay_nan(regression, boosted, tmp_path):
    import onnxruntime
    import tensorflow as tf

    x, _ = regression
    model = boosted[0]
    rows = x[:9].copy()
    rows[4, 2] = np.nan
    expected = model.predict(rows, verbose=0)
    for key in expected:
        assert np.isnan(expected[key][4]).all(), key
        assert np.isfinite(np.delete(expected[key], 4, axis=0)).all(), key
    path = ensemble.export_saved_model(model, tmp_path / "saved")
    served = tf.saved_model.load(str(path)).signatures["serving_default"](features=tf.constant(rows))
    onnx_path = ensemble.export_onnx(model, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(onnx_path))
    names = [o.name for o in session.get_outputs()]
    onnx_out = dict(zip(names, session.run(None, {session.get_inputs()[0].name: rows}), strict=True))
    for key in ("prediction", "std"):
        np.testing.assert_allclose(np.asarray(served[key]), expected[key], atol=1e-5)
        np.testing.assert_allclose(onnx_out[key], expected[key], atol=1e-5)
    for batch in (1, 3):  # the batch stays dynamic
        assert session.run(["std"], {session.get_inputs()[0].name: x[:batch]})[0].shape == (batch, 1)


def test_the_guard_refuses_a_combiner_fit_on_the_boosting_rows(regression, boosted):
    x, y = regression
    held = held_mask(len(x), 0.2, 3)
    with pytest.raises(EnsembleError, match="trained member"):
        ensemble.check_leakage(boosted[0], x[~held][:50])
    clean = ensemble.check_leakage(boosted[0], x[held])
    assert len(clean) == 8 and not any(clean.values()) and not clean.unchecked
    with pytest.raises(EnsembleError, match="trained member"):
        ensemble.fit(boosted[0], x[~held][:50], y[~held][:50])


def test_the_combiner_round_trips_and_checks_its_widths():
    combiner = AdditiveCombiner([0.1, 0.1], [1.0, 2.0], residual_std=[0.5, 0.25], name="add")
    copy = AdditiveCombiner.from_config(combiner.get_config())
    assert (copy.member_weights, copy.bias, copy.residual_std) == ([0.1, 0.1], [1.0, 2.0], [0.5, 0.25])
    stacked = np.arange(12, dtype="float32").reshape(3, 2, 2)
    expected = np.array([1.0, 2.0]) + 0.1 * stacked.sum(1)
    np.testing.assert_allclose(combiner(stacked), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="one per target"):
        AdditiveCombiner([1.0], [0.0, 0.0])(np.zeros((2, 1, 3), "float32"))
    with pytest.raises(ValueError, match="supports regression only"):
        AdditiveCombiner([1.0], [0.0], task="classification")


def diverging_learner(index: int, weights: bool = False) -> keras.Model:
    """Round 1 ends with finite weights whose predictions overflow (or, `weights`, an
    infinite bias)."""
    model = RandomReLU(index)
    fit = model.fit

    def diverged(x, y, **kwargs):
        fit(x, y)
        if index == 1:
            kernel, bias = model.output_layer.get_weights()
            if weights:
                model.output_layer.set_weights([kernel, bias + np.inf])
            else:
                model.output_layer.set_weights([np.full_like(kernel, 3e38), bias])

    model.fit = diverged
    return model


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"y": "nan"}, r"boost: y: row 7 is not finite"),
        ({"x": "nan"}, r"boost: x: row 7 is not finite"),
        ({"validation_fraction": 0.0}, "validation_fraction"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"validation_fraction": 0.999}, "both need at least one row"),
        ({"n_iter_no_change": 0}, "n_iter_no_change >= 1"),
        ({"rounds": 0}, "rounds >= 1"),
        ({"learning_rate": 0.0}, "learning_rate > 0"),
        ({"learning_rate": -1.0}, "learning_rate > 0"),
        ({"build": lambda i: RandomReLU(i, targets=2)}, "emits 2 values per row; y has 1 targets"),
        ({"sample_weight": np.ones(200)}, "sample_weight"),
        ({"build": diverging_learner}, "member of round 1 predicts non-finite"),
        ({"build": lambda i: diverging_learner(i, weights=True)}, "member of round 1 is not usable"),
    ],
)
def test_bad_inputs_are_refused_before_training(regression, change, message):
    x, y = regression
    x, y = x.copy(), y.copy()
    if change.pop("y", None):
        y[7] = np.nan
    if change.pop("x", None):
        x[7, 1] = np.inf
    build = change.pop("build", RandomReLU)
    with pytest.raises(EnsembleError, match=message):
        ensemble.boost(build, x, y, **{"rounds": 3, **change})


@pytest.mark.slow
def test_the_boost_method_runs_gradient_boosting_on_diabetes_from_config():
    from experiments.ensembles import run_method
    from tests.conftest import compose_config

    overrides = [
        "method.regression.rounds=3",
        "method.regression.n_iter_no_change=null",
        "method.fit.epochs=3",
    ]
    cfg = compose_config("method=boost", "data=diabetes", *overrides, config_name="train_ensemble")
    rows, extra = run_method(cfg)
    assert extra["weights"] == [0.3] * 3
    assert list(rows) == ["boosted (3 members)", "one weak learner (round 0)"]
    assert all(np.isfinite(list(r.values())).all() for r in rows.values()), rows
    assert "nll" in rows["boosted (3 members)"]  # the held-out RMS residual is its std


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
@pytest.mark.slow
def test_a_keras_file_round_trip_keeps_the_combiner_and_the_std(regression, tmp_path):
    x, y = regression

    def small(i):
        keras.utils.set_random_seed(i)
        return keras.Sequential(
            [keras.Input((FEATURES,)), keras.layers.Dense(4, "relu"), keras.layers.Dense(1)]
        )

    model = ensemble.boost(small, x, y, rounds=2, epochs=2, verbose=0)
    model.save(tmp_path / "boosted.keras")
    back = keras.saving.load_model(tmp_path / "boosted.keras")
    expected, loaded = model.predict(x[:5], verbose=0), back.predict(x[:5], verbose=0)
    for key in expected:
        np.testing.assert_allclose(loaded[key], expected[key], atol=1e-6)
    combiner = ensemble.ensemble_combiner(back)
    assert combiner.residual_std == ensemble.ensemble_combiner(model).residual_std
