"""Honest quality measures of members and ensembles, from scikit-learn where it has them."""

from __future__ import annotations

import numpy as np
from sklearn import metrics

__all__ = ["classification_metrics", "expected_calibration_error", "regression_metrics"]


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, NLL (log loss), multiclass Brier score and ECE of predicted probabilities."""
    # Rows of float32 probabilities sum to 1 only to float32 precision; sklearn checks float64.
    probabilities = np.asarray(probabilities, dtype="float64")
    probabilities = probabilities / probabilities.sum(-1, keepdims=True)
    labels = np.arange(probabilities.shape[-1])
    return {
        "accuracy": float(metrics.accuracy_score(y_true, probabilities.argmax(-1))),
        "nll": float(metrics.log_loss(y_true, probabilities, labels=labels)),
        "brier": float(metrics.brier_score_loss(y_true, probabilities, labels=labels)),
        "ece": expected_calibration_error(y_true, probabilities),
    }


def expected_calibration_error(
    y_true: np.ndarray, probabilities: np.ndarray, bins: int = 15
) -> float:
    """Top-label ECE: the bin-weighted gap between confidence and accuracy (equal-width bins)."""
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == np.asarray(y_true)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; confidence is never below 1/classes > 0.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            gap += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(gap)


def regression_metrics(y_true: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """RMSE and MAE over all targets."""
    y_true = np.asarray(y_true, dtype="float64").reshape(len(prediction), -1)
    prediction = np.asarray(prediction, dtype="float64").reshape(len(y_true), -1)
    return {
        "rmse": float(metrics.root_mean_squared_error(y_true, prediction)),
        "mae": float(metrics.mean_absolute_error(y_true, prediction)),
    }
