"""What the experiment scripts share: members and combiners from config, the leak-free fit,
evaluation and export (the comparison after a sweep is `experiments.sweep`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from combiners import Combiner
from ensemble import (
    EnsembleError,
    build_ensemble,
    configure_devices,
    export_saved_model,
    export_tflite,
    load_member,
    tflite_report,
)
from ensemble._inputs import flat_features
from ensemble.build import ensemble_members
from ensemble.data import Dataset
from ensemble.distribute import is_chief, make_strategy
from ensemble.fitting import check_leakage, fit_combiner, fit_mean_weights, fit_stacking
from ensemble.level_one import LevelOneStore
from ensemble.metrics import classification_metrics, regression_metrics
from ensemble.oof import stack_out_of_fold
from experiments.zoo import ensure_zoo, fit_predict, member_entries, stale_members

__all__ = [
    "Evaluated",
    "FittingRows",
    "FIT_METHODS",
    "REGIMES",
    "build_and_fit",
    "evaluate",
    "export",
    "finish",
    "fit_and_evaluate",
    "fit_from_config",
    "load_members",
    "make_combiner",
    "markdown_table",
    "members_config",
    "print_table",
    "selected_member",
    "start_runtime",
]

log = logging.getLogger(__name__)

FIT_METHODS = ("sklearn", "keras", "selection", "optimal")
REGIMES = ("holdout", "oof")


def start_runtime(cfg: DictConfig) -> tf.distribute.Strategy | None:
    """Apply `cfg.runtime`: device settings (before TensorFlow initialises its devices), then
    the `tf.distribute` strategy (None for `default`)."""
    runtime = cfg.runtime
    configure_devices(memory_growth=runtime.memory_growth, logical_cpus=runtime.logical_cpus)
    strategy = make_strategy(runtime.strategy, timeout_s=runtime.timeout_s)
    if strategy is not None:
        log.info("runtime.strategy=%s: %d replica(s) in sync", runtime.strategy,
                 strategy.num_replicas_in_sync)
    return strategy


def members_config(cfg: DictConfig, data: Dataset, directory: str | None = None) -> DictConfig:
    """The members to load: the `members` option (your files), else the zoo's, trained where
    missing (into `directory`, default `zoo.dir`). Under several workers, nothing is trained
    here: every worker must load the very same files, so a missing one is an error."""
    if cfg.get("members"):
        return cfg.members
    directory = directory or str(cfg.zoo.dir)
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
    zoo = OmegaConf.merge(cfg.zoo, {"dir": directory})
    return member_entries(zoo, data)


def load_members(members: DictConfig) -> list[Any]:
    """`load_member` for every `name: {source, format, options}` entry of the config."""
    loaded = []
    for name, spec in members.items():
        unknown = sorted(set(spec) - {"source", "format", "options"})
        if unknown or "source" not in spec:
            raise EnsembleError(
                f"Member {name!r} in config: expected the fields source, format, options. "
                f"Received: {sorted(spec)}"
            )
        options = spec.get("options")
        options = {} if options is None else OmegaConf.to_container(options, resolve=True)
        loaded.append(
            load_member(spec.source, name=str(name), format=spec.get("format", "auto"), **options)
        )
    return loaded


def make_combiner(config: DictConfig) -> tuple[Combiner, dict[str, Any] | None]:
    """The combiner layer of a `conf/combiner` option, and its `fit:` block (how to fit it)."""
    layer = OmegaConf.masked_copy(config, [k for k in config if k != "fit"])
    fit = config.get("fit")
    fit = None if fit is None else OmegaConf.to_container(fit, resolve=True)
    if fit is not None and fit.get("method") not in FIT_METHODS:
        raise EnsembleError(
            f"combiner.fit.method: expected one of {FIT_METHODS}. Received: {fit.get('method')!r}"
        )
    combiner: Combiner = instantiate(layer)
    return combiner, fit  # type: ignore[return-value]


def fit_from_config(
    model: Any, fit: dict[str, Any] | None, x: Any, y: Any, level_one: np.ndarray | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> None:
    """Fit the ensemble's combiner as its `fit:` block says (nothing when there is none).
    Keras training runs under `strategy`; the others are closed-form or greedy on the
    level-one predictions, the same on every worker."""
    if fit is None:
        log.info("The combiner has no fit block: used as configured.")
        return
    options = {k: v for k, v in fit.items() if k != "method"}
    method = fit["method"]
    if method == "sklearn":
        fit_stacking(model, x, y, level_one=level_one, **options)
    elif method == "keras":
        fit_combiner(model, x, y, level_one=level_one, verbose=0, strategy=strategy, **options)
    else:
        fit_mean_weights(model, x, y, method=method, level_one=level_one, **options)


class FittingRows(NamedTuple):
    """The rows the combiner was fitted on: the members' predictions of them (out of fold under
    `meta.regime=oof`) and their targets."""

    level_one: np.ndarray  # (rows, members, width)
    y: np.ndarray


def build_and_fit(
    cfg: DictConfig, data: Dataset, output_dir: str | None,
    strategy: tf.distribute.Strategy | None = None,
) -> tuple[Any, dict[str, Any], FittingRows]:
    """Members, the ensemble, and its combiner fitted per `cfg.meta.regime`, never on rows a
    member trained on; the level-one pass and Keras training under `strategy`. Returns the
    model, what to record about the fit, and the fitting rows' level-one predictions."""
    regime = cfg.meta.regime
    if regime not in REGIMES:
        raise EnsembleError(f"meta.regime: expected one of {REGIMES}. Received: {regime!r}")
    if regime == "oof" and cfg.runtime.strategy == "multi_worker":
        raise EnsembleError(
            "meta.regime=oof retrains the members in every fold, which each worker would do on "
            "its own; under runtime.strategy=multi_worker use meta.regime=holdout."
        )
    combiner, fit = make_combiner(cfg.combiner)
    task = cfg.task or data.task
    if regime == "holdout":
        members = members_config(cfg, data)
        x_fit, y_fit, level_one = data.x_holdout, data.y_holdout, None
    else:
        if cfg.get("members"):
            raise EnsembleError(
                "meta.regime=oof retrains members in each fold, which needs members this project "
                f"can build (the zoo); members={list(cfg.members)} are files from elsewhere. "
                "Use meta.regime=holdout."
            )
        x_fit = np.concatenate([data.x_train, data.x_holdout])
        y_fit = np.concatenate([data.y_train, data.y_holdout])
        everything = dataclasses.replace(data, x_train=x_fit, y_train=y_fit)
        names = list(member_entries(cfg.zoo, data))
        level_one, folds = stack_out_of_fold(
            {name: fit_predict(name, cfg.zoo.members[name], everything) for name in names},
            x_fit, y_fit, cv=cfg.meta.cv, task=data.task, seed=data.split["seed"],
        )
        if output_dir is not None:
            np.savez(os.path.join(output_dir, "oof_predictions.npz"), predictions=level_one,
                     folds=folds, y=y_fit, members=np.array(names))
        # The final members retrain on every row the folds used.
        members = members_config(cfg, everything, os.path.join(str(cfg.zoo.dir), "oof_final"))

    model = build_ensemble(load_members(members), combiner, task=task)
    if level_one is None:  # holdout: these members predict the fitting rows, so guard them
        check_leakage(model, x_fit)
        cache = os.path.join(output_dir, "level_one") if output_dir else None
        level_one = LevelOneStore(cache, batch_size=cfg.batch_size, verbose=0,
                                  strategy=strategy).predictions(model, x_fit)
    fit_from_config(model, fit, x_fit, y_fit, level_one=level_one, strategy=strategy)
    record: dict[str, Any] = {
        "task": task,
        "combiner": type(combiner).__name__,
        "fit": fit,
        "regime": regime,
        "fit_rows": int(len(y_fit)),
    }
    record["selected_member"] = selected_member(model, level_one, y_fit, task)
    weights = getattr(combiner, "member_weights", None)
    if weights is not None:
        record["weights"] = dict(zip([m.name for m in ensemble_members(model)], weights))
    if task == "regression":
        record["noise_variance"] = _noise_variance(combiner, level_one, y_fit, x_fit)
    return model, record, FittingRows(level_one, y_fit)


