"""TFLite export of an ensemble, and what each quantization costs against the float model."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ensemble.atomic import atomic_path, staging_dir
from ensemble.errors import EnsembleError
from ensemble.evaluate.metrics import classification_metrics, regression_metrics
from ensemble.export.saved_model import export_saved_model
from ensemble.graph.view import EnsembleView
from ensemble.rows import in_batches
from ensemble.types import PathLike

__all__ = ["QUANTIZATIONS", "export_tflite", "run_tflite", "tflite_report"]

QUANTIZATIONS: tuple[str, ...] = ("none", "dynamic", "float16")


def export_tflite(
    model: keras.Model | PathLike,
    path: PathLike,
    *,
    quantize: str = "none",
    overwrite: bool = False,
) -> str:
    """Convert an ensemble (or its exported SavedModel directory) to one `.tflite` file.

    Args:
        model: an ensemble from `build_ensemble`, or a directory written by
            `export_saved_model`.
        path: the `.tflite` file to write (written beside, then renamed; what a killed
            export left beside it is removed first).
        quantize: "none" (float32), "dynamic" (dynamic-range int8 weights) or
            "float16" (float16 weights).
        overwrite: replace an existing file at `path`.

    Returns:
        The absolute path written. The file's `serving_default` signature has
        the SavedModel's inputs and outputs.

    Raises:
        EnsembleError: for an unknown `quantize`, or an ensemble holding ops
            that TFLite's builtin op set cannot take (the message lists them).
    """
    if quantize not in QUANTIZATIONS:
        raise EnsembleError(f"Expected quantize in {QUANTIZATIONS}. Received: quantize={quantize!r}")
    target = os.path.abspath(os.fspath(path))
    if os.path.isdir(target):
        raise EnsembleError(f"TFLite path {target} is a directory; expected a file to write.")
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"TFLite file {target} already exists; pass overwrite=True to replace it.")
    if isinstance(model, keras.Model):
        # The intermediate SavedModel is staged beside `path` too, so a killed conversion
        # leaves debris that the next export to `path` removes (see ensemble.atomic).
        parent, name = os.path.split(target)
        with staging_dir(parent, f".{name}.partial-") as scratch:
            blob = _convert(export_saved_model(model, os.path.join(scratch, "saved_model")), quantize)
    else:
        blob = _convert(os.fspath(model), quantize)
    with atomic_path(target, overwrite=overwrite) as staged, open(staged, "wb") as f:
        f.write(blob)
    return target


def _convert(saved_model_dir: str, quantize: str) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["serving_default"])
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        blob: bytes = converter.convert()
    except Exception as error:  # TFLite's ConverterError lives in a private module
        ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither", str(error))))
        if not ops:
            raise
        raise EnsembleError(
            f"TFLite cannot convert the ensemble at {saved_model_dir}: ops {ops} are outside "
            "TFLite's builtin op set. Replace them in the member that uses them."
        ) from None
    return blob


def run_tflite(
    path: PathLike, feeds: Mapping[str, np.ndarray], batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Run a `.tflite` ensemble's `serving_default` signature on `feeds`, batch by batch (a feed
    of no rows runs once, for empty outputs of the right shapes)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=os.fspath(path)).get_signature_runner("serving_default")
    return in_batches(lambda batch: runner(**batch), feeds, batch_size)


def tflite_report(
    model: keras.Model,
    variants: Mapping[str, PathLike],
    x: np.ndarray | Mapping[str, np.ndarray],
    y: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Size and quality of each `.tflite` variant against the float Keras ensemble on `x` (and `y`).

    Each row has `bytes`, `max_abs_diff` of `prediction` from the float model's
    and, for classification, `agreement` (share of rows with the same top
    class) and, with conformal sets, `set_agreement` (share of rows with the very same set);
    with `y`, the task's metrics. The float model's row is `float`.
    """
    feeds = dict(x) if isinstance(x, Mapping) else {keras.tree.flatten(model.input)[0].name: x}
    outputs = model.predict(x, verbose=0)
    reference, sets = outputs["prediction"], outputs.get("prediction_set")
    classification = EnsembleView.of(model).task == "classification"
    score = classification_metrics if classification else regression_metrics
    report: dict[str, dict[str, Any]] = {"float": score(y, reference) if y is not None else {}}
    for name, path in variants.items():
        served = run_tflite(path, feeds)
        prediction = served["prediction"]
        row: dict[str, Any] = {
            "bytes": os.path.getsize(path),
            "max_abs_diff": float(np.abs(prediction - reference).max()),
        }
        if classification:
            row["agreement"] = float(np.mean(prediction.argmax(-1) == reference.argmax(-1)))
        if "prediction_set" in served and sets is not None:  # conformal sets: rows alike
            row["set_agreement"] = float(np.mean((served["prediction_set"] == sets).all(axis=-1)))
        if y is not None:
            row.update(score(y, prediction))
        report[name] = row
    return report
