"""Evaluation plots of an ensemble and its members, each backed by a pure function of the numbers drawn.

Figures are built as `matplotlib.figure.Figure` objects, never through pyplot: no global figure
state, no backend switch, and `savefig` picks the Agg canvas for PNG by itself.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats
from sklearn.metrics import roc_auc_score

from ensemble.errors import EnsembleError
from ensemble.metrics import (
    classification_metrics,
    expected_calibration_error,
    regression_metrics,
)
from ensemble.types import PathLike, Task

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
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DPI = 120
# Rows of float32/float16 softmax outputs sum to 1 only approximately; logits miss by far more.
_SUM_TOLERANCE = 1e-2


class ReliabilityCurve(TypedDict):
    """Per-bin mean confidence, accuracy (NaN in empty bins) and row count, and the ECE."""

    edges: FloatArray
    confidence: FloatArray
    accuracy: FloatArray
    count: IntArray
    ece: float


class EnsembleSizeCurve(TypedDict):
    """Accuracy and NLL of the average of the first `k` members of `order`."""

    k: IntArray
    order: IntArray
    accuracy: FloatArray
    nll: FloatArray


class EnsembleSizeCurveRegression(TypedDict):
    """RMSE of the average of the first `k` members of `order`."""

    k: IntArray
    order: IntArray
    rmse: FloatArray


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


# Computations.


def reliability_curve(y: npt.ArrayLike, probabilities: npt.ArrayLike, bins: int = 15) -> ReliabilityCurve:
    """Top-label reliability: per confidence bin, mean confidence, accuracy and count."""
    p = _probabilities(probabilities, "probabilities", ndim=2)
    labels = _labels(y, classes=p.shape[-1], rows=len(p))
    if not isinstance(bins, int) or bins < 1:
        raise EnsembleError(f"Expected a positive integer number of bins. Received: bins={bins!r}")
    confidence = p.max(-1)
    correct = (p.argmax(-1) == labels).astype("float64")
    # The binning of `expected_calibration_error`: bin i holds (i/bins, (i+1)/bins].
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore"):  # 0/0 in empty bins is the NaN we want
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1),
        "confidence": mean_confidence,
        "accuracy": accuracy,
        "count": count,
        "ece": expected_calibration_error(labels, p, bins=bins),
    }


def ensemble_size_curve(
    y: npt.ArrayLike, member_probabilities: npt.ArrayLike, order: Sequence[int] | None = None
) -> EnsembleSizeCurve:
    """Accuracy and NLL of the plain mean of the first k members, k = 1..members.

    `order` defaults to the members sorted by their own NLL, best first. Scores come from
    `ensemble.metrics.classification_metrics`, so the last point equals the mean ensemble's.
    """
    p = _probabilities(member_probabilities, "member_probabilities", ndim=3)
    labels = _labels(y, classes=p.shape[-1], rows=len(p))
    members = p.shape[1]
    if order is None:
        own_nll = [classification_metrics(labels, p[:, m])["nll"] for m in range(members)]
        sequence = np.argsort(own_nll, kind="stable").astype(np.int64)
    else:
        sequence = _order(order, members)
    scores = [classification_metrics(labels, mean) for mean in _running_means(p, sequence)]
    return {
        "k": np.arange(1, members + 1, dtype=np.int64),
        "order": sequence,
        "accuracy": np.array([s["accuracy"] for s in scores]),
        "nll": np.array([s["nll"] for s in scores]),
    }


def ensemble_size_curve_regression(
    y: npt.ArrayLike, member_predictions: npt.ArrayLike, order: Sequence[int] | None = None
) -> EnsembleSizeCurveRegression:
    """RMSE of the plain mean of the first k members, k = 1..members; default order: best RMSE first."""
    predictions = _floats(member_predictions, "member_predictions", ndim=3, shape="(rows, members, targets)")
    targets = _targets(y, predictions.shape[0], predictions.shape[-1])
    members = predictions.shape[1]
    if order is None:
        own_rmse = [regression_metrics(targets, predictions[:, m])["rmse"] for m in range(members)]
        sequence = np.argsort(own_rmse, kind="stable").astype(np.int64)
    else:
        sequence = _order(order, members)
    rmse = [regression_metrics(targets, mean)["rmse"] for mean in _running_means(predictions, sequence)]
    return {"k": np.arange(1, members + 1, dtype=np.int64), "order": sequence, "rmse": np.array(rmse)}


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
        p = _probabilities(member_outputs, "member_outputs", ndim=3)
        labels = _labels(y, classes=p.shape[-1], rows=len(p))
        errors = 1.0 - np.take_along_axis(p, labels[:, None, None], axis=2)
    else:
        outputs = _floats(member_outputs, "member_outputs", ndim=3, shape="(rows, members, outputs)")
        errors = outputs if y is None else outputs - _targets(y, len(outputs), outputs.shape[-1])[:, None, :]
    members = errors.shape[1]
    vectors = np.moveaxis(errors, 1, 0).reshape(members, -1)
    with np.errstate(divide="ignore", invalid="ignore"):  # constant errors: NaN, not a warning
        matrix = np.corrcoef(vectors)
    return np.asarray(matrix, dtype="float64").reshape(members, members)


def uncertainty_split(
    y: npt.ArrayLike, prediction: npt.ArrayLike, uncertainty: npt.ArrayLike
) -> UncertaintySplit:
    """Uncertainty of rows the ensemble got right vs wrong, and the ROC AUC of uncertainty for errors."""
    p = _probabilities(prediction, "prediction", ndim=2)
    labels = _labels(y, classes=p.shape[-1], rows=len(p))
    values = _floats(uncertainty, "uncertainty", ndim=1, shape="(rows,)")
    _same_rows(prediction=p, uncertainty=values)
    wrong = p.argmax(-1) != labels
    auc = float(roc_auc_score(wrong, values)) if 0 < wrong.sum() < len(wrong) else math.nan
    return {"right": values[~wrong], "wrong": values[wrong], "auc": auc}


def std_vs_error(y: npt.ArrayLike, prediction: npt.ArrayLike, std: npt.ArrayLike) -> StdVsError:
    """|prediction - y| against the members' std, flattened over rows and targets, with Spearman rho."""
    predicted = _floats(prediction, "prediction", ndim=2, shape="(rows, targets)")
    spread = _floats(std, "std", ndim=2, shape="(rows, targets)")
    if spread.shape != predicted.shape:
        raise EnsembleError(
            f"Expected std of the shape of prediction {predicted.shape}. Received: std.shape={spread.shape}"
        )
    abs_error = np.abs(predicted - _targets(y, *predicted.shape)).ravel()
    spread = spread.ravel()
    # Spearman is undefined for a constant side; scipy would warn and return NaN.
    defined = np.ptp(abs_error) > 0 and np.ptp(spread) > 0
    spearman = float(stats.spearmanr(spread, abs_error).statistic) if defined else math.nan
    return {"abs_error": abs_error, "std": spread, "spearman": spearman}


