"""Uncertainty of right and wrong predictions; a regression ensemble's spread against its error."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure
from scipy import stats
from sklearn.metrics import roc_auc_score

from ensemble.errors import EnsembleError
from ensemble.evaluate.figures.checks import (
    StdVsError,
    UncertaintySplit,
    check_same_rows,
    checked_floats,
    checked_labels,
    checked_probabilities,
    checked_targets,
    save_png,
)
from ensemble.types import PathLike

__all__ = ["plot_std_vs_error", "plot_uncertainty", "std_vs_error", "uncertainty_split"]


def uncertainty_split(
    y: npt.ArrayLike, prediction: npt.ArrayLike, uncertainty: npt.ArrayLike
) -> UncertaintySplit:
    """Uncertainty of rows the ensemble got right vs wrong, and the ROC AUC of uncertainty for errors."""
    p = checked_probabilities(prediction, "prediction", ndim=2)
    labels = checked_labels(y, classes=p.shape[-1], rows=len(p))
    values = checked_floats(uncertainty, "uncertainty", ndim=1, shape="(rows,)")
    check_same_rows(prediction=p, uncertainty=values)
    wrong = p.argmax(-1) != labels
    auc = float(roc_auc_score(wrong, values)) if 0 < wrong.sum() < len(wrong) else math.nan
    return {"right": values[~wrong], "wrong": values[wrong], "auc": auc}


def plot_uncertainty(
    y: npt.ArrayLike, prediction: npt.ArrayLike, uncertainties: Mapping[str, npt.ArrayLike], path: PathLike
) -> Path:
    """Per uncertainty measure, overlaid histograms of rows predicted right and wrong."""
    if not uncertainties:
        raise EnsembleError("Expected at least one uncertainty measure. Received: uncertainties={}")
    splits = {name: uncertainty_split(y, prediction, u) for name, u in uncertainties.items()}
    figure = Figure(figsize=(4.5 * len(splits), 3.5), layout="constrained")
    for axes, (name, split) in zip(
        figure.subplots(1, len(splits), squeeze=False)[0], splits.items(), strict=True
    ):
        edges = np.histogram_bin_edges(np.concatenate([split["right"], split["wrong"]]), bins=30)
        for side, values, color in (
            ("right", split["right"], "tab:green"),
            ("wrong", split["wrong"], "tab:red"),
        ):
            axes.hist(values, bins=edges, alpha=0.5, color=color, label=f"{side} ({len(values)})")
        axes.set(xlabel=name, ylabel="rows", title=f"{name}: error-detection AUC {split['auc']:.3f}")
        axes.legend()
    return save_png(figure, path)


def std_vs_error(y: npt.ArrayLike, prediction: npt.ArrayLike, std: npt.ArrayLike) -> StdVsError:
    """|prediction - y| against the members' std, flattened over rows and targets, with Spearman rho."""
    predicted = checked_floats(prediction, "prediction", ndim=2, shape="(rows, targets)")
    spread = checked_floats(std, "std", ndim=2, shape="(rows, targets)")
    if spread.shape != predicted.shape:
        raise EnsembleError(
            f"Expected std of the shape of prediction {predicted.shape}. Received: std.shape={spread.shape}"
        )
    abs_error = np.abs(predicted - checked_targets(y, *predicted.shape)).ravel()
    spread = spread.ravel()
    # Spearman is undefined for a constant side; scipy would warn and return NaN.
    defined = np.ptp(abs_error) > 0 and np.ptp(spread) > 0
    spearman = float(stats.spearmanr(spread, abs_error).statistic) if defined else math.nan
    return {"abs_error": abs_error, "std": spread, "spearman": spearman}


def plot_std_vs_error(
    y: npt.ArrayLike, prediction: npt.ArrayLike, std: npt.ArrayLike, path: PathLike
) -> Path:
    """Scatter of |error| against the members' std, Spearman rho in the title."""
    result = std_vs_error(y, prediction, std)
    figure = Figure(figsize=(5, 4.5), layout="constrained")
    axes = figure.subplots()
    axes.scatter(result["std"], result["abs_error"], s=6, alpha=0.4, rasterized=True)
    axes.set(
        xlabel="members' std",
        ylabel="|prediction - y|",
        title=f"Error vs spread: Spearman rho {result['spearman']:.3f}",
    )
    return save_png(figure, path)
