"""Training a zoo member from its recipe (`conf/member`): early stopping on its own validation
split finds the epoch count, then a fresh copy trains that many epochs on every row."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig
from scipy.special import softmax
from sklearn.model_selection import train_test_split

from ensemble import EnsembleError
from ensemble.data import Dataset
from ensemble.fitting import FitPredict
from ensemble.types import Data

__all__ = ["REFIT", "fit_predict", "train_member"]

log = logging.getLogger(__name__)

REFIT = True  # train.refit when a member's config leaves it out


def train_member(name: str, spec: DictConfig, x: np.ndarray, y: np.ndarray, data: Dataset) -> keras.Model:
    """A freshly trained member: early stopping on a validation split of `(x, y)` finds how
    many epochs it should train; with `train.refit` (the default) a fresh copy then trains
    that many epochs on every row of `(x, y)`, the validation rows included."""
    train = spec.train
    keras.utils.set_random_seed(int(train.seed))
    classification = data.task == "classification"
    x_fit, x_val, y_fit, y_val = train_test_split(
        x,
        y,
        test_size=train.validation_fraction,
        random_state=int(train.seed),
        stratify=y if classification else None,
    )
    model = _compiled(name, spec, x_fit, y_fit, data)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=int(train.patience), restore_best_weights=True
    )
    history = model.fit(
        x_fit,
        _targets(y_fit, data),
        validation_data=(x_val, _targets(y_val, data)),
        epochs=int(train.epochs),
        batch_size=int(train.batch_size),
        callbacks=[stop],
        verbose=0,
    )
    losses = history.history["val_loss"]
    best = int(np.argmin(losses)) + 1
    log.info("Zoo member %r: best val_loss %.4f after %d of %d epochs", name, min(losses), best, len(losses))
    if not train.get("refit", REFIT):
        return model
    # Early stopping on ~50 validation rows is a noisy choice of weights, and it keeps those
    # rows out of training; a refit on every row for the chosen number of epochs uses them.
    keras.utils.set_random_seed(int(train.seed))
    model = _compiled(name, spec, x, y, data)
    model.fit(x, _targets(y, data), epochs=best, batch_size=int(train.batch_size), verbose=0)
    log.info("Zoo member %r: refitted on all %d rows for %d epochs", name, len(x), best)
    return model


def _compiled(name: str, spec: DictConfig, x: np.ndarray, y: np.ndarray, data: Dataset) -> keras.Model:
    """The member's architecture built on `(x, y)` (its preprocessing adapted to `x`), compiled."""
    width = _classes(data) if data.task == "classification" else int(np.reshape(y, (len(y), -1)).shape[1])
    try:
        model = instantiate(spec.build)(x, y, task=data.task, width=width)
    except Exception as error:
        raise EnsembleError(f"Zoo member {name!r}: its build config fails: {error}") from error
    logits = bool(spec.build.get("logits", False))
    smoothing = float(spec.train.get("label_smoothing", 0.0))
    if data.task != "classification":
        loss: Any = keras.losses.MeanSquaredError()
    else:
        # Smoothed targets bound a member's confidence, so one wrong answer cannot cost it
        # tens of nats of NLL; the fitted combiner recalibrates the ensemble.
        loss = keras.losses.CategoricalCrossentropy(from_logits=logits, label_smoothing=smoothing)
    model.compile(optimizer=keras.optimizers.Adam(float(spec.train.learning_rate)), loss=loss)
    return model


def _targets(y: np.ndarray, data: Dataset) -> np.ndarray:
    """One-hot rows for a classifier (its loss takes smoothed one-hot targets), else `y`."""
    return np.eye(_classes(data))[y] if data.task == "classification" else y


def _classes(data: Dataset) -> int:
    if data.classes is None:
        raise EnsembleError(f"Dataset {data.name!r}: a classification dataset without a class count.")
    return data.classes


def fit_predict(name: str, spec: DictConfig, data: Dataset) -> FitPredict:
    """The member's builder for out-of-fold stacking (`ensemble.fit_out_of_fold`): train a fresh
    member on some rows, predict others (probabilities for a classifier)."""

    def run(x_train: Data, y_train: np.ndarray, x_predict: Data) -> np.ndarray:
        model = train_member(name, spec, np.asarray(x_train), y_train, data)
        output = np.asarray(model.predict(x_predict, batch_size=256, verbose=0), dtype="float64")
        return softmax(output, axis=-1) if spec.build.get("logits", False) else output

    return run
