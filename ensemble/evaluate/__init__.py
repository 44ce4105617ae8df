"""Measuring an ensemble: metrics, the honest baselines, one figure a module, the report."""

from ensemble.evaluate.baselines import (
    evaluate_ensemble,
    noise_variance,
    selected_member,
)
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
    write_figures,
    write_report,
)

__all__ = [
    "classification_metrics",
    "disagreement",
    "evaluate_ensemble",
    "expected_calibration_error",
    "format_table",
    "gaussian_nll",
    "markdown_table",
    "noise_variance",
    "regression_metrics",
    "selected_member",
    "write_figures",
    "write_report",
]
