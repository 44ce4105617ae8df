"""What every figure shares: the curves' typed results, argument checks that name the argument,
a colour scale fitted to the values, and an atomic PNG writer.

Figures are built as `matplotlib.figure.Figure` objects, never through pyplot: no global figure
state, no backend switch, and `savefig` picks the Agg canvas for PNG by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, TypedDict

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from ensemble.atomic import atomic_path
from ensemble.errors import EnsembleError
from ensemble.types import PathLike

__all__ = [
    "DPI",
    "ColorScale",
    "EnsembleSizeCurve",
    "EnsembleSizeCurveRegression",
    "FloatArray",
    "IntArray",
    "OodHistogram",
    "ReliabilityCurve",
    "RiskCoverageCurve",
    "StdVsError",
    "UncertaintySplit",
    "check_same_rows",
    "checked_floats",
    "checked_labels",
    "checked_names",
    "checked_probabilities",
    "checked_targets",
    "color_scale",
    "save_png",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DPI = 120
# Rows of float32/float16 softmax outputs sum to 1 only approximately; logits miss by far more.
_SUM_TOLERANCE = 1e-2


class ReliabilityCurve(TypedDict):
    """The non-empty confidence bins only: each one's index into the `bins` equal-width bins
    (`edges`), mean confidence, accuracy and row count; and the ECE over all rows."""

    edges: FloatArray
    bin: IntArray
    confidence: FloatArray
    accuracy: FloatArray
    count: IntArray
    ece: float


class EnsembleSizeCurve(TypedDict):
    """Accuracy and NLL of the plain mean of the first `k` members of `order`; `combined`: the
    same for the configured combiner refitted on those members (NaN where it is undefined),
    None when no combiner was given."""

    k: IntArray
    order: IntArray
    accuracy: FloatArray
    nll: FloatArray
    combined: dict[str, FloatArray] | None


class EnsembleSizeCurveRegression(TypedDict):
    """RMSE of the plain mean of the first `k` members of `order`; `combined` as above."""

    k: IntArray
    order: IntArray
    rmse: FloatArray
    combined: dict[str, FloatArray] | None


class RiskCoverageCurve(TypedDict):
    """Selective risk (error rate of the kept rows) at each coverage k/n, keeping the rows of
    highest confidence first, and its area (AURC)."""

    coverage: FloatArray
    risk: FloatArray
    aurc: float


class OodHistogram(TypedDict):
    """One score's densities on shared bin `edges` (each integrates to 1), in-distribution and
    out of distribution, and the score's OOD AUROC (higher score = more likely OOD)."""

    edges: FloatArray
    density_in: FloatArray
    density_out: FloatArray
    auroc: float


class UncertaintySplit(TypedDict):
    """Uncertainty of the rows predicted right and wrong, and its ROC AUC for detecting errors."""

    right: FloatArray
    wrong: FloatArray
    auc: float


class StdVsError(TypedDict):
    """Absolute error and predicted std, one entry per row and target, and their Spearman rho."""

    abs_error: FloatArray
    std: FloatArray
    spearman: float


class ColorScale(NamedTuple):
    """A colormap and its limits: diverging and centred at 0 when the values straddle 0."""

    cmap: str
    vmin: float
    vmax: float


def color_scale(values: npt.ArrayLike) -> ColorScale:
    """The colour scale fitted to the finite `values`: `coolwarm` over [-m, m], m = max |v|,
    when they hold both signs; else `viridis` over [min, max] (widened by 0.5 when constant,
    [0, 1] when nothing is finite)."""
    array = np.asarray(values, dtype="float64")
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return ColorScale("viridis", 0.0, 1.0)
    low, high = float(finite.min()), float(finite.max())
    if low < 0 < high:
        bound = max(-low, high)
        return ColorScale("coolwarm", -bound, bound)
    if low == high:
        return ColorScale("viridis", low - 0.5, high + 0.5)
    return ColorScale("viridis", low, high)


def save_png(figure: Figure, path: PathLike) -> Path:
    """Write `figure` as a PNG at `path` atomically (no half-written file)."""
    with atomic_path(path) as staged, open(staged, "xb") as stream:  # plain open: umask's permissions
        figure.savefig(stream, format="png", dpi=DPI, bbox_inches="tight")
    return Path(path)


def checked_floats(value: npt.ArrayLike, name: str, *, ndim: int, shape: str) -> FloatArray:
    array = np.asarray(value, dtype="float64")
    if array.ndim != ndim:
        raise EnsembleError(f"Expected {name} of shape {shape}. Received: {name}.shape={array.shape}")
    if array.shape[0] == 0:
        raise EnsembleError(f"Expected at least one row in {name}. Received: {name}.shape={array.shape}")
    return array


def checked_probabilities(value: npt.ArrayLike, name: str, *, ndim: int) -> FloatArray:
    shape = "(rows, classes)" if ndim == 2 else "(rows, members, classes)"
    p = checked_floats(value, name, ndim=ndim, shape=shape)
    sums = p.sum(-1)
    if p.min() < 0 or p.max() > 1 or not np.allclose(sums, 1.0, atol=_SUM_TOLERANCE):
        raise EnsembleError(
            f"Expected {name} to hold probabilities (in [0, 1], rows summing to 1). "
            f"Received: values in [{p.min():.3g}, {p.max():.3g}], row sums in [{sums.min():.3g}, {sums.max():.3g}]"
        )
    return p


def checked_labels(y: npt.ArrayLike, *, classes: int, rows: int) -> IntArray:
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise EnsembleError(f"Expected y of shape (rows,) of class labels. Received: y.shape={labels.shape}")
    if len(labels) != rows:
        raise EnsembleError(
            f"Expected y with one label per row ({rows} rows). Received: {len(labels)} labels"
        )
    integral = np.issubdtype(labels.dtype, np.integer) or (
        np.issubdtype(labels.dtype, np.floating) and bool(np.all(labels == np.round(labels)))
    )
    if not integral:
        raise EnsembleError(f"Expected integer class labels in y. Received: dtype={labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= classes:
        raise EnsembleError(
            f"Expected labels in [0, {classes}), one per class column. "
            f"Received: labels in [{labels.min()}, {labels.max()}]"
        )
    return labels


def checked_targets(y: npt.ArrayLike, rows: int, targets: int) -> FloatArray:
    """Regression `y` of shape (rows,) or (rows, targets), as (rows, targets)."""
    values = np.asarray(y, dtype="float64")
    if values.shape not in ((rows, targets), (rows,) if targets == 1 else ()):
        expected = f"({rows}, {targets})" + (f" or ({rows},)" if targets == 1 else "")
        raise EnsembleError(f"Expected y of shape {expected}. Received: y.shape={values.shape}")
    return values.reshape(rows, targets)


def check_same_rows(**arrays: FloatArray) -> None:
    rows = {name: len(array) for name, array in arrays.items()}
    if len(set(rows.values())) > 1:
        raise EnsembleError(f"Expected the same number of rows in {', '.join(rows)}. Received: rows={rows}")


def checked_names(member_names: Sequence[str], members: int) -> list[str]:
    names = [str(name) for name in member_names]
    if len(names) != members:
        raise EnsembleError(
            f"Expected {members} member names, one per member. Received: member_names={names}"
        )
    return names
