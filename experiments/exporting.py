"""The main job's export step, per the `export` option: the SavedModel (verified by reloading),
optionally `ensemble.onnx` inside it (converted before the SavedModel is written), and the
TFLite variants."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

import ensemble
from ensemble import EnsembleError
from ensemble.data import Dataset
from ensemble.export import run_onnx

__all__ = ["ONNX_FILE", "export"]

log = logging.getLogger(__name__)

ONNX_FILE = "ensemble.onnx"


def export(model: keras.Model, cfg: DictConfig, output_dir: str, data: Dataset) -> dict[str, Any]:
    """Export per `cfg.export`: the SavedModel (verified by reloading), with `export.onnx` its
    ONNX conversion `<export>/ensemble.onnx`, and its TFLite variants; what metrics.json records."""
    options: dict[str, Any] = {
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "jit_compile": cfg.export.get("jit_compile", False),
    }
    directory = os.path.join(output_dir, cfg.export.dir)
    # The ONNX file is converted first, beside the export: a graph tf2onnx cannot convert fails
    # the job before anything is written, and the file goes into the export once it stands.
    with (
        _staged_onnx(model, output_dir) if cfg.export.get("onnx", False) else contextlib.nullcontext() as onnx
    ):
        if cfg.export.get("versioned", False):  # a new <dir>/<n>/, as TF Serving reads them
            path = ensemble.export_version(model, directory, keep=cfg.export.get("keep"), **options)
        else:
            path = ensemble.export_saved_model(model, directory, overwrite=cfg.export.overwrite, **options)
        result: dict[str, Any] = {"export_dir": path}
        if cfg.export.verify:
            _verify(model, path, data)
        if onnx is not None:
            result["onnx"] = _place_onnx(model, onnx, path, data)
    if cfg.export.get("tflite"):
        os.makedirs(os.path.join(output_dir, "tflite"), exist_ok=True)
        variants = {
            quantize: ensemble.export_tflite(
                path,
                os.path.join(output_dir, "tflite", f"{quantize}.tflite"),
                quantize=quantize,
                overwrite=cfg.export.overwrite,
            )
            for quantize in cfg.export.tflite
        }
        result["tflite"] = ensemble.tflite_report(model, variants, data.x_test, data.y_test)
    return result


def _verify(model: keras.Model, path: str, data: Dataset) -> None:
    """The SavedModel at `path`, reloaded, gives the ensemble's prediction on 64 test rows."""
    rows = data.x_test[:64]
    serving = tf.saved_model.load(path).signatures["serving_default"]
    served = serving(**{model.input.name: tf.constant(rows)})["prediction"].numpy()
    ours = model.predict(rows, verbose=0)["prediction"]
    # Relative past 1: float32 steps of regression targets in the hundreds are 1.5e-5.
    gap = float((np.abs(served - ours) / np.maximum(1.0, np.abs(ours))).max())
    if gap > 1e-5:
        raise EnsembleError(f"Export {path} does not reproduce the ensemble: max gap {gap:.3g}")
    log.info("Export %s verified on %d rows (max gap %.2g)", path, len(rows), gap)


@contextlib.contextmanager
def _staged_onnx(model: keras.Model, output_dir: str) -> Iterator[str]:
    """The ensemble converted to a hidden `.onnx` file in `output_dir` (checked in onnxruntime
    by `ensemble.export_onnx`), removed on the way out unless moved away."""
    handle, staged = tempfile.mkstemp(prefix=".ensemble-", suffix=".onnx", dir=output_dir)
    os.close(handle)
    try:
        yield ensemble.export_onnx(model, staged, overwrite=True)
    finally:
        if os.path.exists(staged):
            os.remove(staged)


def _place_onnx(model: keras.Model, staged: str, export_dir: str, data: Dataset) -> dict[str, Any]:
    """The staged file moved to `ensemble.onnx` inside the SavedModel just written (both from
    the same traced serving function), with its size and its largest gap from the ensemble's
    prediction on the test split."""
    path = os.path.join(export_dir, ONNX_FILE)
    os.replace(staged, path)
    served = run_onnx(path, {model.input.name: data.x_test})["prediction"]
    ours = model.predict(data.x_test, verbose=0)["prediction"]
    gap = float(np.abs(served - ours).max()) if len(ours) else 0.0
    log.info("ONNX %s: max abs diff %.2g from the ensemble on %d test rows", path, gap, len(ours))
    return {"path": path, "bytes": os.path.getsize(path), "max_abs_diff": gap}
