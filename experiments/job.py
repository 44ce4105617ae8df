"""What the experiment scripts share: the config turned into library calls.

The runtime from `runtime`, members from `members` (your files) or the zoo, the combiner from
`combiner`, its fit from `fit`, the rows it is fitted on from `regime`; then the library fits
(`ensemble.fit`, `ensemble.fit_out_of_fold`), measures (`ensemble.evaluate_ensemble`) and
exports (`experiments.exporting`: the SavedModel, ONNX, TFLite).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import ensemble
from ensemble import EnsembleError, FitReport, LevelOneStore, Member
from ensemble.atomic import atomic_path
from ensemble.data import Dataset
from ensemble.evaluate import format_table, summary
from ensemble.runtime import configure_devices, is_chief, make_strategy
from ensemble.serve.catalog import Catalog
from experiments.exporting import export
from experiments.zoo import (
    ensure_zoo,
    fit_predict,
    member_entries,
    skipped_members,
    stale_members,
    zoo_directory,
)

__all__ = [
    "Evaluated",
    "FitContext",
    "Holdout",
    "OutOfFold",
    "build_from_config",
    "check_writable",
    "export",
    "finish",
    "fit_and_evaluate",
    "load_members",
    "member_options",
    "members_config",
    "register_models",
    "start_runtime",
]

log = logging.getLogger(__name__)

Fit = Callable[..., FitReport]  # `ensemble.fit`, configured by a `conf/fit` option


def check_writable(output_dir: str) -> None:
    """Fail before any work when the run directory cannot be written."""
    probe = os.path.join(output_dir, ".write-test")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise PermissionError(f"Run directory {output_dir} is not writable: {error}") from None


def start_runtime(runtime: DictConfig) -> tf.distribute.Strategy | None:
    """Apply a `runtime` option: device settings first, then the strategy (None for `default`)."""
    configure_devices(memory_growth=runtime.memory_growth, logical_cpus=runtime.logical_cpus)
    strategy = make_strategy(runtime.strategy, timeout_s=runtime.timeout_s)
    if strategy is not None:
        log.info(
            "runtime.strategy=%s: %d replica(s) in sync", runtime.strategy, strategy.num_replicas_in_sync
        )
    return strategy


def members_config(cfg: DictConfig, data: Dataset, directory: str | None = None) -> DictConfig:
    """The `members` option (your files), else the zoo's, trained where missing (into `directory`,
    default the zoo's); under several workers, none is trained: a missing one is an error."""
    if cfg.get("members"):
        members: DictConfig = cfg.members
        return members
    directory = directory or zoo_directory(cfg.zoo, data)
    if cfg.runtime.strategy == "multi_worker":
        stale = stale_members(cfg.zoo, data, directory)
        if stale:
            raise EnsembleError(
                f"runtime.strategy=multi_worker: zoo member(s) {stale} are missing from {directory} "
                "or were trained from another config. Every worker must load the same files: "
                "train them once first, with the same data and zoo options "
                "(python -m experiments.train_members ...)."
            )
    elif cfg.zoo.train_missing:
        ensure_zoo(cfg.zoo, data, directory)
    return member_entries(cfg.zoo, data, directory)


def register_models(registry: ensemble.ModelRegistry | Catalog, models: DictConfig) -> None:
    """Register every `name: source` or `name: {source, format, device, options}` entry."""
    for name, spec in models.items():
        if isinstance(spec, str):
            registry.register(str(name), spec)
            continue
        options = member_options(spec)
        if spec.get("format", "auto") != "auto":  # "auto" is load_member's default
            options["format"] = spec.format
        registry.register(str(name), spec.source, device=spec.get("device"), **options)


def load_members(members: DictConfig) -> list[Member]:
    """`load_member` for every `name: {source, format, options}` entry of the config."""
    loaded = []
    for name, spec in members.items():
        unknown = sorted(set(spec) - {"source", "format", "options"})
        if unknown or "source" not in spec:
            raise EnsembleError(
                f"Member {name!r} in config: expected the fields source, format, options. "
                f"Received: {sorted(spec)}"
            )
        loaded.append(
            ensemble.load_member(
                spec.source, name=str(name), format=spec.get("format", "auto"), **member_options(spec)
            )
        )
    return loaded


