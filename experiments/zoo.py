"""The member zoo from config (`conf/zoo`, `conf/member`): trained properly, saved as separate
runs would save them, with a record of their training rows for the leakage guard.

Each member keeps its preprocessing inside the model, trains with early
stopping on its own validation split (best weights kept), and is saved in its
configured format: a `.keras` file, a legacy `.h5` file, or a SavedModel
directory (`model.export`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from typing import Any, cast

import keras
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from scipy.special import softmax
from sklearn.model_selection import train_test_split

from ensemble import EnsembleError
from ensemble.data import Dataset
from ensemble.fingerprint import data_fingerprint, save_training_rows

__all__ = ["EXTENSIONS", "ensure_zoo", "fit_predict", "member_entries", "stale_members", "train_member"]

log = logging.getLogger(__name__)

EXTENSIONS = {"keras": ".keras", "h5": ".h5", "saved_model": "_savedmodel"}


def member_entries(zoo: DictConfig, data: Dataset) -> DictConfig:
    """The zoo as a members config (`name: {source, format, options}`) for `load_member`.

    Members whose architecture cannot take this data (a CNN over images of
    another size) are left out, with a log line.
    """
    entries: dict[str, Any] = {}
    for name, spec in zoo.members.items():
        reason = _fits_reason(spec, data)
        if reason is not None:
            log.info("Zoo member %r skipped: %s", name, reason)
            continue
        output = None
        if data.task == "classification":
            output = "logits" if spec.build.get("logits", False) else "probabilities"
        entries[str(name)] = {
            "source": _path(zoo.dir, str(name), spec),
            "format": spec.format,
            "options": {"output": output} if output else {},
        }
    return OmegaConf.create(entries)


def ensure_zoo(zoo: DictConfig, data: Dataset, directory: str | None = None) -> list[str]:
    """Train and save the zoo members missing from `directory` (default `zoo.dir`) on
    `data.x_train`; returns the names it trained."""
    directory = directory or str(zoo.dir)
    os.makedirs(directory, exist_ok=True)
    trained = []
    for name, recipe in _stale_recipes(zoo, data, directory).items():
        spec = zoo.members[name]
        path = _path(directory, name, spec)
        if os.path.exists(path):
            log.info("Zoo member %r: its config or data changed since it was trained; retraining", name)
        log.info("Training zoo member %r (%s) into %s", name, spec.build._target_, path)
        model = train_member(str(name), spec, data.x_train, data.y_train, data)
        # The record of training rows first (a member is never without one), then the model,
        # then the recipe: written last, it marks the member complete; until then a rerun
        # retrains it.
        _remove(path + RECIPE_SUFFIX)
        save_training_rows(path, data.x_train)
        _save(model, path, spec.format)
        with open(path + RECIPE_SUFFIX, "w") as f:
            f.write(recipe)
        trained.append(str(name))
    return trained


def stale_members(zoo: DictConfig, data: Dataset, directory: str | None = None) -> list[str]:
    """The zoo members `ensure_zoo` would train: missing from `directory`, or trained from
    another config or other rows (their recipe differs)."""
    return list(_stale_recipes(zoo, data, directory))


def _stale_recipes(zoo: DictConfig, data: Dataset, directory: str | None) -> dict[str, str]:
    """The stale members' names, each with the recipe it is to be trained from."""
    directory = directory or str(zoo.dir)
    rows = data_fingerprint(data.x_train)  # once: every member trains on the same rows
    stale = {}
    for name, spec in zoo.members.items():
        if _fits_reason(spec, data) is not None:
            continue
        path, recipe = _path(directory, str(name), spec), _recipe(spec, data, rows)
        if not (os.path.exists(path) and _saved_recipe(path) == recipe):
            stale[str(name)] = recipe
    return stale


RECIPE_SUFFIX = ".recipe.yaml"
REFIT = True  # train.refit when a member's config leaves it out


def _recipe(spec: DictConfig, data: Dataset, rows: str) -> str:
    """What a member was trained from: its config and its training rows (their fingerprint,
    `rows`). A change retrains it."""
    member = cast(dict[str, Any], OmegaConf.to_container(spec, resolve=True))
    member.setdefault("train", {}).setdefault("refit", REFIT)  # the default, written out
    return OmegaConf.to_yaml({"member": member, "data": data.name, "rows": rows})


def _saved_recipe(path: str) -> str | None:
    try:
        with open(path + RECIPE_SUFFIX) as f:
            return f.read()
    except OSError:
        return None


def train_member(name: str, spec: DictConfig, x: np.ndarray, y: np.ndarray, data: Dataset) -> keras.Model:
    """A freshly trained member: early stopping on a validation split of `(x, y)` finds how
    many epochs it should train; with `train.refit` (the default) a fresh copy then trains
    that many epochs on every row of `(x, y)`, the validation rows included."""
    train = spec.train
    keras.utils.set_random_seed(int(train.seed))
    classification = data.task == "classification"
    x_fit, x_val, y_fit, y_val = train_test_split(
        x, y, test_size=train.validation_fraction, random_state=int(train.seed),
        stratify=y if classification else None,
    )
    model = _compiled(name, spec, x_fit, y_fit, data)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=int(train.patience), restore_best_weights=True
    )
    history = model.fit(
        x_fit, _targets(y_fit, data), validation_data=(x_val, _targets(y_val, data)),
        epochs=int(train.epochs), batch_size=int(train.batch_size), callbacks=[stop], verbose=0,
    )
    losses = history.history["val_loss"]
    best = int(np.argmin(losses)) + 1
    log.info("Zoo member %r: best val_loss %.4f after %d of %d epochs", name, min(losses), best,
             len(losses))
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
    width = int(data.classes) if data.task == "classification" else int(np.reshape(y, (len(y), -1)).shape[1])
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
    return np.eye(int(data.classes))[y] if data.task == "classification" else y


def fit_predict(name: str, spec: DictConfig, data: Dataset) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """For out-of-fold stacking: train a fresh member on some rows, predict others (probabilities
    for a classifier)."""

    def run(x_train: np.ndarray, y_train: np.ndarray, x_predict: np.ndarray) -> np.ndarray:
        model = train_member(name, spec, x_train, y_train, data)
        output = np.asarray(model.predict(x_predict, batch_size=256, verbose=0), dtype="float64")
        return softmax(output, axis=-1) if spec.build.get("logits", False) else output

    return run


def _path(directory: str, name: str, spec: DictConfig) -> str:
    if spec.format not in EXTENSIONS:
        raise EnsembleError(
            f"Zoo member {name!r}: format expected one of {sorted(EXTENSIONS)}. Received: {spec.format!r}"
        )
    return os.path.join(str(directory), name + EXTENSIONS[spec.format])


def _fits_reason(spec: DictConfig, data: Dataset) -> str | None:
    shape = spec.build.get("image_shape")
    features = int(np.prod(data.x_train.shape[1:]))
    if shape is not None and int(np.prod(shape)) != features:
        return f"it reads images of shape {list(shape)}; the data has {features} features"
    return None


def _save(model: keras.Model, path: str, fmt: str) -> None:
    # Written beside, then swapped in: an interrupted run never leaves a half-written member.
    root, ext = os.path.splitext(path)
    partial, retired = f"{root}.partial{ext}", f"{root}.retired{ext}"
    for leftover in (partial, retired):
        _remove(leftover)
    if fmt == "saved_model":
        model.export(partial, verbose=False)
    else:
        model.save(partial)
    if os.path.isdir(path):  # os.replace cannot replace a non-empty directory
        os.rename(path, retired)
    os.replace(partial, path)
    _remove(retired)


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