# Plots.


def plot_reliability(
    y: npt.ArrayLike, curves: Mapping[str, npt.ArrayLike], path: PathLike, bins: int = 15
) -> Path:
    """Reliability diagram of several models (accuracy vs confidence), with per-bin counts below."""
    if not curves:
        raise EnsembleError("Expected at least one model in curves. Received: curves={}")
    results = {name: reliability_curve(y, p, bins=bins) for name, p in curves.items()}
    figure = Figure(figsize=(6, 6.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    edges = np.linspace(0.0, 1.0, bins + 1)
    width = (edges[1] - edges[0]) / len(results)
    for i, (name, curve) in enumerate(results.items()):
        label = f"{name} (ECE {curve['ece']:.3f})"
        line = top.plot(curve["confidence"], curve["accuracy"], marker="o", label=label)
        bottom.bar(edges[:-1] + i * width, curve["count"], width=width, align="edge", color=line[0].get_color())
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title="Reliability (top-label)")
    top.legend(loc="upper left")
    bottom.set(xlabel="confidence", ylabel="rows")
    return _save(figure, path)


def plot_ensemble_size(
    y: npt.ArrayLike,
    member_probabilities: npt.ArrayLike,
    member_names: Sequence[str],
    path: PathLike,
    ensemble_metrics: Mapping[str, float] | None = None,
) -> Path:
    """Accuracy and NLL against ensemble size, members added best-NLL first."""
    curve = ensemble_size_curve(y, member_probabilities)
    return _plot_size(curve, {"accuracy": "accuracy", "nll": "NLL"}, member_names, path, ensemble_metrics)


def plot_ensemble_size_regression(
    y: npt.ArrayLike,
    member_predictions: npt.ArrayLike,
    member_names: Sequence[str],
    path: PathLike,
    ensemble_metrics: Mapping[str, float] | None = None,
) -> Path:
    """RMSE against ensemble size, members added best-RMSE first."""
    curve = ensemble_size_curve_regression(y, member_predictions)
    return _plot_size(curve, {"rmse": "RMSE"}, member_names, path, ensemble_metrics)


def _plot_size(curve: Mapping[str, Any], panels: Mapping[str, str], member_names: Sequence[str],
               path: PathLike, ensemble_metrics: Mapping[str, float] | None) -> Path:
    """One panel per metric of `curve` (`panels`: metric -> axis label) against ensemble size,
    with the configured ensemble's value as a dashed line where given."""
    names = _names(member_names, len(curve["order"]))
    reference = _reference(ensemble_metrics, tuple(panels))
    figure = Figure(figsize=(7, 2 + 2 * len(panels)), layout="constrained")
    all_axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axes, (key, label) in zip(all_axes, panels.items()):
        axes.plot(curve["k"], curve[key], marker="o", label="mean of the first k")
        if key in reference:
            axes.axhline(reference[key], linestyle="--", color="black", label="configured ensemble")
        axes.set_ylabel(label)
        axes.legend()
    all_axes[0].set_title("Ensemble size")
    _member_ticks(all_axes[-1], curve["k"], [names[m] for m in curve["order"]])
    return _save(figure, path)


def plot_member_correlation(matrix: npt.ArrayLike, member_names: Sequence[str], path: PathLike) -> Path:
    """Annotated heatmap of a members x members correlation matrix."""
    values = _floats(matrix, "matrix", ndim=2, shape="(members, members)")
    if values.shape[0] != values.shape[1]:
        raise EnsembleError(f"Expected a square correlation matrix. Received: matrix.shape={values.shape}")
    names = _names(member_names, len(values))
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
    return _save(figure, path)


def plot_uncertainty(
    y: npt.ArrayLike, prediction: npt.ArrayLike, uncertainties: Mapping[str, npt.ArrayLike], path: PathLike
) -> Path:
    """Per uncertainty measure, overlaid histograms of rows predicted right and wrong."""
    if not uncertainties:
        raise EnsembleError("Expected at least one uncertainty measure. Received: uncertainties={}")
    splits = {name: uncertainty_split(y, prediction, u) for name, u in uncertainties.items()}
    figure = Figure(figsize=(4.5 * len(splits), 3.5), layout="constrained")
    for axes, (name, split) in zip(figure.subplots(1, len(splits), squeeze=False)[0], splits.items()):
        edges = np.histogram_bin_edges(np.concatenate([split["right"], split["wrong"]]), bins=30)
        for side, values, color in (("right", split["right"], "tab:green"), ("wrong", split["wrong"], "tab:red")):
            axes.hist(values, bins=edges, alpha=0.5, color=color, label=f"{side} ({len(values)})")
        axes.set(xlabel=name, ylabel="rows", title=f"{name}: error-detection AUC {split['auc']:.3f}")
        axes.legend()
    return _save(figure, path)


def plot_std_vs_error(y: npt.ArrayLike, prediction: npt.ArrayLike, std: npt.ArrayLike, path: PathLike) -> Path:
    """Scatter of |error| against the members' std, Spearman rho in the title."""
    result = std_vs_error(y, prediction, std)
    figure = Figure(figsize=(5, 4.5), layout="constrained")
    axes = figure.subplots()
    axes.scatter(result["std"], result["abs_error"], s=6, alpha=0.4, rasterized=True)
    axes.set(xlabel="members' std", ylabel="|prediction - y|",
             title=f"Error vs spread: Spearman rho {result['spearman']:.3f}")
    return _save(figure, path)


# Helpers.


def _save(figure: Figure, path: PathLike) -> Path:
    """Write `figure` as a PNG beside `path`, then rename it into place (no half-written file)."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as stream:  # plain open keeps the umask's permissions
            figure.savefig(stream, format="png", dpi=DPI, bbox_inches="tight")
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def _floats(value: npt.ArrayLike, name: str, *, ndim: int, shape: str) -> FloatArray:
    array = np.asarray(value, dtype="float64")
    if array.ndim != ndim:
        raise EnsembleError(f"Expected {name} of shape {shape}. Received: {name}.shape={array.shape}")
    if array.shape[0] == 0:
        raise EnsembleError(f"Expected at least one row in {name}. Received: {name}.shape={array.shape}")
    return array


def _probabilities(value: npt.ArrayLike, name: str, *, ndim: int) -> FloatArray:
    shape = "(rows, classes)" if ndim == 2 else "(rows, members, classes)"
    p = _floats(value, name, ndim=ndim, shape=shape)
    sums = p.sum(-1)
    if p.min() < 0 or p.max() > 1 or not np.allclose(sums, 1.0, atol=_SUM_TOLERANCE):
        raise EnsembleError(
            f"Expected {name} to hold probabilities (in [0, 1], rows summing to 1). "
            f"Received: values in [{p.min():.3g}, {p.max():.3g}], row sums in [{sums.min():.3g}, {sums.max():.3g}]"
        )
    return p


def _labels(y: npt.ArrayLike, *, classes: int, rows: int) -> IntArray:
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise EnsembleError(f"Expected y of shape (rows,) of class labels. Received: y.shape={labels.shape}")
    if len(labels) != rows:
        raise EnsembleError(f"Expected y with one label per row ({rows} rows). Received: {len(labels)} labels")
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


def _targets(y: npt.ArrayLike, rows: int, targets: int) -> FloatArray:
    """Regression `y` of shape (rows,) or (rows, targets), as (rows, targets)."""
    values = np.asarray(y, dtype="float64")
    if values.shape not in ((rows, targets), (rows,) if targets == 1 else ()):
        expected = f"({rows}, {targets})" + (f" or ({rows},)" if targets == 1 else "")
        raise EnsembleError(f"Expected y of shape {expected}. Received: y.shape={values.shape}")
    return values.reshape(rows, targets)


def _same_rows(**arrays: FloatArray) -> None:
    rows = {name: len(array) for name, array in arrays.items()}
    if len(set(rows.values())) > 1:
        raise EnsembleError(f"Expected the same number of rows in {', '.join(rows)}. Received: rows={rows}")


def _order(order: Sequence[int], members: int) -> IntArray:
    sequence = np.asarray(order)
    if sequence.ndim != 1 or sorted(sequence.tolist()) != list(range(members)):
        raise EnsembleError(
            f"Expected order to be a permutation of the {members} member indices. Received: order={list(order)}"
        )
    return sequence.astype(np.int64)


def _running_means(outputs: FloatArray, order: IntArray) -> FloatArray:
    """The means over the first k members of `order`, k = 1..members, stacked on axis 0."""
    sums = np.cumsum(outputs[:, order], axis=1)
    means = sums / np.arange(1, len(order) + 1)[None, :, None]
    return np.moveaxis(means, 1, 0)


def _names(member_names: Sequence[str], members: int) -> list[str]:
    names = [str(name) for name in member_names]
    if len(names) != members:
        raise EnsembleError(f"Expected {members} member names, one per member. Received: member_names={names}")
    return names


def _reference(metrics: Mapping[str, float] | None, keys: tuple[str, ...]) -> dict[str, float]:
    if metrics is None:
        return {}
    missing = [key for key in keys if key not in metrics]
    if missing:
        raise EnsembleError(f"Expected ensemble_metrics with keys {list(keys)}. Received: keys={list(metrics)}")
    return {key: float(metrics[key]) for key in keys}


def _member_ticks(axes: Axes, k: IntArray, added: list[str]) -> None:
    """Label each ensemble size with the member it added."""
    axes.set_xticks(k, [f"{size}: +{name}" for size, name in zip(k, added)], rotation=30, ha="right")
    axes.set_xlabel("ensemble size (member added)")
