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
    ColorScale,
    FloatArray,
    checked_floats,
    checked_labels,
    checked_names,
    checked_probabilities,
    checked_targets,
    color_scale,
    save_png,
)
from ensemble.types import PathLike, Task

__all__ = ["correlation_scale", "member_correlation", "plot_member_correlation"]


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


def correlation_scale(matrix: npt.ArrayLike) -> ColorScale:
    """The heatmap's colour scale, fitted to the off-diagonal correlations (`color_scale`): the
    diagonal is 1 by definition and would stretch a scale the members' 0.6 to 0.9 need."""
    values = np.asarray(matrix, dtype="float64")
    off_diagonal = values[~np.eye(len(values), dtype=bool)] if len(values) > 1 else values.ravel()
    return color_scale(off_diagonal)


def plot_member_correlation(matrix: npt.ArrayLike, member_names: Sequence[str], path: PathLike) -> Path:
    """Annotated heatmap of a members x members correlation matrix, its colours fitted to the
    off-diagonal values (diverging about 0 only when they hold both signs)."""
    values = checked_floats(matrix, "matrix", ndim=2, shape="(members, members)")
    if values.shape[0] != values.shape[1]:
        raise EnsembleError(f"Expected a square correlation matrix. Received: matrix.shape={values.shape}")
    names = checked_names(member_names, len(values))
    scale = correlation_scale(values)
    size = 1.5 + 0.6 * len(names)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(values, cmap=scale.cmap, vmin=scale.vmin, vmax=scale.vmax)
    figure.colorbar(image, ax=axes, label="Pearson correlation of errors")
    ticks = np.arange(len(names))
    axes.set_xticks(ticks, names, rotation=45, ha="right")
    axes.set_yticks(ticks, names)
    colors = image.to_rgba(values)  # the cell colours, to pick legible text on each
    for (row, column), value in np.ndenumerate(values):
        text = "n/a" if math.isnan(value) else f"{value:.2f}"
        red, green, blue, _ = colors[row, column]
        dark = not math.isnan(value) and 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # luma
        color = "white" if dark else "black"  # a NaN cell is left blank: black text
        axes.text(column, row, text, ha="center", va="center", color=color, fontsize=8)
    axes.set_title("Member error correlation")
    return save_png(figure, path)
