"""Training a zoo member from its recipe (`conf/member`): early stopping on its own validation
split finds the epoch count, then a fresh copy trains that many epochs on every row; or, with
`train.snapshot`, one run under a restarted cosine learning rate whose snapshots are members."""

from __future__ import annotations

import logging
from typing import Any, cast

import keras
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from scipy.special import softmax
from sklearn.model_selection import train_test_split

from ensemble import EnsembleError
from ensemble.data import Dataset
from ensemble.fitting import FitPredict
from ensemble.train.snapshots import CyclicCosine
from ensemble.types import Data

__all__ = ["REFIT", "fit_predict", "train_member", "train_snapshots"]

log = logging.getLogger(__name__)

REFIT = True  # train.refit when a member's config leaves it out


def train_member(
    name: str,
    spec: DictConfig,
    x: np.ndarray,
    y: np.ndarray,
    data: Dataset,
    runs: dict[str, list[keras.Model]] | None = None,
) -> keras.Model:
    """A freshly trained member: early stopping on a validation split of `(x, y)` finds how
    many epochs it should train; with `train.refit` (the default) a fresh copy then trains
    that many epochs on every row of `(x, y)`, the validation rows included.

    With `train.snapshot` the member is snapshot `index` of one cyclic cosine run
    (`train_snapshots`); `runs` caches the runs by `run_key`, so members of one run train it once.
    """
    train = spec.train
    if train.get("snapshot") is not None:
        key, cycles = run_key(spec), int(train.snapshot.run.cycles)
        if not 0 <= int(train.snapshot.index) < cycles:
            raise EnsembleError(
                f"Zoo member {name!r}: snapshot index {train.snapshot.index} of a run of {cycles} cycles."
            )
        runs = {} if runs is None else runs
        if key not in runs:
            runs[key] = train_snapshots(name, spec, x, y, data)
        return runs[key][int(train.snapshot.index)]
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


def run_key(spec: DictConfig) -> str:
    """What the snapshots of one run share: the member's config but its `train.snapshot.index`."""
    member = cast(dict[str, Any], OmegaConf.to_container(spec, resolve=True))
    member["train"]["snapshot"].pop("index", None)
    return OmegaConf.to_yaml(member, sort_keys=True)


def train_snapshots(
    name: str, spec: DictConfig, x: np.ndarray, y: np.ndarray, data: Dataset
) -> list[keras.Model]:
    """The snapshots of one run (Huang et al. 2017) on every row of `(x, y)`: `run.cycles`
    cycles of `run.epochs_per_cycle` epochs, the learning rate falling from
    `run.max_learning_rate` along a cosine batch by batch and restarting each cycle
    (`ensemble.train.snapshots.CyclicCosine`), a snapshot at each cycle's end. `run.optimizer`:
    sgd (momentum 0.9, as the paper) or adam. No early stopping: every cycle makes a member."""
    snapshot, train = spec.train.snapshot, spec.train
    cycles, per_cycle = int(snapshot.run.cycles), int(snapshot.run.epochs_per_cycle)
    top, optimizer = float(snapshot.run.max_learning_rate), str(snapshot.run.optimizer)
    if optimizer not in ("sgd", "adam") or cycles < 1 or per_cycle < 1 or not top > 0:
        raise EnsembleError(
            f"Zoo member {name!r}: train.snapshot.run expected optimizer sgd|adam, cycles >= 1, "
            f"epochs_per_cycle >= 1, max_learning_rate > 0. Received: {dict(snapshot.run)}"
        )
    keras.utils.set_random_seed(int(train.seed))
    model = _compiled(
        name, spec, x, y, data,
        keras.optimizers.SGD(top, momentum=0.9) if optimizer == "sgd" else keras.optimizers.Adam(top),
    )  # fmt: skip
    schedule = CyclicCosine(top, per_cycle)
    epochs = cycles * per_cycle
    model.fit(
        x, _targets(y, data), epochs=epochs, batch_size=int(train.batch_size), callbacks=[schedule], verbose=0
    )
    log.info("Zoo member %r: one run of %d cycles (%d epochs), a snapshot per cycle", name, cycles, epochs)
    members = []
    for weights in schedule.snapshots:
        member = keras.models.clone_model(model)
        member.set_weights(weights)
        members.append(member)
    return members


def _compiled(
    name: str, spec: DictConfig, x: np.ndarray, y: np.ndarray, data: Dataset, optimizer: Any = None
) -> keras.Model:
    """The member's architecture built on `(x, y)` (its preprocessing adapted to `x`), compiled
    (with `optimizer`, default Adam at `train.learning_rate`)."""
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
    model.compile(optimizer=optimizer or keras.optimizers.Adam(float(spec.train.learning_rate)), loss=loss)
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
