"""The report's figures, written as PNG files: which figures a job draws, from what."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ensemble.evaluate.figures.correlation import member_correlation, plot_member_correlation
from ensemble.evaluate.figures.ensemble_size import plot_ensemble_size, plot_ensemble_size_regression
from ensemble.evaluate.figures.ood import plot_ood_histograms
from ensemble.evaluate.figures.reliability import plot_reliability
from ensemble.evaluate.figures.selective import plot_risk_coverage
from ensemble.evaluate.figures.subsets import (
    calibrated_mean,
    configured_combine,
    fitted_on_rows,
    fitting_order,
    temperature_scaled,
)
from ensemble.evaluate.figures.uncertainty import plot_std_vs_error, plot_uncertainty
from ensemble.graph.view import EnsembleView
from ensemble.types import PathLike

if TYPE_CHECKING:
    import keras

    from ensemble.fitting.pipeline import FitReport

__all__ = ["uncertainty_scores", "write_figures"]

_SCALED = "temperature-scaled on the fitting rows"


def write_figures(
    y: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    member_names: list[str],
    scores: Mapping[str, Any],
    directory: PathLike,
    *,
    fit_report: FitReport | None = None,
    model: keras.Model | None = None,
    ood_outputs: Mapping[str, np.ndarray] | None = None,
) -> dict[str, str]:
    """The report's figures of an ensemble's `outputs` on rows with targets `y` (the test
    split), written as PNG files into `directory`; returns `{title: file name}`.

    With `fit_report` (the `FitReport` of the fit), the ensemble-size curve adds members in
    their order on the fitting rows (`fitting_order`) and the reliability diagram's member is
    the one selected there; with `model` too, the curve is drawn for the configured combiner
    refitted on each subset (`configured_combine`), the mean dashed beside it. Like with like:
    when the ensemble was fitted on the fitting rows (`fitted_on_rows`), the reliability
    diagram's baselines (the selected member, the plain mean) and the classification curve's
    mean are temperature-scaled on those rows, as `evaluate_ensemble` scores them; otherwise
    they are raw, and labelled so. With
    `ood_outputs` (the ensemble's outputs on out-of-distribution rows), each uncertainty
    score's densities on both sets are drawn.
    """
    members = outputs["member_predictions"]
    classification = "std" not in outputs

    def path(name: str) -> str:
        return os.path.join(os.fspath(directory), name)

    order = None if fit_report is None else fitting_order(fit_report)
    ordered_on = "fitting rows" if order is not None else "test rows"
    combine, label = None, "plain mean"
    if fit_report is not None and model is not None:
        refit = configured_combine(fit_report, EnsembleView.of(model).combiner, members)
        if refit is not None:
            combine, label = refit
    calibrated = fit_report is not None and fitted_on_rows(fit_report)
    mean_label = f"plain mean, {_SCALED}" if calibrated and classification else "plain mean"
    size_title = (
        f"against ensemble size (members added best first on the {ordered_on}; {label}; dashed: {mean_label})"
    )
    size = {
        "ensemble_metrics": scores["ensemble"],
        "order": None if order is None else order.tolist(),
        "combine": combine,
        "combiner_label": label,
    }
    figures: dict[str, str] = {}
    how = _SCALED + ", as the ensemble is fitted there" if calibrated else "raw"
    if classification:
        best = _selected(member_names, scores, fit_report)
        baselines = _reliability_baselines(
            members, member_names[best], best, fit_report if calibrated else None
        )
        plot_reliability(y, {"ensemble": outputs["prediction"], **baselines}, path("reliability.png"))
        mean = calibrated_mean(fit_report, members) if calibrated and fit_report is not None else None
        plot_ensemble_size(
            y, members, member_names, path("ensemble_size.png"), **size, mean=mean, mean_label=mean_label
        )
        plot_member_correlation(member_correlation(members, y), member_names, path("member_correlation.png"))
        uncertainties = {k: outputs[k] for k in ("entropy", "mutual_information") if k in outputs}
        plot_uncertainty(y, outputs["prediction"], uncertainties, path("uncertainty.png"))
        plot_risk_coverage(y, outputs["prediction"], path("risk_coverage.png"), uncertainties)
        figures.update(
            {
                f"Reliability (test split; marker area: rows in the bin; baselines {how})": "reliability.png",
                f"Accuracy and NLL {size_title}": "ensemble_size.png",
                "Correlation of the members' errors (1 - p(true class))": "member_correlation.png",
                "Uncertainty of right and wrong predictions": "uncertainty.png",
                "Selective risk against coverage (test split)": "risk_coverage.png",
            }
        )
    else:
        plot_ensemble_size_regression(y, members, member_names, path("ensemble_size.png"), **size)
        plot_member_correlation(
            member_correlation(members, y, task="regression"), member_names, path("member_correlation.png")
        )
        plot_std_vs_error(y, outputs["prediction"], outputs["std"], path("std_vs_error.png"))
        figures.update(
            {
                f"RMSE {size_title}": "ensemble_size.png",
                "Correlation of the members' residuals": "member_correlation.png",
                "Members' spread against the ensemble's error": "std_vs_error.png",
            }
        )
    if ood_outputs is not None:
        inside, out = uncertainty_scores(outputs), uncertainty_scores(ood_outputs)
        shared = [name for name in inside if name in out]
        plot_ood_histograms(
            {k: inside[k] for k in shared}, {k: out[k] for k in shared}, path("ood_scores.png")
        )
        figures["Uncertainty scores on test and out-of-distribution rows (densities)"] = "ood_scores.png"
    return figures


def uncertainty_scores(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-row scores, higher = more likely OOD, from an ensemble's outputs: 1 - max probability
    and the graph's `entropy` and `mutual_information` (classification), the mean `std` over
    targets (regression); the scores `ensemble.evaluate.ood` measures."""
    if "std" in outputs:
        std = np.asarray(outputs["std"], dtype="float64")
        return {"std": std.reshape(len(std), -1).mean(1)}
    scores = {"one_minus_max_probability": 1.0 - np.asarray(outputs["prediction"], dtype="float64").max(-1)}
    for name in ("entropy", "mutual_information"):
        if name in outputs:
            scores[name] = np.asarray(outputs[name], dtype="float64").reshape(-1)
    return scores


def _reliability_baselines(
    members: np.ndarray, name: str, best: int, fit_report: FitReport | None
) -> dict[str, np.ndarray]:
    """The selected member and the plain mean on the test split, as the reliability diagram
    draws them beside the ensemble: temperature-scaled on the fitting rows of `fit_report`
    (the baselines `evaluate_ensemble` scores), raw without one; the labels say which."""
    p = np.asarray(members, dtype="float64")
    if fit_report is None:
        return {f"selected member ({name}), raw": p[:, best], "plain mean, raw": p.mean(1)}
    level_one, labels = np.asarray(fit_report.level_one, dtype="float64"), fit_report.targets
    return {
        f"selected member ({name}), {_SCALED}": temperature_scaled(level_one[:, best], labels, p[:, best]),
        f"plain mean, {_SCALED}": temperature_scaled(level_one.mean(1), labels, p.mean(1)),
    }


def _selected(member_names: list[str], scores: Mapping[str, Any], fit_report: FitReport | None) -> int:
    """The member selected on the fitting rows (`fit_report.selected_member`, or
    `scores["selected_member"]` or `scores["baselines"]["selected"]`, as metrics.json holds
    it); without one, the best test NLL (the old figure's choice)."""
    baselines = scores.get("baselines")
    chosen = None if fit_report is None else fit_report.selected_member
    for selected in (chosen, scores.get("selected_member"), (baselines or {}).get("selected")):
        if isinstance(selected, Mapping) and selected.get("name") in member_names:
            return member_names.index(str(selected["name"]))
    return min(range(len(member_names)), key=lambda i: scores["members"][member_names[i]]["nll"])
