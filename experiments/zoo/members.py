"""The member zoo from config (`conf/zoo`, `conf/member`): which members fit the data, where
they live, which are stale, and training the missing ones as separate runs would save them,
each with a record of its training rows for the leakage guard.

Each member keeps its preprocessing inside the model, trains with early
stopping on its own validation split (best weights kept), and is saved in its
configured format: a `.keras` file, a legacy `.h5` file, or a SavedModel
directory (`model.export`). Its recipe records the class labels it learned, in its column
order; the members config passes them on (`load_member(..., classes=...)`), so an ensemble
aligns its members by label.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, cast

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from ensemble import EnsembleError, record_training_rows
from ensemble.atomic import atomic_path
from ensemble.data import Dataset
from ensemble.members.training_rows import is_hash_record, load_training_rows
from ensemble.rows import data_fingerprint
from experiments.zoo.training import REFIT, run_key, train_member

__all__ = [
    "EXTENSIONS",
    "RECIPE_SUFFIX",
    "ensure_zoo",
    "member_entries",
    "stale_members",
    "training_rows",
    "zoo_directory",
]

log = logging.getLogger(__name__)

EXTENSIONS = {"keras": ".keras", "h5": ".h5", "saved_model": "_savedmodel"}
RECIPE_SUFFIX = ".recipe.yaml"


def zoo_directory(zoo: DictConfig, data: Dataset) -> str:
    """Where the zoo of `data` lives: `zoo.dir`, or by default `outputs/zoo/<data name>`."""
    return str(zoo.dir) if zoo.get("dir") else os.path.join("outputs", "zoo", data.name)


def member_entries(zoo: DictConfig, data: Dataset, directory: str) -> DictConfig:
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
        options: dict[str, Any] = {}
        path = _path(directory, str(name), spec)
        if data.task == "classification":
            options["output"] = "logits" if spec.build.get("logits", False) else "probabilities"
            classes = _recipe_classes(path) or data.class_names
            if classes:
                options["classes"] = list(classes)
        entries[str(name)] = {"source": path, "format": spec.format, "options": options}
    return OmegaConf.create(entries)


def ensure_zoo(zoo: DictConfig, data: Dataset, directory: str) -> list[str]:
    """Train and save the zoo members missing from `directory` (or stale there) on
    `data.x_train`; returns the names it trained."""
    os.makedirs(directory, exist_ok=True)
    trained = []
    stale = _stale_recipes(zoo, data, directory)
    runs: dict[str, list[keras.Model]] = {}  # snapshot runs (train.snapshot), each trained once
    for name, spec in zoo.members.items():
        path = _path(directory, str(name), spec)
        if str(name) in stale or not os.path.exists(path + RECIPE_SUFFIX):
            continue
        record = load_training_rows(path)
        if record is None or is_hash_record(record):  # a zoo of an earlier version: exact hashes
            log.info("Zoo member %r: recording its training rows for the leakage guard's tolerance", name)
            record_training_rows(path, training_rows(spec, data)[0])  # as its recipe says
    for name, recipe in stale.items():
        spec = zoo.members[name]
        path = _path(directory, name, spec)
        if os.path.exists(path):
            log.info("Zoo member %r: its config or data changed since it was trained; retraining", name)
        log.info("Training zoo member %r (%s) into %s", name, spec.build._target_, path)
        x, y = training_rows(spec, data)
        model = train_member(str(name), spec, x, y, data, runs)
        # The record of training rows first (a member is never without one), then the model,
        # then the recipe: written last, it marks the member complete; until then a rerun
        # retrains it.
        _remove(path + RECIPE_SUFFIX)
        record_training_rows(path, x)
        _save(model, path, spec.format)
        record_training_rows(path, x)  # again, now the model is there: bound to its content
        with open(path + RECIPE_SUFFIX, "w") as f:
            f.write(recipe)
        trained.append(str(name))
    return trained


def training_rows(spec: DictConfig, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The rows a member trains on: the train split, or with `train.bootstrap` a bootstrap
    sample of it (as many rows, drawn with replacement, seeded by `train.seed`)."""
    if not spec.train.get("bootstrap", False):
        return data.x_train, data.y_train
    rows = np.random.default_rng(int(spec.train.seed)).integers(0, len(data.x_train), len(data.x_train))
    return data.x_train[rows], data.y_train[rows]


