"""The member one would ship alone, and the variance the members' spread misses: both measured
on the fitting rows' level-one predictions, never on the test split."""

from __future__ import annotations

from typing import Any

import numpy as np

from ensemble.evaluate.metrics import classification_metrics, regression_metrics
from ensemble.graph.view import EnsembleView
from ensemble.types import Data

__all__ = ["noise_variance", "selected_member"]


def selected_member(view: EnsembleView, level_one: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The member with the best NLL (RMSE for regression) on the fitting rows, from their
    level-one predictions `(rows, members, width)`."""
    names = view.member_names
    if view.task == "classification":
        metric = "nll"
        scores = [classification_metrics(y, level_one[:, i])["nll"] for i in range(len(names))]
    else:
        metric = "rmse"
        scores = [regression_metrics(y, level_one[:, i])["rmse"] for i in range(len(names))]
    best = int(np.argmin(scores))
    return {"name": names[best], "by": f"{metric} on the {len(y)} fitting rows", metric: float(scores[best])}


def noise_variance(view: EnsembleView, level_one: np.ndarray, y: np.ndarray, x: Data) -> float:
    """The variance the members' spread misses, measured on the fitting rows' level-one
    predictions (out of fold in that regime, so never a member's own training rows): the
    ensemble's predictive variance is spread^2 plus this (the spread alone is overconfident)."""
    predictions = level_one.astype("float32")
    prediction = view.combine(predictions, x)
    residual = (np.reshape(y, prediction.shape) - prediction) ** 2
    return float(max(np.mean(residual - predictions.std(axis=1) ** 2), 0.0))
