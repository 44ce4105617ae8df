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
    # The fit's check: it imports the fitting package, which imports this module's package.
    from ensemble.fitting.multilabel import multilabel_targets

    prediction = np.asarray(outputs["prediction"], dtype="float64")
    if len(prediction) == 0:
        raise EnsembleError(
            "Expected at least one test row to score the multilabel ensemble on. Received: an "
            "empty split (0 rows)."
        )
    labels = multilabel_targets(y, view.width, len(prediction))
    members = np.asarray(outputs["member_predictions"], dtype="float64")
    _check_finite_outputs(view, prediction, members)
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


def _check_finite_outputs(view: EnsembleView, prediction: np.ndarray, members: np.ndarray) -> None:
    """An error naming the first test row whose scores are not finite (NaN or infinite values
    in that row of x, or a member that answers NaN), and the member or ensemble answering so."""
    answers = [(f"member {n!r}", members[:, i]) for i, n in enumerate(view.member_names)]
    for who, values in [*answers, ("the ensemble", prediction)]:
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise EnsembleError(
                f"Expected finite predictions of every test row. Received: {who}'s prediction of "
                f"row {row} is {values[row].tolist()} ({int(bad.sum())} such row(s)): that row of x "
                "holds NaN or infinite values (or float64 values past float32's range), or the "
                "member answers NaN. Drop or impute those rows first."
            )
