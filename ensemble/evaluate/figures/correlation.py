"""The correlation of the members' errors (classification) or residuals (regression)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from ensemble.errors import EnsembleError
from ensemble.evaluate.figures.checks import (
    FloatArray,
    checked_floats,
    checked_labels,
    checked_names,
    checked_probabilities,
    checked_targets,
    save_png,
)
from ensemble.types import PathLike, Task

__all__ = ["member_correlation", "plot_member_correlation"]


def member_correlation(
    member_outputs: npt.ArrayLike, y: npt.ArrayLike | None = None, *, task: Task = "classification"
) -> FloatArray:
    """Members x members Pearson correlation of the members' errors.

    Errors are `1 - p(true class)` for classification and `prediction - y` for regression
    (`member_outputs` of shape (rows, members, classes or targets)). Without `y`, the raw
    outputs are correlated instead. A member with constant errors has NaN correlations.
    """
    if task not in ("classification", "regression"):
        raise EnsembleError(f"Expected task 'classification' or 'regression'. Received: task={task!r}")
    if task == "classification" and y is not None:
        p = checked_probabilities(member_outputs, "member_outputs", ndim=3)
        labels = checked_labels(y, classes=p.shape[-1], rows=len(p))
        errors = 1.0 - np.take_along_axis(p, labels[:, None, None], axis=2)
    else:
        outputs = checked_floats(member_outputs, "member_outputs", ndim=3, shape="(rows, members, outputs)")
        errors = (
            outputs
            if y is None
            else outputs - checked_targets(y, len(outputs), outputs.shape[-1])[:, None, :]
        )
    members = errors.shape[1]
    vectors = np.moveaxis(errors, 1, 0).reshape(members, -1)
    with np.errstate(divide="ignore", invalid="ignore"):  # constant errors: NaN, not a warning
        matrix = np.corrcoef(vectors)
    return np.asarray(matrix, dtype="float64").reshape(members, members)


def plot_member_correlation(matrix: npt.ArrayLike, member_names: Sequence[str], path: PathLike) -> Path:
    """Annotated heatmap of a members x members correlation matrix."""
    values = checked_floats(matrix, "matrix", ndim=2, shape="(members, members)")
    if values.shape[0] != values.shape[1]:
        raise EnsembleError(f"Expected a square correlation matrix. Received: matrix.shape={values.shape}")
    names = checked_names(member_names, len(values))
    size = 1.5 + 0.6 * len(names)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(values, cmap="coolwarm", vmin=-1, vmax=1)
    figure.colorbar(image, ax=axes, label="Pearson correlation of errors")
    ticks = np.arange(len(names))
    axes.set_xticks(ticks, names, rotation=45, ha="right")
    axes.set_yticks(ticks, names)
    for (row, column), value in np.ndenumerate(values):
        text = "n/a" if math.isnan(value) else f"{value:.2f}"
        color = "white" if abs(value) > 0.6 else "black"
        axes.text(column, row, text, ha="center", va="center", color=color, fontsize=8)
    axes.set_title("Member error correlation")
    return save_png(figure, path)
