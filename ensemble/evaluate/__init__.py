"""Measuring an ensemble: metrics, the honest baselines, one figure a module, the report."""

from ensemble.evaluate.baselines import (
    evaluate_ensemble,
    noise_variance,
    selected_member,
)
from ensemble.evaluate.figures import write_figures
from ensemble.evaluate.metrics import (
    classification_metrics,
    disagreement,
    expected_calibration_error,
    gaussian_nll,
    regression_metrics,
)
from ensemble.evaluate.report import (
    format_table,
    markdown_table,
    write_report,
)
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
    uncertainty_scores,
)

__all__ = [
    "adaptive_ece",
    "aurc",
    "brier_decomposition",
    "classification_metrics",
    "classwise_ece",
    "disagreement",
    "evaluate_ensemble",
    "excess_aurc",
    "expected_calibration_error",
    "format_table",
    "gaussian_nll",
    "interval_coverage",
    "markdown_table",
    "noise_variance",
    "ood_detection",
    "quantile_calibration_error",
    "regression_metrics",
    "risk_coverage",
    "selected_member",
    "uncertainty_scores",
    "write_figures",
    "write_report",
]