def selected_member(model: Any, level_one: np.ndarray, y: np.ndarray, task: str) -> dict[str, Any]:
    """The member one would ship alone, chosen as the combiner is fitted: on the fitting rows
    (their level-one predictions), never on the test split. The honest single-model baseline:
    the member best on the test split is picked by peeking at it."""
    names = [member.name for member in ensemble_members(model)]
    if task == "classification":
        metric, scores = "nll", [classification_metrics(y, level_one[:, i])["nll"] for i in range(len(names))]
    else:
        metric, scores = "rmse", [regression_metrics(y, level_one[:, i])["rmse"] for i in range(len(names))]
    best = int(np.argmin(scores))
    return {"name": names[best], "by": f"{metric} on the {len(y)} fitting rows", metric: float(scores[best])}


def _noise_variance(combiner: Combiner, level_one: np.ndarray, y: np.ndarray, x: Any) -> float:
    """The variance the members' spread misses, measured on the fitting rows' level-one
    predictions (out of fold under `meta.regime=oof`, so never a member's own training rows):
    the ensemble's predictive variance is spread^2 plus this (the spread alone is
    overconfident)."""
    predictions = level_one.astype("float32")
    combined = combiner(predictions, flat_features(x)) if combiner.needs_features else combiner(predictions)
    prediction = keras.ops.convert_to_numpy(combined)
    residual = (np.reshape(y, prediction.shape) - prediction) ** 2
    return float(max(np.mean(residual - predictions.std(axis=1) ** 2), 0.0))


