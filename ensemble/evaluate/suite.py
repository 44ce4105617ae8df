"""The metric suite every model of a job is scored with (members, baselines, the ensemble): the
core metrics of `ensemble.evaluate.metrics` plus the uncertainty literature's
(`ensemble.evaluate.uncertainty`), as one flat `{metric: float}` per model; and the few columns
a table shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ensemble.evaluate.metrics import classification_metrics, multilabel_metrics, regression_metrics
from ensemble.evaluate.uncertainty import (
    adaptive_ece,
    aurc,
    brier_decomposition,
    classwise_ece,
    excess_aurc,
    interval_coverage,
    ood_detection,
    quantile_calibration_error,
    risk_coverage,
)

__all__ = [
    "CLASSIFICATION_METRICS",
    "COVERAGE_LEVELS",
    "MULTILABEL_METRICS",
    "REGRESSION_METRICS",
    "SUMMARY_METRICS",
    "classification_suite",
    "multilabel_suite",
    "regression_suite",
    "right_vs_wrong_auroc",
    "risk_coverage_points",
    "summary",
]

COVERAGE_LEVELS = (0.5, 0.9, 0.95)

CLASSIFICATION_METRICS = (
    "accuracy",
    "nll",
    "brier",
    "ece",
    "brier_reliability",
    "brier_resolution",
    "brier_uncertainty",
    "adaptive_ece",
    "classwise_ece",
    "aurc",
    "excess_aurc",
)
# With a predictive std; without one, rmse and mae only.
REGRESSION_METRICS = (
    "rmse",
    "mae",
    "nll",
    "coverage_50",
    "coverage_90",
    "coverage_95",
    "quantile_calibration_error",
)

# Means over labels, and the thresholded scores; per label, `"<metric>/<label>"` besides.
MULTILABEL_METRICS = ("subset_accuracy", "hamming_loss", "nll", "brier", "ece")

# The columns of the printed and comparison tables (metrics.json holds every metric).
SUMMARY_METRICS = (
    "accuracy",
    "subset_accuracy",
    "hamming_loss",
    "nll",
    "brier",
    "ece",
    "adaptive_ece",
    "aurc",
    "rmse",
    "mae",
    "coverage_90",
    "quantile_calibration_error",
)


def classification_suite(y: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, NLL, Brier (Brier's own, summed over classes) with its decomposition
    (15 equal-width bins per class column), ECE equal-width and adaptive (15 bins), classwise
    ECE, AURC and excess AURC (confidence: the max probability)."""
    p = np.asarray(probabilities, dtype="float64")
    decomposition = brier_decomposition(y, p)
    return {
        **classification_metrics(y, p),
        "brier_reliability": decomposition["reliability"],
        "brier_resolution": decomposition["resolution"],
        "brier_uncertainty": decomposition["uncertainty"],
        "adaptive_ece": adaptive_ece(y, p),
        "classwise_ece": classwise_ece(y, p),
        "aurc": aurc(y, p),
        "excess_aurc": excess_aurc(y, p),
    }


def multilabel_suite(
    y: np.ndarray, probabilities: np.ndarray, labels: Sequence[str] | None = None
) -> dict[str, float]:
    """`multilabel_metrics`: per-label binary log loss, Brier and ECE, their means over labels,
    subset accuracy and Hamming loss (at the 0.5 threshold)."""
    return multilabel_metrics(y, probabilities, labels)


def regression_suite(y: np.ndarray, prediction: np.ndarray, std: np.ndarray | None) -> dict[str, float]:
    """RMSE and MAE (pooled); with a predictive `std`, the Gaussian NLL, the coverage of the
    central 50/90/95% Gaussian intervals (`coverage_50`, ...) and the quantile calibration error."""
    result = regression_metrics(y, prediction, std)
    if std is not None:
        for level, covered in interval_coverage(y, prediction, std, COVERAGE_LEVELS).items():
            result[f"coverage_{round(level * 100)}"] = covered
        result["quantile_calibration_error"] = quantile_calibration_error(y, prediction, std)
    return result


def summary(rows: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """`rows` cut to the `SUMMARY_METRICS` they all have (in that order), plus any metric every
    row has that the suite does not know of (`disagreement`, a caller's own)."""
    known = {*SUMMARY_METRICS, *CLASSIFICATION_METRICS, *REGRESSION_METRICS, *MULTILABEL_METRICS}
    shared = set.intersection(*(set(values) for values in rows.values())) if rows else set()
    first = next(iter(rows.values()), {})
    columns = [m for m in SUMMARY_METRICS if m in shared] + [
        m
        for m in first
        if m in shared and m not in known and "/" not in m  # not per label
    ]
    return {name: {m: values[m] for m in columns} for name, values in rows.items()}


def right_vs_wrong_auroc(
    y: np.ndarray, probabilities: np.ndarray, scores: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Per uncertainty score (higher = more uncertain), the AUROC with which it tells wrong
    predictions (first argmax != y) from right ones: P(score of a wrong row > score of a right
    row), ties half. 0.5 is chance; below it the score ranks right predictions as MORE
    uncertain than wrong ones. Empty when every prediction is right, or every one wrong."""
    wrong = np.asarray(probabilities).argmax(-1) != np.asarray(y)
    if wrong.all() or not wrong.any():
        return {}
    result = {}
    for name, score in scores.items():
        values = np.asarray(score, dtype="float64").reshape(len(wrong))
        result[name] = ood_detection(values[~wrong], values[wrong])["auroc"]
    return result


def risk_coverage_points(
    y: np.ndarray, probabilities: np.ndarray, points: int = 51
) -> dict[str, Sequence[float]]:
    """The risk-coverage curve (`risk_coverage`, confidence the max probability) at `points`
    coverages at most, evenly spaced in rank and always including full coverage: what a plot
    needs, small enough for metrics.json."""
    coverage, risk = risk_coverage(y, probabilities)
    keep = np.unique(np.linspace(0, len(coverage) - 1, min(points, len(coverage))).round().astype(int))
    return {"coverage": coverage[keep].tolist(), "risk": risk[keep].tolist()}
