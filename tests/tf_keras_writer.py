"""Writes small tf_keras 2.x models the way Keras 2 research code saved them, with predictions.

Run in its own process (`python tests/tf_keras_writer.py OUTDIR`): it imports
tf_keras, never Keras 3. For each model NAME it writes `NAME.keras`, `NAME.h5`,
the SavedModel directory `NAME_sm/`, the inputs `NAME_x*.npy` and tf_keras' own
predictions `NAME_y.npy`, the reference the Keras 3 loader is checked against.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.pop("TF_USE_LEGACY_KERAS", None)

import numpy as np
import tensorflow as tf
import tf_keras as k2

__all__ = ["MODELS", "SAVED_MODELS", "main"]


def _dense() -> tuple[Any, list[np.ndarray]]:
    """The common pattern: `Dense(..., input_shape=...)`, a softmax classifier."""
    model = k2.Sequential(
        [
            k2.layers.Dense(16, activation="relu", input_shape=(8,)),
            k2.layers.Dense(8, activation="tanh", kernel_regularizer=k2.regularizers.l2(1e-3)),
            k2.layers.Dense(3, activation="softmax"),
        ]
    )
    return model, [np.random.default_rng(0).normal(size=(12, 8)).astype("float32")]


def _functional() -> tuple[Any, list[np.ndarray]]:
    """A functional model (class `Functional`) with two named inputs."""
    a = k2.Input(shape=(5,), name="left")
    b = k2.Input(shape=(3,), name="right")
    h = k2.layers.Concatenate()([k2.layers.Dense(6, activation="relu")(a), b])
    h = k2.layers.Dense(4, kernel_initializer=k2.initializers.GlorotNormal(seed=1))(h)
    out = k2.layers.Activation("softmax")(h)
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(10, 5)).astype("float32"), rng.normal(size=(10, 3)).astype("float32")]
    return k2.Model([a, b], out), xs


def _batchnorm() -> tuple[Any, list[np.ndarray]]:
    """BatchNormalization with moving statistics away from 0/1, and Dropout."""
    model = k2.Sequential(
        [
            k2.layers.Dense(12, input_shape=(6,)),
            k2.layers.BatchNormalization(),
            k2.layers.Activation("relu"),
            k2.layers.Dropout(0.3),
            k2.layers.Dense(1),
        ]
    )
    rng = np.random.default_rng(2)
    x = rng.normal(loc=2.0, scale=3.0, size=(32, 6)).astype("float32")
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, rng.normal(size=(32, 1)), epochs=2, verbose=0)  # moving mean/variance move
    return model, [x[:10]]


def _conv() -> tuple[Any, list[np.ndarray]]:
    """A small Conv2D image classifier."""
    model = k2.Sequential(
        [
            k2.layers.Conv2D(4, 3, activation="relu", padding="same", input_shape=(8, 8, 1)),
            k2.layers.MaxPooling2D(),
            k2.layers.Conv2D(6, 3, activation="relu"),
            k2.layers.GlobalAveragePooling2D(),
            k2.layers.Dense(5, activation="softmax"),
        ]
    )
    return model, [np.random.default_rng(3).normal(size=(6, 8, 8, 1)).astype("float32")]


def _sequence() -> tuple[Any, list[np.ndarray]]:
    """Embedding + LSTM, the classic text classifier."""
    model = k2.Sequential(
        [
            k2.layers.Embedding(20, 4, input_length=7),
            k2.layers.LSTM(5),
            k2.layers.Dense(2, activation="softmax"),
        ]
    )
    return model, [np.random.default_rng(4).integers(0, 20, size=(6, 7)).astype("int32")]


def _nested() -> tuple[Any, list[np.ndarray]]:
    """A Sequential base inside a functional model (transfer learning), a Bidirectional GRU."""
    base = k2.Sequential([k2.layers.Dense(6, activation="relu", input_shape=(4, 3))], name="base")
    x = k2.Input(shape=(4, 3))
    h = k2.layers.Bidirectional(k2.layers.GRU(3))(base(x))
    out = k2.layers.Dense(2, activation="softmax", dtype="float32")(h)
    return k2.Model(x, out), [np.random.default_rng(5).normal(size=(5, 4, 3)).astype("float32")]


def _mixed() -> tuple[Any, list[np.ndarray]]:
    """Mixed precision: hidden layers with a `Policy("mixed_float16")` object in their config."""
    model = k2.Sequential(
        [
            k2.layers.Dense(8, activation="relu", input_shape=(4,), dtype="mixed_float16"),
            k2.layers.Dense(2, activation="softmax", dtype="float32"),
        ]
    )
    return model, [np.random.default_rng(6).normal(size=(5, 4)).astype("float32")]


def _lambda() -> tuple[Any, list[np.ndarray]]:
    """A `Lambda` layer (Python bytecode in the config: loads only with safe_mode=False)."""
    model = k2.Sequential([k2.layers.Lambda(lambda t: t * 2.0 + 1.0, input_shape=(3,)), k2.layers.Dense(2)])
    return model, [np.random.default_rng(7).normal(size=(4, 3)).astype("float32")]


def _tf_op() -> tuple[Any, list[np.ndarray]]:
    """A raw TensorFlow op in a functional model: tf_keras records a `TFOpLambda` layer."""
    x = k2.Input(shape=(3,))
    out = k2.layers.Dense(2)(tf.nn.relu(x))
    return k2.Model(x, out), [np.random.default_rng(8).normal(size=(4, 3)).astype("float32")]


MODELS: dict[str, Callable[[], tuple[Any, list[np.ndarray]]]] = {
    "dense": _dense,
    "functional": _functional,
    "batchnorm": _batchnorm,
    "conv": _conv,
    "sequence": _sequence,
    "nested": _nested,
    "mixed": _mixed,
    "lambda": _lambda,
    "tf_op": _tf_op,
}
SAVED_MODELS = ("dense", "functional", "batchnorm", "conv", "sequence", "tf_op")
"""The models also written as a SavedModel (the slowest format to write)."""


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, build in MODELS.items():
        tf.random.set_seed(0)
        model, xs = build()
        y = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
        np.save(out / f"{name}_y.npy", y)
        for i, x in enumerate(xs):
            np.save(out / f"{name}_x{i}.npy", x)
        model.save(out / f"{name}.keras")
        model.save(out / f"{name}.h5")
        if name in SAVED_MODELS:
            model.save(out / f"{name}_sm", save_format="tf")
    (out / "versions.txt").write_text(f"tf_keras {k2.__version__}\ntensorflow {tf.__version__}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