class Evaluated(NamedTuple):
    model: Any
    data: Dataset
    outputs: dict[str, np.ndarray]  # the ensemble's outputs on the test split
    result: dict[str, Any]  # what metrics.json holds, before the export
    output_dir: str | None  # None on a worker that is not the chief: it writes nothing


def fit_and_evaluate(cfg: DictConfig, output_dir: str | None) -> Evaluated:
    """What the jobs share: the runtime started, the ensemble built and its combiner fitted
    (`build_and_fit`), every member, their mean and the ensemble measured on the test split,
    and the table printed."""
    strategy = start_runtime(cfg)
    if not is_chief(strategy):
        log.info("Not the chief worker: taking part in the distributed work, writing nothing.")
        output_dir = None
    data: Dataset = instantiate(cfg.data)
    model, record, fitting = build_and_fit(cfg, data, output_dir, strategy)
    outputs = model.predict(data.x_test, batch_size=cfg.batch_size, verbose=0)
    scores = evaluate(model, data, cfg.batch_size, record.get("noise_variance"), fitting, outputs)
    print_table({**scores["members"], "mean": scores["mean"], "ensemble": scores["ensemble"]})
    result = {**record, **scores, "data": {"name": data.name, **data.split}}
    return Evaluated(model, data, outputs, result, output_dir)


