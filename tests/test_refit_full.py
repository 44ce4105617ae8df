"""`ensemble.refit_full`: the fitted combiner over members retrained on train + fitting rows,
checked against the combiner applied by hand (NumPy) to the new members loaded alone, and
against the guard, which must then refuse the fitting rows."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import ensemble
from combiners import MeanCombiner, StackingCombiner
from ensemble.errors import EnsembleError
from ensemble.graph.view import EnsembleView
from ensemble.train.members import trained_member


def _member(seed: int, x: np.ndarray, y: np.ndarray, name: str) -> ensemble.Member:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(12, activation="relu"),
            keras.layers.Dense(10, "softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    # Three epochs: every check below is exact (NumPy by hand, the guard's counts), whatever the
    # members' accuracy.
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    return trained_member(model, name, x, "classification")


@pytest.fixture(scope="module")
def splits(digits: tuple[np.ndarray, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    x, y = digits
    order = np.random.default_rng(0).permutation(len(x))
    parts = {"train": order[:900], "fit": order[900:1400], "test": order[1400:]}
    return {name: (x[rows], y[rows]) for name, rows in parts.items()}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def members(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[ensemble.Member]:
    """Three members trained on the train rows only, trained once for the module: each test
    builds its own ensemble over them (`build_ensemble` copies, leaving them as they are)."""
    return [_member(seed, *splits["train"], f"m{seed}") for seed in range(3)]


@pytest.fixture(scope="module")
def fitted(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], members: list[ensemble.Member]
) -> tuple[keras.Model, dict[str, ensemble.Member]]:
    (x_train, y_train), (x_fit, y_fit) = splits["train"], splits["fit"]
    model = ensemble.build_ensemble(members, StackingCombiner())
    ensemble.fit(model, x_fit, y_fit, C=1.0, calibration="temperature")
    x_all, y_all = np.concatenate([x_train, x_fit]), np.concatenate([y_train, y_fit])
    refits = {f"m{seed}": _member(seed, x_all, y_all, f"m{seed}") for seed in range(3)}
    return model, refits


@pytest.mark.slow
def test_refit_keeps_the_fitted_combiner_and_calibration(
    fitted: tuple[keras.Model, dict[str, ensemble.Member]], splits: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    model, refits = fitted
    x_test = splits["test"][0]
    before = model.predict(x_test, verbose=0)["prediction"]
    refit = ensemble.refit_full(model, list(refits.values())[::-1], splits["fit"][0])

    view, new_view = EnsembleView.of(model), EnsembleView.of(refit)
    assert new_view.member_names == view.member_names  # the model's order, whatever was given
    for old, new in zip(view.combiner.get_weights(), new_view.combiner.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    temperature = view.calibration.temperature
    assert temperature != 1.0 and new_view.calibration.temperature == temperature

    # By hand: each new member alone, the meta-model's Dense in NumPy, then the temperature.
    level_one = np.stack([refits[name].predict(x_test, verbose=0) for name in view.member_names], axis=1)
    kernel, bias = new_view.combiner.meta_model_.get_weights()
    mean_kernel = keras.ops.convert_to_numpy(new_view.combiner.mean_kernel_)  # the plain mean's block
    features = np.log(np.clip(level_one, 1e-7, 1)).reshape(len(x_test), -1)
    plain = np.log(np.clip(level_one, 1e-7, 1).mean(1))
    combined = _softmax(features @ kernel + bias + plain @ mean_kernel)
    expected = _softmax(np.log(np.clip(combined, 1e-7, 1)) / temperature)
    outputs = refit.predict(x_test, verbose=0)
    np.testing.assert_allclose(outputs["prediction"], expected, atol=1e-5)
    np.testing.assert_allclose(outputs["member_predictions"], level_one, atol=1e-6)
    # The model given is left as it was.
    np.testing.assert_array_equal(model.predict(x_test, verbose=0)["prediction"], before)


def test_the_guard_refuses_the_fitting_rows_after_a_refit(
    fitted: tuple[keras.Model, dict[str, ensemble.Member]], splits: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    model, refits = fitted
    x_fit, y_fit = splits["fit"]
    refit = ensemble.refit_full(model, refits, x_fit)
    counts = ensemble.check_leakage(refit, x_fit, allow_overlap=True)
    assert dict(counts) == {name: len(x_fit) for name in refits}
    with pytest.raises(EnsembleError, match="trained member"):
        ensemble.fit(refit, x_fit, y_fit)
    assert dict(ensemble.check_leakage(model, x_fit)) == {name: 0 for name in refits}


def test_learned_mean_weights_carry_over(
    fitted: tuple[keras.Model, dict[str, ensemble.Member]],
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    members: list[ensemble.Member],
) -> None:
    _, refits = fitted
    model = ensemble.build_ensemble(members, MeanCombiner())
    ensemble.fit(model, *splits["fit"], method="optimal")
    weights = EnsembleView.of(model).combiner.member_weights
    refit = ensemble.refit_full(model, refits, splits["fit"][0])
    assert EnsembleView.of(refit).combiner.member_weights == weights
    x_test = splits["test"][0]
    level_one = np.stack([refits[f"m{i}"].predict(x_test, verbose=0) for i in range(3)], axis=1)
    expected = np.tensordot(level_one, np.asarray(weights) / np.sum(weights), axes=([1], [0]))
    np.testing.assert_allclose(refit.predict(x_test, verbose=0)["prediction"], expected, atol=1e-5)


def test_refit_refuses_what_the_guard_could_not_know(
    fitted: tuple[keras.Model, dict[str, ensemble.Member]],
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    members: list[ensemble.Member],
) -> None:
    model, refits = fitted
    x_fit = splits["fit"][0]
    with pytest.raises(EnsembleError, match=r"Missing: \['m2'\]"):
        ensemble.refit_full(model, {"m0": refits["m0"], "m1": refits["m1"]}, x_fit)
    unrecorded = ensemble.load_member(refits["m2"].model, name="m2", output="probabilities")
    with pytest.raises(EnsembleError, match=r"\['m2'\] carry no training-row record"):
        ensemble.refit_full(model, {**refits, "m2": unrecorded}, x_fit)
    # Retrained on the train rows only: the fitting rows are not in its record.
    stale = members[2]
    with pytest.raises(EnsembleError, match=r"member\(s\) \['m2'\] hold only"):
        ensemble.refit_full(model, {**refits, "m2": stale}, x_fit)
    with pytest.raises(EnsembleError, match="listed under the name"):
        ensemble.refit_full(model, {"m0": refits["m1"], "m1": refits["m0"], "m2": refits["m2"]}, x_fit)
    with_sets = ensemble.add_conformal(model, *splits["test"], alpha=0.1)
    with pytest.raises(EnsembleError, match="conformal"):
        ensemble.refit_full(with_sets, refits, x_fit)
