"""Member architectures for the zoo, each a Hydra `_partial_` builder.

Every builder takes what only the data can tell (`x_train`, `y_train`, the
task, the output width) and returns an uncompiled Keras model that carries
its own preprocessing: features are standardised inside the model (a
`Normalization` layer), and a regressor rescales its output to target units,
so the ensemble takes raw features and predicts raw targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

__all__ = ["cnn", "linear", "mlp"]


def _standardize(x_train: np.ndarray) -> keras.layers.Layer:
    """A `Normalization` with the training mean and variance; a constant feature keeps scale 1.

    Keras' own `adapt` would divide a constant feature by ~1e-7 (digits has blank border
    pixels), and one nonzero value at test time would saturate the model.
    """
    flat = x_train.reshape(len(x_train), -1)
    variance = flat.var(axis=0)
    return keras.layers.Normalization(mean=flat.mean(axis=0), variance=np.where(variance > 0, variance, 1.0))


def _head(
    x: keras.KerasTensor, task: str, width: int, y_train: np.ndarray, logits: bool
) -> keras.KerasTensor:
    if task == "classification":
        return keras.layers.Dense(width, activation=None if logits else "softmax", name="head")(x)
    # Predict standardised targets, then rescale: the MSE gradient is well scaled.
    y = y_train.reshape(len(y_train), -1).astype("float64")
    x = keras.layers.Dense(width, name="head")(x)
    return keras.layers.Rescaling(scale=y.std(axis=0) + 1e-12, offset=y.mean(axis=0), name="to_target_units")(
        x
    )


def mlp(
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    task: str,
    width: int,
    hidden: Sequence[int] = (128,),
    dropout: float = 0.0,
    l2: float = 0.0,
    activation: str = "relu",
    logits: bool = False,
) -> keras.Model:
    """A multilayer perceptron; `hidden=()` is a linear (softmax) model."""
    inputs = keras.Input(x_train.shape[1:], name="features")
    x = _standardize(x_train)(keras.layers.Flatten()(inputs))
    for units in hidden:
        x = keras.layers.Dense(
            units,
            activation=activation,
            kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
        )(x)
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, _head(x, task, width, y_train, logits))


def linear(
    x_train: np.ndarray, y_train: np.ndarray, *, task: str, width: int, l2: float = 0.0, logits: bool = False
) -> keras.Model:
    """Multinomial logistic (or linear) regression on standardised features."""
    return mlp(x_train, y_train, task=task, width=width, hidden=(), l2=l2, logits=logits)


def cnn(
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    task: str,
    width: int,
    image_shape: Sequence[int],
    filters: Sequence[int] = (32, 64),
    dense: int = 64,
    dropout: float = 0.25,
    logits: bool = False,
) -> keras.Model:
    """A small convolutional network over features laid out as `image_shape` images."""
    shape = tuple(int(d) for d in image_shape)
    if int(np.prod(shape)) != int(np.prod(x_train.shape[1:])):
        raise ValueError(
            f"Expected {int(np.prod(shape))} features to lay out as images of shape {shape}. "
            f"Received: {int(np.prod(x_train.shape[1:]))} features."
        )
    inputs = keras.Input(x_train.shape[1:], name="features")
    x = _standardize(x_train)(keras.layers.Flatten()(inputs))
    x = keras.layers.Reshape(shape)(x)
    for n in filters:
        x = keras.layers.Conv2D(n, 3, padding="same", activation="relu")(x)
    x = (
        keras.layers.GlobalAveragePooling2D()(x)
        if shape[0] < 4
        else keras.layers.Flatten()(keras.layers.MaxPooling2D(2)(x))
    )
    x = keras.layers.Dropout(dropout)(keras.layers.Dense(dense, activation="relu")(x))
    return keras.Model(inputs, _head(x, task, width, y_train, logits))
