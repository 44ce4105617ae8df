"""The member one would ship alone, and the variance the members' spread misses: both measured
on the fitting rows' level-one predictions, never on the test split."""

from __future__ import annotations

from typing import Any

import numpy as np

from ensemble.evaluate.metrics import classification_metrics, regression_metrics
from ensemble.fitting.temperature import Scaling, calibrated, fit_scaling
from ensemble.graph.view import EnsembleView
from ensemble.types import Data

__all__ = ["noise_variance", "selected_member"]


def selected_member(view: EnsembleView, level_one: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The member one would ship alone, from the fitting rows' level-one predictions `(rows,
    members, width)`: for classification the best NLL after temperature scaling on those rows
    (one would calibrate it before shipping it; a member no positive temperature fits keeps its
    raw NLL), for regression the best RMSE."""
    names = view.member_names
    if view.task == "regression":
        scores = [regression_metrics(y, level_one[:, i])["rmse"] for i in range(len(names))]
        best = int(np.argmin(scores))
        return {"name": names[best], "by": f"rmse on the {len(y)} fitting rows", "rmse": float(scores[best])}
    scores, temperatures = [], []
    for i in range(len(names)):
        try:
            scaling = fit_scaling(level_one[:, i], y)
        except ValueError:  # ranks the true class no better than chance: left raw
            scaling = Scaling("temperature")
        temperatures.append(scaling.temperature)
        scores.append(classification_metrics(y, calibrated(level_one[:, i], scaling))["nll"])
    best = int(np.argmin(scores))
    return {
        "name": names[best],
        "by": f"nll after temperature scaling on the {len(y)} fitting rows",
        "nll": float(scores[best]),
        "temperature": float(temperatures[best]),
    }


def noise_variance(view: EnsembleView, level_one: np.ndarray, y: np.ndarray, x: Data) -> float:
    """The variance the members' spread misses, measured on the fitting rows' level-one
    predictions (out of fold in that regime, so never a member's own training rows): the
    ensemble's predictive variance is spread^2 plus this (the spread alone is overconfident)."""
    predictions = level_one.astype("float32")
    prediction = view.combine(predictions, x)
    residual = (np.reshape(y, prediction.shape) - prediction) ** 2
    return float(max(np.mean(residual - predictions.std(axis=1) ** 2), 0.0))
