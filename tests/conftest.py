"""Shared fixtures: quiet TensorFlow, small seeded models and data."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from collections.abc import Callable  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

FEATURES = 8
CLASSES = 3


def dense_classifier(
    seed: int, *, features: int = FEATURES, classes: int = CLASSES, final: str | None = "softmax",
    name: str | None = None, dropout: float = 0.0,
) -> keras.Model:
    """A small Sequential with random (seeded) weights; `final=None` emits logits."""
    keras.utils.set_random_seed(seed)
    layers: list[keras.layers.Layer] = [keras.Input((features,)), keras.layers.Dense(16, activation="tanh")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(classes, activation=final))
    return keras.Sequential(layers, name=name)


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(7, FEATURES)).astype("float32")


@pytest.fixture
def classifier() -> Callable[..., keras.Model]:
    return dense_classifier


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-7, 1.0))).sum(-1)
