"""Accuracy, NLL (or RMSE) against ensemble size: the configured combiner refitted on the first k
members, and their mean (plain, or temperature-scaled on the fitting rows as the ensemble is
fitted there), members added in a given order (best first)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ensemble.errors import EnsembleError
from ensemble.evaluate.figures.checks import (
    EnsembleSizeCurve,
    EnsembleSizeCurveRegression,
    FloatArray,
    IntArray,
    checked_floats,
    checked_labels,
    checked_names,
    checked_probabilities,
    checked_targets,
    save_png,
)
from ensemble.evaluate.metrics import (
    classification_metrics,
    regression_metrics,
)
from ensemble.types import PathLike

__all__ = [
    "Combine",
    "ensemble_size_curve",
    "ensemble_size_curve_regression",
    "plot_ensemble_size",
    "plot_ensemble_size_regression",
]

Combine = Callable[[IntArray], npt.ArrayLike | None]
"""`combine(member_indices)`: the configured combiner refitted for those members (on the
fitting rows), its predictions of the rows the curve scores; None where it is undefined."""


def ensemble_size_curve(
    y: npt.ArrayLike,
    member_probabilities: npt.ArrayLike,
    order: Sequence[int] | None = None,
    combine: Combine | None = None,
    mean: Combine | None = None,
) -> EnsembleSizeCurve:
    """Accuracy and NLL of the plain mean of the first k members, k = 1..members, and with
    `combine` the same of `combine(order[:k])` (NaN where it returns None).

    `order` defaults to the members sorted by their own NLL on these rows, best first (pass
    the order found on the fitting rows to keep the rows scored out of it). Scores come from
    `ensemble.metrics.classification_metrics`, so the last point equals the mean ensemble's.
    `mean` replaces the plain mean as the reference: `mean(order[:k])` (as `combine`), such as
    the mean temperature-scaled on the fitting rows (`calibrated_mean`) when the ensemble is
    fitted there, so that the curves compare like with like.
    """
    p = checked_probabilities(member_probabilities, "member_probabilities", ndim=3)
    labels = checked_labels(y, classes=p.shape[-1], rows=len(p))
    members = p.shape[1]
    if order is None:
        own_nll = [classification_metrics(labels, p[:, m])["nll"] for m in range(members)]
        sequence = np.argsort(own_nll, kind="stable").astype(np.int64)
    else:
        sequence = _order(order, members)
    if mean is None:
        scores = [classification_metrics(labels, running) for running in _running_means(p, sequence)]
        reference = {key: np.array([s[key] for s in scores]) for key in ("accuracy", "nll")}
    else:
        reference = _combined(mean, sequence, ("accuracy", "nll"), p.shape[::2], labels)
    combined = None
    if combine is not None:
        combined = _combined(combine, sequence, ("accuracy", "nll"), p.shape[::2], labels)
    return {
        "k": np.arange(1, members + 1, dtype=np.int64),
        "order": sequence,
        "accuracy": reference["accuracy"],
        "nll": reference["nll"],
        "combined": combined,
    }


def ensemble_size_curve_regression(
    y: npt.ArrayLike,
    member_predictions: npt.ArrayLike,
    order: Sequence[int] | None = None,
    combine: Combine | None = None,
) -> EnsembleSizeCurveRegression:
    """RMSE of the plain mean of the first k members, k = 1..members (default order: best RMSE
    on these rows first), and with `combine` the RMSE of `combine(order[:k])`."""
    predictions = checked_floats(
        member_predictions, "member_predictions", ndim=3, shape="(rows, members, targets)"
    )
    targets = checked_targets(y, predictions.shape[0], predictions.shape[-1])
    members = predictions.shape[1]
    if order is None:
        own_rmse = [regression_metrics(targets, predictions[:, m])["rmse"] for m in range(members)]
        sequence = np.argsort(own_rmse, kind="stable").astype(np.int64)
    else:
        sequence = _order(order, members)
    rmse = [regression_metrics(targets, mean)["rmse"] for mean in _running_means(predictions, sequence)]
    combined = None
    if combine is not None:
        combined = _combined(combine, sequence, ("rmse",), predictions.shape[::2], targets)
    return {
        "k": np.arange(1, members + 1, dtype=np.int64),
        "order": sequence,
        "rmse": np.array(rmse),
        "combined": combined,
    }


def plot_ensemble_size(
    y: npt.ArrayLike,
    member_probabilities: npt.ArrayLike,
    member_names: Sequence[str],
    path: PathLike,
    ensemble_metrics: Mapping[str, float] | None = None,
    *,
    order: Sequence[int] | None = None,
    combine: Combine | None = None,
    combiner_label: str = "configured combiner",
    mean: Combine | None = None,
    mean_label: str = "plain mean",
) -> Path:
    """Accuracy and NLL against ensemble size: the configured combiner refitted on the first k
    members (with `combine`), their mean dashed (`mean`, labelled `mean_label`: see
    `ensemble_size_curve`), the configured ensemble dotted. The accuracy panel's right axis
    counts the wrong rows, which is what a few errors read as."""
    curve = ensemble_size_curve(y, member_probabilities, order=order, combine=combine, mean=mean)
    panels = {"accuracy": "accuracy", "nll": "NLL"}
    labels = (combiner_label, mean_label)
    return _plot_size(curve, panels, member_names, path, ensemble_metrics, labels, rows=len(np.asarray(y)))


def plot_ensemble_size_regression(
    y: npt.ArrayLike,
    member_predictions: npt.ArrayLike,
    member_names: Sequence[str],
    path: PathLike,
    ensemble_metrics: Mapping[str, float] | None = None,
    *,
    order: Sequence[int] | None = None,
    combine: Combine | None = None,
    combiner_label: str = "configured combiner",
) -> Path:
    """RMSE against ensemble size, drawn as `plot_ensemble_size` draws it."""
    curve = ensemble_size_curve_regression(y, member_predictions, order=order, combine=combine)
    labels = (combiner_label, "plain mean")  # its calibrated analog (a Gaussian) has the same RMSE
    return _plot_size(curve, {"rmse": "RMSE"}, member_names, path, ensemble_metrics, labels)


def _combined(
    combine: Combine,
    order: IntArray,
    keys: tuple[str, ...],
    shape: tuple[int, ...],
    targets: np.ndarray,
) -> dict[str, FloatArray]:
    """The metrics `keys` of `combine(order[:k])` for k = 1..members; NaN where it gives None."""
    classification = "nll" in keys
    values: dict[str, list[float]] = {key: [] for key in keys}
    for k in range(1, len(order) + 1):
        prediction = combine(order[:k].copy())
        if prediction is None:
            scores = dict.fromkeys(keys, math.nan)
        else:
            name = f"combine(first {k} members)"
            if classification:
                p = checked_probabilities(prediction, name, ndim=2)
            else:
                p = checked_floats(prediction, name, ndim=2, shape="(rows, targets)")
            if p.shape != shape:
                raise EnsembleError(f"Expected {name} of shape {shape}. Received: shape {p.shape}")
            scores = classification_metrics(targets, p) if classification else regression_metrics(targets, p)
        for key in keys:
            values[key].append(float(scores[key]))
    return {key: np.array(series, dtype="float64") for key, series in values.items()}


def _plot_size(
    curve: Mapping[str, Any],
    panels: Mapping[str, str],
    member_names: Sequence[str],
    path: PathLike,
    ensemble_metrics: Mapping[str, float] | None,
    labels: tuple[str, str],
    *,
    rows: int | None = None,
) -> Path:
    """One panel per metric of `curve` (`panels`: metric -> axis label) against ensemble size,
    with the configured ensemble's value as a dotted line where given; `labels`: the combiner's
    curve's and the mean's. One legend below the panels, off the data; with `rows`, the accuracy
    panel's right axis counts the wrong rows."""
    names = checked_names(member_names, len(curve["order"]))
    reference = _reference(ensemble_metrics, tuple(panels))
    combiner_label, mean_label = labels
    figure = Figure(figsize=(7, 2.5 + 2 * len(panels)), layout="constrained")
    all_axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axes, (key, label) in zip(all_axes, panels.items(), strict=True):
        if curve["combined"] is not None:
            axes.plot(
                curve["k"],
                curve["combined"][key],
                marker="o",
                label=f"{combiner_label}, first k",
                clip_on=False,
            )
        axes.plot(
            curve["k"],
            curve[key],
            marker=".",
            linestyle="--",
            color="grey",
            label=f"{mean_label}, first k",
            clip_on=False,
        )
        if key in reference:
            axes.axhline(reference[key], linestyle=":", color="black", label="configured ensemble")
        axes.set_ylabel(label)
        axes.margins(y=0.12)
        if key == "accuracy":
            axes.set_ylim(top=min(axes.get_ylim()[1], 1.0))  # no accuracy above 1 (markers drawn over)
            if rows:
                _wrong_rows_axis(axes, rows)
    all_axes[0].set_title("Ensemble size")
    figure.legend(*all_axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=1)
    _member_ticks(all_axes[-1], curve["k"], [names[m] for m in curve["order"]])
    return save_png(figure, path)