def member_options(spec: DictConfig) -> dict[str, Any]:
    """The `options` of a member entry as plain keyword arguments for `load_member`."""
    options = spec.get("options")
    plain = {} if options is None else OmegaConf.to_container(options, resolve=True)
    if not isinstance(plain, dict):
        raise EnsembleError(f"Member options: expected a mapping. Received: {plain!r}")
    return {str(key): value for key, value in plain.items()}


@dataclass(frozen=True)
class FitContext:
    """What a regime needs to build the ensemble and fit its combiner."""

    cfg: DictConfig
    data: Dataset
    fit: Fit  # `ensemble.fit`, configured by the `fit` option
    strategy: tf.distribute.Strategy | None
    output_dir: str | None  # None: write nothing (a worker that is not the chief)

    def build(self, members: DictConfig) -> keras.Model:
        """The ensemble of `members` (a members config) with the configured combiner."""
        return build_from_config(self.cfg, self.data, members)


def build_from_config(cfg: DictConfig, data: Dataset, members: DictConfig) -> keras.Model:
    """The ensemble of `members` (a members config) with the `combiner` option, for `task`."""
    task = cfg.task or data.task
    classes = data.class_names if task == "classification" else None  # the labels' encoding
    return ensemble.build_ensemble(
        load_members(members), instantiate(cfg.combiner), task=task, classes=classes
    )


@dataclass
class Holdout:
    """`regime=holdout`: members train on the train split, the combiner fits on the holdout
    split (guarded: no member may have trained on it). With `refit_full`, the zoo's members
    then retrain on train+holdout (`<zoo>/oof_final`, shared with `regime=oof`) under the
    fitted combiner (`ensemble.refit_full`)."""

    refit_full: bool = False

    def fit(self, job: FitContext) -> tuple[keras.Model, FitReport]:
        cfg, data = job.cfg, job.data
        if self.refit_full and cfg.get("members"):
            raise EnsembleError(
                "regime.refit_full retrains the members on train+holdout, which needs members this "
                f"project can build (the zoo); members={list(cfg.members)} are files from elsewhere."
            )
        model = job.build(members_config(cfg, data))
        cache = os.path.join(job.output_dir, "level_one") if job.output_dir else None
        store = LevelOneStore(cache, batch_size=cfg.batch_size, verbose=0, strategy=job.strategy)
        report = job.fit(model, data.x_holdout, data.y_holdout, store=store, strategy=job.strategy)
        if not self.refit_full:
            return model, report
        everything = _train_and_holdout(data)
        final = members_config(cfg, everything, os.path.join(zoo_directory(cfg.zoo, data), "oof_final"))
        model = ensemble.refit_full(model, load_members(final), data.x_holdout)
        return model, dataclasses.replace(report, refit={"rows": len(everything.y_train)})


@dataclass
class OutOfFold:
    """`regime=oof`: the combiner fits on out-of-fold predictions of zoo members cross-validated
    on train+holdout (`cv` folds); the final members retrain on all of it (`<zoo>/oof_final`)."""

    cv: int = 5

    def fit(self, job: FitContext) -> tuple[keras.Model, FitReport]:
        cfg, data = job.cfg, job.data
        if cfg.runtime.strategy == "multi_worker":
            raise EnsembleError(
                "regime=oof retrains the members in every fold, which each worker would do on "
                "its own; under runtime.strategy=multi_worker use regime=holdout."
            )
        if cfg.get("members"):
            raise EnsembleError(
                "regime=oof retrains members in each fold, which needs members this project "
                f"can build (the zoo); members={list(cfg.members)} are files from elsewhere. "
                "Use regime=holdout."
            )
        everything = _train_and_holdout(data)
        x, y = everything.x_train, everything.y_train
        final = members_config(cfg, everything, os.path.join(zoo_directory(cfg.zoo, data), "oof_final"))
        model = job.build(final)
        builders = {str(name): fit_predict(str(name), cfg.zoo.members[name], everything) for name in final}
        report = ensemble.fit_out_of_fold(
            model, x, y, builders, cv=self.cv, seed=data.split["seed"], fitter=job.fit, strategy=job.strategy
        )
        if job.output_dir is not None:
            np.savez(
                os.path.join(job.output_dir, "oof_predictions.npz"),
                predictions=report.level_one,
                folds=np.asarray(report.folds),
                y=y,
                members=np.array(list(final)),
            )
        return model, report


