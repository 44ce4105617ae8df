"""Measuring an ensemble: metrics, the honest baselines, one figure a module, the report."""

from ensemble.evaluate.baselines import (
    evaluate_ensemble,
    gain,
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
from ensemble.evaluate.ood import ensemble_scores, evaluate_ood
from ensemble.evaluate.report import (
    format_table,
    markdown_table,
    write_report,
)
from ensemble.evaluate.report_sections import console_ending, gain_line, like_with_like
from ensemble.evaluate.suite import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    SUMMARY_METRICS,
    classification_suite,
    regression_suite,
    right_vs_wrong_auroc,
    risk_coverage_points,
    summary,
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
    "CLASSIFICATION_METRICS",
    "REGRESSION_METRICS",
    "SUMMARY_METRICS",
    "adaptive_ece",
    "aurc",
    "brier_decomposition",
    "classification_metrics",
    "classification_suite",
    "classwise_ece",
    "console_ending",
    "disagreement",
    "ensemble_scores",
    "evaluate_ensemble",
    "evaluate_ood",
    "excess_aurc",
    "expected_calibration_error",
    "format_table",
    "gain",
    "gain_line",
    "gaussian_nll",
    "interval_coverage",
    "like_with_like",
    "markdown_table",
    "noise_variance",
    "ood_detection",
    "quantile_calibration_error",
    "regression_metrics",
    "regression_suite",
    "right_vs_wrong_auroc",
    "risk_coverage",
    "risk_coverage_points",
    "selected_member",
    "summary",
    "uncertainty_scores",
    "write_figures",
    "write_report",
]
