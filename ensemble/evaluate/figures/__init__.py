"""One figure a module, each backed by a pure function of the numbers it draws."""

from ensemble.evaluate.figures.checks import (
    EnsembleSizeCurve,
    EnsembleSizeCurveRegression,
    ReliabilityCurve,
    StdVsError,
    UncertaintySplit,
)
from ensemble.evaluate.figures.correlation import (
    member_correlation,
    plot_member_correlation,
)
from ensemble.evaluate.figures.ensemble_size import (
    ensemble_size_curve,
    ensemble_size_curve_regression,
    plot_ensemble_size,
    plot_ensemble_size_regression,
)
from ensemble.evaluate.figures.reliability import plot_reliability, reliability_curve
from ensemble.evaluate.figures.uncertainty import (
    plot_std_vs_error,
    plot_uncertainty,
    std_vs_error,
    uncertainty_split,
)
from ensemble.evaluate.figures.write import write_figures

__all__ = [
    "EnsembleSizeCurve",
    "EnsembleSizeCurveRegression",
    "ReliabilityCurve",
    "StdVsError",
    "UncertaintySplit",
    "ensemble_size_curve",
    "ensemble_size_curve_regression",
    "member_correlation",
    "plot_ensemble_size",
    "plot_ensemble_size_regression",
    "plot_member_correlation",
    "plot_reliability",
    "plot_std_vs_error",
    "plot_uncertainty",
    "reliability_curve",
    "std_vs_error",
    "uncertainty_split",
    "write_figures",
]