def _train_and_holdout(data: Dataset) -> Dataset:
    """`data` whose train split is train+holdout: what the final members train on."""
    x = np.concatenate([data.x_train, data.x_holdout])
    y = np.concatenate([data.y_train, data.y_holdout])
    return dataclasses.replace(data, x_train=x, y_train=y)


class Evaluated(NamedTuple):
    model: keras.Model
    data: Dataset
    outputs: dict[str, np.ndarray]  # the ensemble's outputs on the test split
    ood_outputs: dict[str, np.ndarray] | None  # and on the OOD rows `data.ood` names
    report: FitReport
    result: dict[str, Any]  # what metrics.json holds, before the export
    output_dir: str | None  # None on a worker that is not the chief: it writes nothing


def fit_and_evaluate(cfg: DictConfig, output_dir: str | None) -> Evaluated:
    """The ensemble built and fitted in the configured regime (with conformal sets if
    configured), measured against the calibrated baselines on the test split, and on `data.ood`."""
    strategy = start_runtime(cfg.runtime)
    if not is_chief(strategy):
        log.info("Not the chief worker: taking part in the distributed work, writing nothing.")
        output_dir = None
    data: Dataset = instantiate(cfg.data)
    model, report = instantiate(cfg.regime).fit(
        FitContext(cfg, data, instantiate(cfg.fit), strategy, output_dir)
    )
    conformal = instantiate(cfg.conformal) if cfg.get("conformal", {}).get("_target_") else None
    if conformal is not None:  # calibrated on a share of the test split, measured on the rest
        model, measured = conformal.calibrate(model, data.x_test, data.y_test, batch_size=cfg.batch_size)
    outputs = model.predict(data.x_test, batch_size=cfg.batch_size, verbose=0)
    ood_outputs = (
        None if data.x_ood is None else model.predict(data.x_ood, batch_size=cfg.batch_size, verbose=0)
    )
    found = {"outputs": outputs, "ood": data.ood, "ood_outputs": ood_outputs}
    scores = ensemble.evaluate_ensemble(model, data.x_test, data.y_test, fit_report=report, **found)
    table = {**scores["members"], "mean": scores["mean"], "ensemble": scores["ensemble"]}
    print("\n" + format_table(summary(table)))
    result = {**report.as_dict(), **scores, "data": {"name": data.name, **data.split}}
    if conformal is not None:
        result["conformal"] = conformal.measure(model, outputs, data.y_test, measured)
    if not cfg.get("members"):  # the zoo's members left out for this data
        result["zoo"] = {"skipped": skipped_members(cfg.zoo, data)}
    return Evaluated(model, data, outputs, ood_outputs, report, result, output_dir)


def finish(
    result: dict[str, Any], model: keras.Model, cfg: DictConfig, output_dir: str | None, data: Dataset
) -> dict[str, Any]:
    """Export (per `cfg.export`) and write `metrics.json` into the run directory."""
    if output_dir is not None and cfg.export.enabled:
        result.update(export(model, cfg, output_dir, data))
    if output_dir is not None:
        write_metrics(result, output_dir)
    return result


def write_metrics(result: dict[str, Any], output_dir: str) -> None:
    """`result` as the run directory's `metrics.json`."""
    with atomic_path(os.path.join(output_dir, "metrics.json")) as staged, open(staged, "w") as f:
        json.dump(result, f, indent=2)  # whole or absent: a sweep's comparison reads it
