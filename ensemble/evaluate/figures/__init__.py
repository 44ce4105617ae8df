"""One figure a module, each backed by a pure function of the numbers it draws."""

from ensemble.evaluate.figures.checks import (
    ColorScale,
    EnsembleSizeCurve,
    EnsembleSizeCurveRegression,
    OodHistogram,
    ReliabilityCurve,
    RiskCoverageCurve,
    StdVsError,
    UncertaintySplit,
    color_scale,
)
from ensemble.evaluate.figures.correlation import (
    correlation_scale,
    member_correlation,
    plot_member_correlation,
)
from ensemble.evaluate.figures.ensemble_size import (
    Combine,
    ensemble_size_curve,
    ensemble_size_curve_regression,
    plot_ensemble_size,
    plot_ensemble_size_regression,
)
from ensemble.evaluate.figures.ood import ood_histograms, plot_ood_histograms
from ensemble.evaluate.figures.reliability import marker_areas, plot_reliability, reliability_curve
from ensemble.evaluate.figures.selective import oracle_risk, plot_risk_coverage, risk_coverage_curves
from ensemble.evaluate.figures.subsets import (
    calibrated_mean,
    configured_combine,
    fitted_on_rows,
    fitting_order,
    temperature_scaled,
)
from ensemble.evaluate.figures.uncertainty import (
    plot_std_vs_error,
    plot_uncertainty,
    std_vs_error,
    uncertainty_split,
)
from ensemble.evaluate.figures.write import write_figures

__all__ = [
    "ColorScale",
    "Combine",
    "EnsembleSizeCurve",
    "EnsembleSizeCurveRegression",
    "OodHistogram",
    "ReliabilityCurve",
    "RiskCoverageCurve",
    "StdVsError",
    "UncertaintySplit",
    "calibrated_mean",
    "color_scale",
    "configured_combine",
    "correlation_scale",
    "ensemble_size_curve",
    "ensemble_size_curve_regression",
    "fitted_on_rows",
    "fitting_order",
    "marker_areas",
    "member_correlation",
    "ood_histograms",
    "oracle_risk",
    "plot_ensemble_size",
    "plot_ensemble_size_regression",
    "plot_member_correlation",
    "plot_ood_histograms",
    "plot_reliability",
    "plot_risk_coverage",
    "plot_std_vs_error",
    "plot_uncertainty",
    "reliability_curve",
    "risk_coverage_curves",
    "std_vs_error",
    "temperature_scaled",
    "uncertainty_split",
    "write_figures",
]
