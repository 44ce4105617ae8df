"""The reliability diagram: top-label confidence against accuracy, per bin."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ensemble.errors import EnsembleError
from ensemble.evaluate.figures.checks import (
    FloatArray,
    ReliabilityCurve,
    checked_labels,
    checked_probabilities,
    save_png,
)
from ensemble.evaluate.metrics import (
    expected_calibration_error,
)
from ensemble.types import PathLike

__all__ = ["marker_areas", "plot_reliability", "reliability_curve"]

_MARKERS = ("o", "s", "^", "D", "v")


def reliability_curve(y: npt.ArrayLike, probabilities: npt.ArrayLike, bins: int = 15) -> ReliabilityCurve:
    """Top-label reliability: per non-empty confidence bin, its index, mean confidence,
    accuracy and row count (an empty bin has no accuracy to show, so it is left out)."""
    p = checked_probabilities(probabilities, "probabilities", ndim=2)
    labels = checked_labels(y, classes=p.shape[-1], rows=len(p))
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise EnsembleError(f"Expected a positive integer number of bins. Received: bins={bins!r}")
    confidence = p.max(-1)
    correct = (p.argmax(-1) == labels).astype("float64")
    # The binning of `expected_calibration_error`: bin i holds (i/bins, (i+1)/bins].
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.int64)
    kept = np.flatnonzero(count).astype(np.int64)
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1),
        "bin": kept,
        "confidence": np.bincount(index, weights=confidence, minlength=bins)[kept] / count[kept],
        "accuracy": np.bincount(index, weights=correct, minlength=bins)[kept] / count[kept],
        "count": count[kept],
        "ece": expected_calibration_error(labels, p, bins=bins),
    }


def plot_reliability(
    y: npt.ArrayLike, curves: Mapping[str, npt.ArrayLike], path: PathLike, bins: int = 15
) -> Path:
    """Reliability diagram of several models (`curves`: label -> probabilities): accuracy
    against mean confidence per non-empty bin, one marker shape per model, each marker's area
    proportional to its bin's rows; below, the rows per bin on a log axis (one scale shared by
    every model), so a point made of 3 rows reads as such. Bins are not joined by lines (a line
    through two one-row bins draws a trend of nothing). The legend, below the panels and off
    the data, gives each model's ECE and its wrong rows."""
    if not curves:
        raise EnsembleError("Expected at least one model in curves. Received: curves={}")
    results = {name: reliability_curve(y, p, bins=bins) for name, p in curves.items()}
    labels = np.asarray(y).astype(np.int64)
    rows = len(labels)
    figure = Figure(figsize=(6.5, 7.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    handles = [Line2D([], [], linestyle="--", color="grey", linewidth=1)]
    names = ["perfect calibration"]
    edges = np.linspace(0.0, 1.0, bins + 1)
    width = (edges[1] - edges[0]) / len(results)
    for i, (name, curve) in enumerate(results.items()):
        color, marker = f"C{i}", _MARKERS[i % len(_MARKERS)]
        wrong = int(np.sum(np.asarray(curves[name]).argmax(-1) != labels))
        top.scatter(
            curve["confidence"],
            curve["accuracy"],
            s=marker_areas(curve["count"], rows),
            marker=marker,
            color=color,
            alpha=0.6,
            edgecolors="black",
            linewidths=0.4,
            clip_on=False,
            zorder=3 + i,
        )
        handles.append(Line2D([], [], linestyle="none", marker=marker, color=color, markersize=7))
        names.append(f"{name}: ECE {curve['ece']:.3f}, {wrong} of {rows} wrong")
        bottom.bar(
            edges[curve["bin"]] + i * width,
            curve["count"],
            width=width,
            align="edge",
            color=color,
        )
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title="Reliability (top-label; area: rows)")
    figure.legend(handles, names, loc="outside lower center", ncols=1)
    bottom.set_yscale("log")
    bottom.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    bottom.set(xlabel="confidence", ylabel="rows (log)")
    return save_png(figure, path)


def marker_areas(count: npt.ArrayLike, rows: int) -> FloatArray:
    """Marker areas (points^2) proportional to each bin's share of the `rows`: a bin of every row
    is 400, and none is below 4 so that a one-row bin stays visible."""
    return np.maximum(4.0, 400.0 * np.asarray(count, dtype="float64") / max(rows, 1))
