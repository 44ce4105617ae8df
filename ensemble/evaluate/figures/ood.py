"""Out-of-distribution detection: each score's density on in-distribution and OOD rows."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from ensemble.errors import EnsembleError
from ensemble.evaluate.figures.checks import FloatArray, OodHistogram, checked_floats, save_png
from ensemble.evaluate.uncertainty import ood_detection
from ensemble.types import PathLike

__all__ = ["ood_histograms", "plot_ood_histograms"]


def ood_histograms(
    scores_in: Mapping[str, npt.ArrayLike], scores_out: Mapping[str, npt.ArrayLike], bins: int = 30
) -> dict[str, OodHistogram]:
    """Per score name (the same in both mappings; higher = more likely OOD), the densities of
    the in-distribution and the OOD scores on `bins` shared equal-width bins spanning both
    (`np.histogram(..., density=True)`: each integrates to 1 whatever its row count, so a
    small OOD set compares with a large test split), and the score's OOD AUROC."""
    if not scores_in or set(scores_in) != set(scores_out):
        raise EnsembleError(
            "Expected the same score names, at least one, for in-distribution and OOD rows. "
            f"Received: scores_in={sorted(scores_in)}, scores_out={sorted(scores_out)}"
        )
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise EnsembleError(f"Expected a positive integer number of bins. Received: bins={bins!r}")
    result: dict[str, OodHistogram] = {}
    for name in scores_in:
        inside = _finite(scores_in[name], f"scores_in[{name!r}]")
        out = _finite(scores_out[name], f"scores_out[{name!r}]")
        edges = np.histogram_bin_edges(np.concatenate([inside, out]), bins=bins)
        result[name] = {
            "edges": edges,
            "density_in": np.histogram(inside, bins=edges, density=True)[0],
            "density_out": np.histogram(out, bins=edges, density=True)[0],
            "auroc": ood_detection(inside, out)["auroc"],
        }
    return result


def plot_ood_histograms(
    scores_in: Mapping[str, npt.ArrayLike],
    scores_out: Mapping[str, npt.ArrayLike],
    path: PathLike,
    bins: int = 30,
) -> Path:
    """One panel per score: in-distribution and OOD densities overlaid, AUROC in the title."""
    histograms = ood_histograms(scores_in, scores_out, bins=bins)
    figure = Figure(figsize=(4.5 * len(histograms), 3.5), layout="constrained")
    panels = figure.subplots(1, len(histograms), squeeze=False)[0]
    for axes, (name, histogram) in zip(panels, histograms.items(), strict=True):
        for side, density, color in (
            (f"in distribution ({len(np.ravel(scores_in[name]))})", histogram["density_in"], "tab:blue"),
            (f"OOD ({len(np.ravel(scores_out[name]))})", histogram["density_out"], "tab:orange"),
        ):
            axes.stairs(density, histogram["edges"], fill=True, alpha=0.45, color=color, label=side)
        axes.set(xlabel=name, ylabel="density", title=f"{name}: OOD AUROC {histogram['auroc']:.3f}")
        axes.legend()
    return save_png(figure, path)


def _finite(values: npt.ArrayLike, name: str) -> FloatArray:
    array = checked_floats(values, name, ndim=1, shape="(rows,)")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise EnsembleError(f"Expected finite scores in {name}. Received: {bad} of {len(array)} not finite")
    return array
