"""The honest single-model baselines, and how every member, their mean and the ensemble score.

The member one would ship alone is chosen as the combiner is fitted: on the fitting rows, never
on the test split (the member best on the test split is picked by peeking at it).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from ensemble.evaluate.metrics import classification_metrics, regression_metrics
from ensemble.graph.view import EnsembleView
from ensemble.types import Data

__all__ = ["evaluate_ensemble", "noise_variance", "selected_member"]


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


def evaluate_ensemble(
    model: keras.Model,
    x: Data,
    y: np.ndarray,
    *,
    outputs: dict[str, np.ndarray] | None = None,
    fit_report: Any = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Metrics of every member, their plain mean and the ensemble on `(x, y)` (a test split).

    `outputs` are the model's outputs on `x` when the caller has them. Regression NLL needs a
    predictive std: each member's (and the mean's) is its RMSE on the fitting rows of
    `fit_report` (a `FitReport`), the ensemble's sqrt(spread^2 + its noise variance); without a
    report, NLL is left out.
    """
    view = EnsembleView.of(model)
    if outputs is None:
        outputs = model.predict(x, batch_size=batch_size, verbose=0)
    names = view.member_names
    members_out = outputs["member_predictions"]
    if view.task == "classification":
        return {
            "members": {n: classification_metrics(y, members_out[:, i]) for i, n in enumerate(names)},
            "mean": classification_metrics(y, members_out.mean(axis=1)),
            "ensemble": classification_metrics(y, outputs["prediction"]),
        }

    def rmse_std(i: int | None) -> np.ndarray | None:
        if fit_report is None:
            return None
        fitted = fit_report.level_one.mean(1) if i is None else fit_report.level_one[:, i]
        rmse = np.sqrt(np.mean((np.reshape(fit_report.targets, fitted.shape) - fitted) ** 2, axis=0))
        return np.broadcast_to(rmse, members_out[:, 0].shape)

    variance = None if fit_report is None else fit_report.noise_variance
    std = None if variance is None else np.sqrt(outputs["std"] ** 2 + variance)
    return {
        "members": {n: regression_metrics(y, members_out[:, i], rmse_std(i)) for i, n in enumerate(names)},
        "mean": regression_metrics(y, members_out.mean(axis=1), rmse_std(None)),
        "ensemble": regression_metrics(y, outputs["prediction"], std),
    }
