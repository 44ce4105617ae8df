"""What the experiment scripts share: members and combiners from config, fitting, evaluation, export."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from combiners import Combiner
from ensemble import (
    EnsembleError,
    export_saved_model,
    export_tflite,
    load_member,
    tflite_report,
)
from ensemble.build import ensemble_members
from ensemble.data import Dataset
from ensemble.fitting import fit_combiner, fit_mean_weights, fit_stacking
from ensemble.metrics import classification_metrics, regression_metrics

__all__ = [
    "FIT_METHODS",
    "evaluate",
    "export",
    "finish",
    "fit_from_config",
    "load_members",
    "make_combiner",
    "print_table",
]

log = logging.getLogger(__name__)

FIT_METHODS = ("sklearn", "keras", "selection", "optimal")


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
    model: Any, fit: dict[str, Any] | None, x: Any, y: Any, level_one: np.ndarray | None = None
) -> None:
    """Fit the ensemble's combiner as its `fit:` block says (nothing when there is none)."""
    if fit is None:
        log.info("The combiner has no fit block: used as configured.")
        return
    options = {k: v for k, v in fit.items() if k != "method"}
    method = fit["method"]
    if method == "sklearn":
        fit_stacking(model, x, y, level_one=level_one, **options)
    elif method == "keras":
        fit_combiner(model, x, y, level_one=level_one, verbose=0, **options)
    else:
        fit_mean_weights(model, x, y, method=method, level_one=level_one, **options)


def evaluate(model: Any, data: Dataset, batch_size: int) -> dict[str, Any]:
    """Metrics of every member, their plain mean, and the ensemble on the test split."""
    outputs = model.predict(data.x_test, batch_size=batch_size, verbose=0)
    score = classification_metrics if data.task == "classification" else regression_metrics
    names = [member.name for member in ensemble_members(model)]
    members = {
        name: score(data.y_test, outputs["member_predictions"][:, i])
        for i, name in enumerate(names)
    }
    return {
        "members": members,
        "mean": score(data.y_test, outputs["member_predictions"].mean(axis=1)),
        "ensemble": score(data.y_test, outputs["prediction"]),
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
        config=OmegaConf.to_yaml(cfg, resolve=True),
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
