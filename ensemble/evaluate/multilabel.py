"""How every member, their plain mean and a multilabel ensemble score on a test split.

Each label is an independent probability: the suite (`multilabel_suite`) scores each label's
column (binary log loss, Brier, ECE) and their means, and the rows at the 0.5 threshold (subset
accuracy, Hamming loss). No baseline is calibrated (calibration scales one softmax distribution,
which a multilabel ensemble has not): members and the mean are scored as they come, as the
ensemble is, and the member one would ship alone is the fit report's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.evaluate.suite import multilabel_suite
from ensemble.graph.view import EnsembleView

__all__ = ["evaluate_multilabel"]


def evaluate_multilabel(view: EnsembleView, y: Any, outputs: dict[str, Any], report: Any) -> dict[str, Any]:
    """`members` ({name: metrics}), `mean` and `ensemble`, each `multilabel_suite` of `y` (a
    `(rows, labels)` 0/1 matrix); with `report` (a `FitReport`), `baselines` naming the selected
    member and the ensemble's gain in mean binary log loss against it (its NLL / the ensemble's)."""
    labels = np.asarray(y)
    if labels.ndim != 2 or labels.shape[1] != view.width or not np.isin(labels, (0, 1)).all():
        raise EnsembleError(
            f"Expected multilabel y as a (rows, {view.width}) matrix of 0 and 1, one column per label. "
            f"Received: y of shape {labels.shape}."
        )
    members = np.asarray(outputs["member_predictions"], dtype="float64")
    prediction = np.asarray(outputs["prediction"], dtype="float64")
    names = view.classes
    result: dict[str, Any] = {
        "members": {
            n: multilabel_suite(labels, members[:, i], names) for i, n in enumerate(view.member_names)
        },
        "mean": multilabel_suite(labels, members.mean(axis=1), names),
        "ensemble": multilabel_suite(labels, prediction, names),
    }
    if report is not None:
        selected = report.selected_member["name"]
        scores = result["members"][selected]
        result["baselines"] = {
            "how": "as they come (no multilabel calibration)",
            "selected_member": {"name": selected, "raw": scores},
            "gain": {"nll_ratio": scores["nll"] / max(result["ensemble"]["nll"], 1e-12)},
        }
    return result
