"""Checks of the arrays the pure-NumPy weight learners take: level-one predictions
`(rows, members, width)` and their targets, each error naming the argument."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ensemble.types import CLASSIFICATION, TASKS

__all__ = ["check_count", "checked_labels", "checked_predictions", "checked_regression_targets"]


def check_count(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"Expected {name} to be an integer >= {minimum}. Received: {name}={value!r}")


def checked_predictions(P: Any, y: Any, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns predictions as float64 `(rows, members, width)` and the targets.

    Targets come back as int64 labels `(rows,)` for classification and as
    float64 `(rows, width)` for regression.
    """
    if task not in TASKS:
        raise ValueError(f"Expected task to be one of {TASKS}. Received: task={task!r}")
    predictions = np.asarray(P, dtype=np.float64)
    if predictions.ndim != 3:
        raise ValueError(
            "Expected level-one predictions P of shape (rows, members, width). "
            f"Received: P.shape={predictions.shape}"
        )
    rows, members, width = predictions.shape
    if rows == 0 or members == 0 or width == 0:
        raise ValueError(
            "Expected level-one predictions P with at least one row, member "
            f"and output. Received: P.shape={predictions.shape}"
        )
    if not np.isfinite(predictions).all():
        raise ValueError("Expected finite level-one predictions P. Received: NaN or inf in P")
    targets = np.asarray(y)
    if targets.ndim == 0 or len(targets) != rows:
        raise ValueError(
            f"Expected y with one entry per row of P ({rows} rows). Received: y.shape={targets.shape}"
        )
    if task == CLASSIFICATION:
        return predictions, checked_labels(targets, width)
    return predictions, checked_regression_targets(targets, width)


def checked_labels(labels: np.ndarray, classes: int) -> np.ndarray:
    integral = labels.dtype.kind in "iu" or (
        labels.dtype.kind == "f"
        and bool(np.isfinite(labels).all())
        and bool((labels == np.round(labels)).all())
    )
    if labels.ndim != 1 or not integral:
        raise ValueError(
            "Expected integer class labels of shape (rows,) for classification. "
            f"Received: y of shape {labels.shape} and dtype {labels.dtype}"
        )
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(
            f"Expected class labels in [0, {classes}), one class per column of P. "
            f"Received: labels from {labels.min()} to {labels.max()}"
        )
    return labels.astype(np.int64)


def checked_regression_targets(targets: np.ndarray, width: int) -> np.ndarray:
    if targets.dtype.kind not in "iuf":
        raise ValueError(f"Expected numeric regression targets. Received: y of dtype {targets.dtype}")
    matrix = targets[:, None] if targets.ndim == 1 else targets
    if matrix.ndim != 2 or matrix.shape[1] != width:
        accepted = f"(rows,) or (rows, {width})" if width == 1 else f"(rows, {width})"
        raise ValueError(
            f"Expected regression targets of shape {accepted}, one column per "
            f"column of P. Received: y.shape={targets.shape}"
        )
    if not np.isfinite(matrix).all():
        raise ValueError("Expected finite regression targets. Received: NaN or inf in y")
    return matrix.astype(np.float64)
