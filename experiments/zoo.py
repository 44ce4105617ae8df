"""The demo member zoo: small, honestly different models saved as separate runs would save them.

Each member keeps its preprocessing inside the model (a `Normalization`
layer), so the ensemble takes raw features. Formats are mixed on purpose:
a `.keras` file, a legacy HDF5 file, and a SavedModel from `model.export`.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from ensemble.data import Dataset
from ensemble.fingerprint import save_training_rows

__all__ = ["ZOO", "ZooMember", "ensure_zoo", "fit_predict", "train_member"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooMember:
    """How to build, train and save one demo member."""

    filename: str
    build: Callable[[int, int, np.ndarray], keras.Model]
    epochs: int
    seed: int


def _normalized_input(features: int, x_train: np.ndarray) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    inputs = keras.Input((features,), name="pixels")
    # A feature constant in training (digits has blank border pixels) keeps scale 1, as in
    # sklearn's StandardScaler: Normalization's own adapt would divide it by 1e-7, and one
    # nonzero test value would then saturate the member into a probability-0 mistake.
    variance = x_train.var(axis=0)
    variance = np.where(variance > 0, variance, 1.0)
    normalize = keras.layers.Normalization(mean=x_train.mean(axis=0), variance=variance)
    return inputs, normalize(inputs)


def _mlp(features: int, classes: int, x_train: np.ndarray) -> keras.Model:
    inputs, x = _normalized_input(features, x_train)
    x = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


def _wide_logits(features: int, classes: int, x_train: np.ndarray) -> keras.Model:
    inputs, x = _normalized_input(features, x_train)
    x = keras.layers.Dropout(0.2)(keras.layers.Dense(256, activation="relu")(x))
    return keras.Model(inputs, keras.layers.Dense(classes)(x))  # emits logits


def _linear(features: int, classes: int, x_train: np.ndarray) -> keras.Model:
    inputs, x = _normalized_input(features, x_train)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


ZOO: dict[str, ZooMember] = {
    "mlp": ZooMember("mlp.keras", _mlp, epochs=40, seed=1),
    "wide": ZooMember("wide.h5", _wide_logits, epochs=30, seed=2),
    "linear": ZooMember("linear_savedmodel", _linear, epochs=60, seed=3),
}


def ensure_zoo(directory: str, data: Dataset, names: list[str] | None = None) -> list[str]:
    """Train and save the zoo members missing from `directory`; returns the ones it trained."""
    if data.task != "classification" or data.classes is None:
        raise ValueError(f"The demo zoo holds classifiers; dataset {data.name!r} is {data.task}.")
    os.makedirs(directory, exist_ok=True)
    trained = []
    for name in names or list(ZOO):
        path = os.path.join(directory, ZOO[name].filename)
        if os.path.exists(path):
            continue
        log.info("Training zoo member %r into %s", name, path)
        model = train_member(name, data.x_train, data.y_train, data.classes)
        save_training_rows(path, data.x_train)  # what the leakage guard checks; before the
        _save(model, path)                       # model, so no member is ever without it
        trained.append(name)
    return trained


def train_member(name: str, x: np.ndarray, y: np.ndarray, classes: int) -> keras.Model:
    """A freshly trained zoo member `name` on `(x, y)`, seeded by its spec."""
    spec = ZOO[name]
    keras.utils.set_random_seed(spec.seed)
    model = spec.build(x.shape[1], classes, x)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=emits_logits(model)),
    )
    model.fit(x, y, epochs=spec.epochs, batch_size=64, verbose=0)
    return model


def emits_logits(model: keras.Model) -> bool:
    return model.layers[-1].activation is keras.activations.linear


def fit_predict(name: str, classes: int) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """For out-of-fold stacking: train a fresh `name` on some rows, return probabilities on others."""

    def run(x_train: np.ndarray, y_train: np.ndarray, x_predict: np.ndarray) -> np.ndarray:
        model = train_member(name, x_train, y_train, classes)
        output = np.asarray(model.predict(x_predict, batch_size=256, verbose=0), dtype="float64")
        if emits_logits(model):
            output = np.exp(output - output.max(-1, keepdims=True))
            output /= output.sum(-1, keepdims=True)
        return output

    return run


def _save(model: keras.Model, path: str) -> None:
    # Write beside, then rename: an interrupted run never leaves a half-written member.
    root, ext = os.path.splitext(path)
    partial = f"{root}.partial{ext}"
    shutil.rmtree(partial, ignore_errors=True)
    if ext in (".keras", ".h5"):
        model.save(partial)
    else:
        model.export(partial, verbose=False)
    os.replace(partial, path)