def stale_members(zoo: DictConfig, data: Dataset, directory: str) -> list[str]:
    """The zoo members `ensure_zoo` would train: missing from `directory`, or trained from
    another config or other rows (their recipe differs), and every snapshot of a run
    (`train.snapshot`) one of whose snapshots is: the run retrains once, for all of them."""
    return list(_stale_recipes(zoo, data, directory))


def _stale_recipes(zoo: DictConfig, data: Dataset, directory: str) -> dict[str, str]:
    """The stale members' names, each with the recipe it is to be trained from."""
    rows = data_fingerprint(data.x_train)  # once: every member trains on the same rows
    recipes, stale_runs = {}, set()
    for name, spec in zoo.members.items():
        if _fits_reason(spec, data) is not None:
            continue
        path, recipe = _path(directory, str(name), spec), _recipe(spec, data, rows)
        recipes[str(name)] = recipe
        if not (os.path.exists(path) and _saved_recipe(path) == recipe):
            stale_runs.add(_run_of(str(name), spec))
    return {
        name: recipe for name, recipe in recipes.items() if _run_of(name, zoo.members[name]) in stale_runs
    }


def _run_of(name: str, spec: DictConfig) -> str:
    """The training run a member comes from: its snapshot run's key, or its own name."""
    return "snapshot run\n" + run_key(spec) if spec.train.get("snapshot") is not None else "member " + name


def _recipe(spec: DictConfig, data: Dataset, rows: str) -> str:
    """What a member was trained from: its config and its training rows (their fingerprint,
    `rows`). A change retrains it."""
    member = cast(dict[str, Any], OmegaConf.to_container(spec, resolve=True))
    member.setdefault("train", {}).setdefault("refit", REFIT)  # the default, written out
    recipe: dict[str, Any] = {"member": member, "data": data.name, "rows": rows}
    if data.task == "classification" and data.class_names:
        recipe["classes"] = list(data.class_names)  # the label of each column it learns
    return OmegaConf.to_yaml(recipe, sort_keys=True)


def _recipe_classes(path: str) -> list[str] | None:
    """The class labels the member at `path` was trained on, as its recipe records them."""
    recipe = _saved_recipe(path)
    if recipe is None:
        return None
    saved = OmegaConf.create(recipe)
    classes = saved.get("classes") if isinstance(saved, DictConfig) else None
    return None if classes is None else [str(label) for label in classes]


def _saved_recipe(path: str) -> str | None:
    try:
        with open(path + RECIPE_SUFFIX) as f:
            return f.read()
    except OSError:
        return None


def _path(directory: str, name: str, spec: DictConfig) -> str:
    if spec.format not in EXTENSIONS:
        raise EnsembleError(
            f"Zoo member {name!r}: format expected one of {sorted(EXTENSIONS)}. Received: {spec.format!r}"
        )
    return os.path.join(str(directory), name + EXTENSIONS[spec.format])


def skipped_members(zoo: DictConfig, data: Dataset) -> dict[str, str]:
    """The zoo members that cannot take `data` (`member_entries` leaves them out), with why."""
    reasons = {str(name): _fits_reason(spec, data) for name, spec in zoo.members.items()}
    return {name: reason for name, reason in reasons.items() if reason is not None}


def _fits_reason(spec: DictConfig, data: Dataset) -> str | None:
    shape = spec.build.get("image_shape")
    features = int(np.prod(data.x_train.shape[1:]))
    if shape is not None and int(np.prod(shape)) != features:
        return f"it reads images of shape {list(shape)}; the data has {features} features"
    return None


def _save(model: keras.Model, path: str, fmt: str) -> None:
    """Written beside, then swapped in: an interrupted run never leaves a half-written member."""
    with atomic_path(path) as staged:
        if fmt == "saved_model":
            model.export(staged, verbose=False)
        else:
            model.save(staged)


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
