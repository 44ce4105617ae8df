"""ensemble.soup: weight averages checked against NumPy (softmax regressions, whose forward pass
and greedy recipe are a few lines of NumPy here)."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from sklearn.metrics import log_loss

import ensemble
from combiners import MeanCombiner
from ensemble import EnsembleError


def softmax_regression(
    weights: tuple[np.ndarray, np.ndarray] | None = None, classes: int = 10
) -> keras.Model:
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(classes, activation="softmax")])
    if weights is not None:
        model.set_weights(list(weights))
    return model


def numpy_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    z = x @ kernel + bias
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def recipes(digits):
    """Five fine-tunings of one softmax regression (one initialisation), one of them spoiled."""
    x, y = digits
    base = softmax_regression()
    base.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    keras.utils.set_random_seed(0)
    base.fit(x[:600], y[:600], epochs=1, verbose=0)
    weights = []
    for i in range(5):
        model = softmax_regression(tuple(base.get_weights()))
        model.compile(keras.optimizers.Adam(0.1), "sparse_categorical_crossentropy")
        rows = np.random.default_rng(i).choice(600, 200, replace=False)
        model.fit(x[rows], y[rows], epochs=10, verbose=0)
        kernel, bias = model.get_weights()
        if i == 3:  # far from the others' basin: a greedy soup must leave it out
            kernel = kernel + np.random.default_rng(9).normal(0, 3.0, kernel.shape).astype("float32")
        weights.append((kernel, bias))
    return weights


def members(weights):
    return [
        ensemble.load_member(softmax_regression(w), name=f"m{i}", output="probabilities")
        for i, w in enumerate(weights)
    ]


@pytest.mark.slow
def test_uniform_soup_is_the_mean_of_the_weights(digits, recipes):
    x, _ = digits
    good = [w for i, w in enumerate(recipes) if i != 3]
    result = ensemble.soup(members(good))
    kernel = np.mean([k for k, _ in good], axis=0)
    bias = np.mean([b for _, b in good], axis=0)
    np.testing.assert_allclose(result.model.get_weights()[0], kernel, atol=1e-7)
    np.testing.assert_allclose(result(x[700:]), numpy_forward(x[700:], kernel, bias), atol=1e-6)
    assert result.ingredients == ["m0", "m1", "m2", "m3"]
    assert isinstance(result, ensemble.Member) and result.output_kind == "probabilities"


def test_greedy_soup_follows_the_recipe_in_numpy(digits, recipes):
    x, y = digits
    held_x, held_y = x[600:1000], y[600:1000]

    def score(chosen):
        kernel = np.mean([recipes[i][0] for i in chosen], axis=0)
        bias = np.mean([recipes[i][1] for i in chosen], axis=0)
        return log_loss(held_y, numpy_forward(held_x, kernel, bias), labels=range(10))

    order = sorted(range(5), key=lambda i: score([i]))
    chosen = [order[0]]
    for i in order[1:]:
        if score([*chosen, i]) <= score(chosen):
            chosen.append(i)
    assert 3 not in chosen and len(chosen) >= 2
    result = ensemble.soup(members(recipes), method="greedy", x=held_x, y=held_y)
    assert result.ingredients == [f"m{i}" for i in chosen]
    # The greedy soup is no worse than its best member on the rows it was chosen on.
    p = np.asarray(result(held_x))
    assert log_loss(held_y, p, labels=range(10)) <= score([order[0]]) + 1e-6


def test_a_worse_soup_warns(digits, recipes):
    x, y = digits
    with pytest.warns(UserWarning, match="worse than its best member"):
        ensemble.soup(members(recipes), x=x[600:1000], y=y[600:1000])  # the spoiled one included
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two that average well (a greedy soup's first two)
        ensemble.soup(members([recipes[1], recipes[4]]), x=x[600:1000], y=y[600:1000])


def test_the_soup_builds_saves_and_reloads_like_a_member(digits, recipes, tmp_path):
    x, _ = digits
    result = ensemble.soup(members(recipes[:2]), name="soup")
    model = ensemble.build_ensemble([result, *members(recipes[2:3])], MeanCombiner())
    assert model.predict(x[:5], verbose=0)["member_predictions"].shape == (5, 2, 10)
    result.model.save(tmp_path / "soup.keras")
    again = ensemble.load_member(tmp_path / "soup.keras", name="again")
    np.testing.assert_allclose(again(x[:50]), result(x[:50]), atol=1e-7)


def test_regression_soup_scores_by_squared_error():
    x = np.random.default_rng(0).normal(size=(200, 3)).astype("float32")
    y = x @ np.array([1.0, -2.0, 0.5], dtype="float32")
    models = []
    for name, shift in (("plus", 0.2), ("minus", -0.2), ("far", 5.0)):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.set_weights([np.array([[1.0], [-2.0], [0.5]], "float32") + shift, np.zeros(1, "float32")])
        models.append(ensemble.load_member(model, name=name))
    result = ensemble.soup(models, method="greedy", x=x, y=y)
    assert sorted(result.ingredients) == ["minus", "plus"]  # their mean is exact; the far one spoils it
    np.testing.assert_allclose(np.asarray(result(x)).ravel(), y, atol=1e-5)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda m: {"members": [m[0], keras.Sequential([keras.Input((64,)), keras.layers.Dense(5)])]},
            "differ",
        ),
        (lambda m: {"members": m, "method": "best"}, "Expected method"),
        (lambda m: {"members": m, "method": "greedy"}, "pass x and y"),
        (lambda m: {"members": []}, "at least one"),
    ],
)
def test_bad_input_is_named(recipes, make, match):
    with pytest.raises(EnsembleError, match=match):
        ensemble.soup(**make(members(recipes[:2])))
