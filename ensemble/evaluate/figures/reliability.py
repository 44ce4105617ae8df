"""The reliability diagram: top-label confidence against accuracy, per bin."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from ensemble.errors import EnsembleError
from ensemble.evaluate.figures.checks import (
    ReliabilityCurve,
    checked_labels,
    checked_probabilities,
    save_png,
)
from ensemble.evaluate.metrics import (
    expected_calibration_error,
)
from ensemble.types import PathLike

__all__ = ["plot_reliability", "reliability_curve"]


def reliability_curve(y: npt.ArrayLike, probabilities: npt.ArrayLike, bins: int = 15) -> ReliabilityCurve:
    """Top-label reliability: per confidence bin, mean confidence, accuracy and count."""
    p = checked_probabilities(probabilities, "probabilities", ndim=2)
    labels = checked_labels(y, classes=p.shape[-1], rows=len(p))
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
        bottom.bar(
            edges[:-1] + i * width, curve["count"], width=width, align="edge", color=line[0].get_color()
        )
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title="Reliability (top-label)")
    top.legend(loc="upper left")
    bottom.set(xlabel="confidence", ylabel="rows")
    return save_png(figure, path)
