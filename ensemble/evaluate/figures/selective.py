"""Selective classification: the risk-coverage curve of the ensemble, one per confidence score."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from ensemble.evaluate.figures.checks import (
    FloatArray,
    RiskCoverageCurve,
    check_same_rows,
    checked_floats,
    checked_labels,
    checked_probabilities,
    save_png,
)
from ensemble.evaluate.uncertainty import aurc, risk_coverage
from ensemble.types import PathLike

__all__ = ["MAX_PROBABILITY", "oracle_risk", "plot_risk_coverage", "risk_coverage_curves"]

MAX_PROBABILITY = "max probability"


def risk_coverage_curves(
    y: npt.ArrayLike,
    prediction: npt.ArrayLike,
    uncertainties: Mapping[str, npt.ArrayLike] | None = None,
) -> dict[str, RiskCoverageCurve]:
    """Risk-coverage curves of `prediction` (rows, classes), rows kept most confident first:
    by the max probability (always, first), and by each score of `uncertainties` (entropy,
    mutual information, ...: higher = less sure, so the lowest are kept first).

    Each curve is `ensemble.evaluate.uncertainty.risk_coverage` (ties count with their
    block's mean error) and its `aurc`.
    """
    p = checked_probabilities(prediction, "prediction", ndim=2)
    labels = checked_labels(y, classes=p.shape[-1], rows=len(p))
    confidences: dict[str, FloatArray] = {MAX_PROBABILITY: p.max(-1)}
    for name, score in (uncertainties or {}).items():
        values = checked_floats(score, name, ndim=1, shape="(rows,)")
        check_same_rows(prediction=p, **{name: values})
        confidences[name] = -values
    curves: dict[str, RiskCoverageCurve] = {}
    for name, confidence in confidences.items():
        coverage, risk = risk_coverage(labels, p, confidence)
        curves[name] = {"coverage": coverage, "risk": risk, "aurc": aurc(labels, p, confidence)}
    return curves


def oracle_risk(errors: npt.ArrayLike) -> FloatArray:
    """The least selective risk reachable with these 0/1 `errors` (every error kept last):
    max(0, k - (n - e)) / k at coverage k/n, k = 1..n."""
    wrong = np.asarray(errors, dtype="float64")
    n, e = len(wrong), float(wrong.sum())
    k = np.arange(1, n + 1, dtype="float64")
    return np.asarray(np.maximum(0.0, k - (n - e)) / k, dtype=np.float64)


def plot_risk_coverage(
    y: npt.ArrayLike,
    prediction: npt.ArrayLike,
    path: PathLike,
    uncertainties: Mapping[str, npt.ArrayLike] | None = None,
) -> Path:
    """Selective risk against coverage per confidence score, AURC in the legend, with the
    oracle's curve (errors ranked last) as the floor no score can go below."""
    curves = risk_coverage_curves(y, prediction, uncertainties)
    p = np.asarray(prediction, dtype="float64")
    errors = p.argmax(-1) != np.asarray(y).astype(np.int64)
    figure = Figure(figsize=(6, 4.5), layout="constrained")
    axes = figure.subplots()
    for name, curve in curves.items():
        axes.plot(curve["coverage"], curve["risk"], label=f"{name} (AURC {curve['aurc']:.4f})")
    floor = oracle_risk(errors)
    coverage = next(iter(curves.values()))["coverage"]
    axes.plot(
        coverage,
        floor,
        linestyle=":",
        color="grey",
        label=f"oracle (AURC {float(np.mean(floor)):.4f})",
    )
    axes.set(
        xlim=(0, 1),
        ylim=(0, None),
        xlabel="coverage (share of rows kept, most confident first)",
        ylabel="selective risk (error rate of kept rows)",
        title=f"Risk-coverage ({len(errors)} rows, error {float(np.mean(errors)):.3f} at full coverage)",
    )
    axes.legend()
    return save_png(figure, path)