def evaluate(model: Any, data: Dataset, batch_size: int, noise_variance: float | None = None,
             fitting: FittingRows | None = None, outputs: Any = None) -> dict[str, Any]:
    """Metrics of every member, their plain mean, and the ensemble on the test split.

    Regression NLL: each member's (and the mean's) predictive std is its RMSE on the
    fitting rows (`fitting`); the ensemble's is sqrt(spread^2 + noise_variance).
    """
    if outputs is None:  # the model's outputs on the test split, unless the caller has them
        outputs = model.predict(data.x_test, batch_size=batch_size, verbose=0)
    names = [member.name for member in ensemble_members(model)]
    members_out = outputs["member_predictions"]
    if data.task == "classification":
        return {
            "members": {n: classification_metrics(data.y_test, members_out[:, i]) for i, n in enumerate(names)},
            "mean": classification_metrics(data.y_test, members_out.mean(axis=1)),
            "ensemble": classification_metrics(data.y_test, outputs["prediction"]),
        }

    def rmse_std(i: int | None) -> np.ndarray | None:
        if fitting is None:
            return None
        fitted = fitting.level_one.mean(1) if i is None else fitting.level_one[:, i]
        rmse = np.sqrt(np.mean((np.reshape(fitting.y, fitted.shape) - fitted) ** 2, axis=0))
        return np.broadcast_to(rmse, members_out[:, 0].shape)

    std = None if noise_variance is None else np.sqrt(outputs["std"] ** 2 + noise_variance)
    return {
        "members": {n: regression_metrics(data.y_test, members_out[:, i], rmse_std(i)) for i, n in enumerate(names)},
        "mean": regression_metrics(data.y_test, members_out.mean(axis=1), rmse_std(None)),
        "ensemble": regression_metrics(data.y_test, outputs["prediction"], std),
    }


def print_table(rows: dict[str, dict[str, float]]) -> None:
    """A plain-text table: one row per model, one column per metric."""
    metric_names = list(next(iter(rows.values())))
    print(f"\n{'model':<14}" + "".join(f"{m:>10}" for m in metric_names))
    for name, values in rows.items():
        print(f"{name:<14}" + "".join(f"{values[m]:>10.4f}" for m in metric_names))


def export(model: Any, cfg: DictConfig, output_dir: str, data: Dataset) -> dict[str, Any]:
    """Export per `cfg.export`: the SavedModel (verified by reloading) and its TFLite variants."""
    path = export_saved_model(
        model, os.path.join(output_dir, cfg.export.dir), overwrite=cfg.export.overwrite,
        config=OmegaConf.to_yaml(cfg, resolve=True), jit_compile=cfg.export.get("jit_compile", False),
    )
    result: dict[str, Any] = {"export_dir": path}
    if cfg.export.verify:
        import tensorflow as tf

        rows = data.x_test[:64]
        serving = tf.saved_model.load(path).signatures["serving_default"]
        served = serving(**{model.input.name: tf.constant(rows)})["prediction"].numpy()
        gap = float(np.abs(served - model.predict(rows, verbose=0)["prediction"]).max())
        if gap > 1e-5:
            raise EnsembleError(f"Export {path} does not reproduce the ensemble: max gap {gap:.3g}")
        log.info("Export %s verified on %d rows (max gap %.2g)", path, len(rows), gap)
    if cfg.export.get("tflite"):
        os.makedirs(os.path.join(output_dir, "tflite"), exist_ok=True)
        variants = {
            quantize: export_tflite(
                path, os.path.join(output_dir, "tflite", f"{quantize}.tflite"),
                quantize=quantize, overwrite=cfg.export.overwrite,
            )
            for quantize in cfg.export.tflite
        }
        result["tflite"] = tflite_report(model, variants, data.x_test, data.y_test)
    return result


def finish(
    result: dict[str, Any], model: Any, cfg: DictConfig, output_dir: str | None, data: Dataset
) -> dict[str, Any]:
    """Export (per `cfg.export`) and write `metrics.json` into the run directory."""
    if output_dir is not None and cfg.export.enabled:
        result.update(export(model, cfg, output_dir, data))
    if output_dir is not None:
        with open(os.path.join(output_dir, "metrics.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result


def markdown_table(rows: dict[str, dict[str, float]], first: str = "model",
                   metrics: list[str] | None = None) -> list[str]:
    """Markdown table lines: one row per name, one column per metric (default: the first row's)."""
    metrics = metrics or list(next(iter(rows.values())))
    lines = [f"| {first} | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")
    return lines