def _wrong_rows_axis(axes: Axes, rows: int) -> None:
    """A right axis counting the wrong rows of `rows` on an accuracy axis, in whole rows."""

    def to_wrong(accuracy: Any) -> Any:
        return (1 - np.asarray(accuracy)) * rows

    def to_accuracy(wrong_rows: Any) -> Any:
        return 1 - np.asarray(wrong_rows) / rows

    wrong = axes.secondary_yaxis("right", functions=(to_wrong, to_accuracy))
    wrong.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    wrong.set_ylabel(f"wrong rows (of {rows})")


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


def _reference(metrics: Mapping[str, float] | None, keys: tuple[str, ...]) -> dict[str, float]:
    if metrics is None:
        return {}
    missing = [key for key in keys if key not in metrics]
    if missing:
        raise EnsembleError(
            f"Expected ensemble_metrics with keys {list(keys)}. Received: keys={list(metrics)}"
        )
    return {key: float(metrics[key]) for key in keys}


def _member_ticks(axes: Axes, k: IntArray, added: list[str]) -> None:
    """Label each ensemble size with the member it added."""
    axes.set_xticks(
        k, [f"{size}: +{name}" for size, name in zip(k, added, strict=True)], rotation=30, ha="right"
    )
    axes.set_xlabel("ensemble size (member added)")
