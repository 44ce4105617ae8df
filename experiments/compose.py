"""Compose an ensemble from member files named in config, print it, evaluate it.

    python -m experiments.compose                       # the demo zoo on digits
    python -m experiments.compose combiner=vote         # another combiner
    python -m experiments.compose members=my_members    # conf/members/my_members.yaml
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ensemble import (
    EnsembleError,
    build_ensemble,
    export_saved_model,
    export_tflite,
    load_member,
    tflite_report,
)
from ensemble.data import Dataset
from ensemble.metrics import classification_metrics, regression_metrics
from experiments.zoo import ZOO, ensure_zoo

log = logging.getLogger(__name__)


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


def evaluate(model: Any, data: Dataset, batch_size: int) -> dict[str, Any]:
    """Metrics of every member and of the ensemble on the test split."""
    outputs = model.predict(data.x_test, batch_size=batch_size, verbose=0)
    score = classification_metrics if data.task == "classification" else regression_metrics
    names = [layer.name for layer in model.layers if type(layer).__name__ == "Member"]
    members = {
        name: score(data.y_test, outputs["member_predictions"][:, i])
        for i, name in enumerate(names)
    }
    return {"members": members, "ensemble": score(data.y_test, outputs["prediction"])}


def export(model: Any, cfg: DictConfig, output_dir: str, rows: np.ndarray) -> str:
    """Export per `cfg.export`; with `verify`, reload it and compare its prediction on `rows`."""
    path = export_saved_model(
        model, os.path.join(output_dir, cfg.export.dir), overwrite=cfg.export.overwrite,
        config=OmegaConf.to_yaml(cfg, resolve=True),
    )
    if cfg.export.verify:
        import tensorflow as tf

        serving = tf.saved_model.load(path).signatures["serving_default"]
        served = serving(**{model.input.name: tf.constant(rows)})["prediction"].numpy()
        gap = float(np.abs(served - model.predict(rows, verbose=0)["prediction"]).max())
        if gap > 1e-5:
            raise EnsembleError(f"Export {path} does not reproduce the ensemble: max gap {gap:.3g}")
        log.info("Export %s verified on %d rows (max gap %.2g)", path, len(rows), gap)
    return path


def tflite(model: Any, cfg: DictConfig, output_dir: str, export_dir: str, data: Dataset) -> Any:
    """Convert the export to each configured TFLite variant and measure it on the test split."""
    os.makedirs(os.path.join(output_dir, "tflite"), exist_ok=True)
    variants = {
        quantize: export_tflite(
            export_dir, os.path.join(output_dir, "tflite", f"{quantize}.tflite"),
            quantize=quantize, overwrite=cfg.export.overwrite,
        )
        for quantize in cfg.export.tflite
    }
    report = tflite_report(model, variants, data.x_test, data.y_test)
    for name, row in report.items():
        log.info("TFLite %s: %s", name, {k: round(v, 5) for k, v in row.items()})
    return report


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    """Build the configured ensemble, evaluate it on the test split, write metrics.json."""
    data: Dataset = instantiate(cfg.data)
    if cfg.zoo.train_missing and any(
        str(spec.source).startswith(str(cfg.zoo.dir)) for spec in cfg.members.values()
    ):
        ensure_zoo(cfg.zoo.dir, data, [n for n in cfg.members if n in ZOO])
    members = load_members(cfg.members)
    combiner = instantiate(cfg.combiner)
    model = build_ensemble(members, combiner, task=cfg.task)
    model.summary()

    result = {
        "task": data.task,
        "combiner": type(combiner).__name__,
        **evaluate(model, data, cfg.batch_size),
        "data": {"name": data.name, **data.split},
    }
    rows = {**result["members"], "ensemble": result["ensemble"]}
    metric_names = list(result["ensemble"])
    print(f"\n{'model':<12}" + "".join(f"{m:>10}" for m in metric_names))
    for name, values in rows.items():
        print(f"{name:<12}" + "".join(f"{values[m]:>10.4f}" for m in metric_names))
    if output_dir is not None and cfg.export.enabled:
        result["export_dir"] = export(model, cfg, output_dir, data.x_test[:64])
        if cfg.export.get("tflite"):
            result["tflite"] = tflite(model, cfg, output_dir, result["export_dir"], data)
    if output_dir is not None:
        with open(os.path.join(output_dir, "metrics.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    np.set_printoptions(precision=4)
    run(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
