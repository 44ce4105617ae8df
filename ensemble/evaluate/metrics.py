"""Honest quality measures of members and ensembles, from scikit-learn where it has them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn import metrics

from ensemble.errors import EnsembleError

__all__ = [
    "classification_metrics",
    "disagreement",
    "expected_calibration_error",
    "gaussian_nll",
    "multilabel_metrics",
    "regression_metrics",
]

# A predicted standard deviation of 0 would make the likelihood infinite; floor it instead.
MIN_STD = 1e-6


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, NLL (log loss), Brier score and ECE of predicted probabilities.

    The Brier score is Brier's own: the squared error summed over every class column, averaged
    over rows, in [0, 2], for any number of classes, two included (scikit-learn's binary
    default scores the positive column only, half of this: `scale_by_half=False` here)."""
    # Rows of float32 probabilities sum to 1 only to float32 precision; sklearn checks float64.
    probabilities = np.asarray(probabilities, dtype="float64")
    probabilities = probabilities / probabilities.sum(-1, keepdims=True)
    labels = np.arange(probabilities.shape[-1])
    return {
        "accuracy": float(metrics.accuracy_score(y_true, probabilities.argmax(-1))),
        "nll": float(metrics.log_loss(y_true, probabilities, labels=labels)),
        "brier": float(metrics.brier_score_loss(y_true, probabilities, labels=labels, scale_by_half=False)),
        "ece": expected_calibration_error(y_true, probabilities),
    }


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
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


def regression_metrics(
    y_true: np.ndarray, prediction: np.ndarray, std: np.ndarray | None = None
) -> dict[str, float]:
    """RMSE and MAE pooled over every row and target (the root of the mean squared error of
    all entries, not a mean of per-target RMSEs); with a predicted `std`, also the Gaussian NLL."""
    y_true = np.asarray(y_true, dtype="float64").reshape(len(prediction), -1)
    prediction = np.asarray(prediction, dtype="float64").reshape(len(y_true), -1)
    result = {
        "rmse": math.sqrt(metrics.mean_squared_error(y_true, prediction)),
        "mae": float(metrics.mean_absolute_error(y_true, prediction)),
    }
    if std is not None:
        result["nll"] = gaussian_nll(y_true, prediction, std)
    return result


def gaussian_nll(y_true: np.ndarray, mean: np.ndarray, std: np.ndarray | float) -> float:
    """Mean negative log-likelihood of `y_true` under independent N(mean, std**2), over all rows
    and targets; `std` (an array like `mean`, or one number) is floored at 1e-6."""
    mean = np.asarray(mean, dtype="float64")
    mean = mean.reshape(len(mean), -1)
    # Reshaped, not broadcast: targets of shape (rows,) against (rows, 1) must not become (rows, rows).
    y_true = np.asarray(y_true, dtype="float64").reshape(mean.shape)
    std = np.asarray(std, dtype="float64")
    std = np.maximum(std if std.ndim == 0 else std.reshape(mean.shape), MIN_STD)
    z = (y_true - mean) / std
    return float(np.mean(0.5 * z**2 + np.log(std) + 0.5 * math.log(2 * math.pi)))


def disagreement(member_probabilities: np.ndarray, prediction: np.ndarray) -> float:
    """Mean over rows of the fraction of members whose top class differs from the ensemble's.

    `member_probabilities` is `(rows, members, classes)` (the ensemble's `member_predictions`),
    `prediction` is `(rows, classes)`; ties go to the lowest class index, as in `np.argmax`.
    """
    member_probabilities = np.asarray(member_probabilities)
    prediction = np.asarray(prediction)
    if member_probabilities.ndim != 3 or prediction.shape != (
        member_probabilities.shape[0],
        member_probabilities.shape[2],
    ):
        raise EnsembleError(
            "Expected member_probabilities of shape (rows, members, classes) and prediction of "
            f"shape (rows, classes). Received: {member_probabilities.shape} and {prediction.shape}."
        )
    differs = member_probabilities.argmax(-1) != prediction.argmax(-1)[:, None]
    return float(differs.mean())


def multilabel_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, labels: Sequence[str] | None = None
) -> dict[str, float]:
    """Per-label binary log loss, Brier score and ECE of independent label probabilities
    `(rows, labels)` against a 0/1 matrix `y_true`, their means over labels (`nll`, `brier`,
    `ece`), and, at the 0.5 threshold, subset accuracy (every label of a row right) and the
    Hamming loss (the share of wrong labels). Per-label keys are `"nll/<label>"` (the label's
    name, or its column index). The Brier score is scikit-learn's binary one, the mean squared
    error of the positive probability; the ECE is `expected_calibration_error` of `[1 - p, p]`."""
    y = np.asarray(y_true).astype("int64")
    p = np.asarray(probabilities, dtype="float64")
    if y.shape != p.shape or p.ndim != 2:
        raise EnsembleError(
            "Expected y_true and probabilities of one shape (rows, labels). "
            f"Received: {y.shape} and {p.shape}."
        )
    names = [str(j) for j in range(p.shape[1])] if labels is None else [str(label) for label in labels]
    result: dict[str, float] = {
        "subset_accuracy": float(metrics.accuracy_score(y, (p >= 0.5).astype("int64"))),
        "hamming_loss": float(metrics.hamming_loss(y, (p >= 0.5).astype("int64"))),
    }
    per_label: dict[str, list[float]] = {"nll": [], "brier": [], "ece": []}
    for j, name in enumerate(names):
        scores = {
            "nll": float(metrics.log_loss(y[:, j], p[:, j], labels=[0, 1])),
            "brier": float(metrics.brier_score_loss(y[:, j], p[:, j], pos_label=1)),
            "ece": expected_calibration_error(y[:, j], np.stack([1 - p[:, j], p[:, j]], axis=-1)),
        }
        for metric, value in scores.items():
            per_label[metric].append(value)
            result[f"{metric}/{name}"] = value
    result.update({metric: float(np.mean(values)) for metric, values in per_label.items()})
    return result
