"""Fitting a multilabel ensemble: learned weights per label, on checked and guarded rows.

`y` is a `(rows, labels)` matrix of 0/1 (each label present or not); the members' level-one
predictions `(rows, members, labels)` are independent probabilities. Each label's weights are
fitted on their own, as a binary problem: the weighted mean of the members' probabilities of
that label, `[1 - p, p]`, scored by its binary log loss (`optimal_weights`, the NLL of the two
columns) or chosen greedily (`ensemble_selection`). The rows rules are `ensemble.fit`'s: finite
`x`, the leakage guard, given `level_one` checked like member outputs (shape, finite, [0, 1]).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn import metrics

from combiners import MeanCombiner
from ensemble.errors import EnsembleError
from ensemble.fitting.arrays import check_row_count
from ensemble.fitting.guard import DEFAULT_ATOL, DEFAULT_RTOL, GuardResult, guard_rows
from ensemble.fitting.level_one import LevelOneStore
from ensemble.fitting.prepare import check_finite, check_finite_inputs, forget_compiled, restore_initial_state
from ensemble.fitting.report import FitReport
from ensemble.fitting.selection import ensemble_selection, optimal_weights
from ensemble.graph.layers import MultilabelUncertainty
from ensemble.graph.view import EnsembleView
from ensemble.rows import row_count
from ensemble.types import CLASSIFICATION, Data

__all__ = ["fit_multilabel", "label_weights", "multilabel_targets"]

log = logging.getLogger(__name__)

METHODS = ("auto", "optimal", "selection", "none")


def multilabel_targets(y: Any, labels: int, rows: int) -> np.ndarray:
    """`y` as a float64 `(rows, labels)` matrix of 0/1; an error for another shape, another
    width, or a value other than 0 or 1 (naming the first such row and its values)."""
    targets = np.asarray(y)
    check_row_count(targets, rows)
    if targets.ndim != 2 or targets.shape[1] != labels:
        raise EnsembleError(
            f"Expected multilabel y of shape (rows, labels) = ({rows}, {labels}): one 0/1 column per "
            f"label the members score. Received: y of shape {targets.shape}."
        )
    if targets.dtype.kind not in "biuf":  # strings "0"/"1" too: no guess at an encoding
        raise EnsembleError(
            f"Expected multilabel y of 0/1 numbers (each label absent or present). Received: "
            f"dtype {targets.dtype}; row 0 is {targets[0].tolist() if rows else []}."
        )
    bad = ~np.isin(targets, (0, 1))  # NaN too
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise EnsembleError(
            f"Expected multilabel y of 0 and 1 only (each label absent or present). Received: "
            f"row {row} is {targets[row].tolist()} ({int(bad.any(axis=1).sum())} such row(s))."
        )
    return targets.astype("float64")


def check_multilabel_level_one(view: EnsembleView, level_one: Any, rows: int) -> np.ndarray:
    """Given level-one predictions as float32, checked: shape `(rows, members, labels)`,
    finite, and every value an independent probability in [0, 1] (the member and row named)."""
    expected = (rows, len(view.members), view.width)
    if np.shape(level_one) != expected:
        raise EnsembleError(
            f"Expected level_one of shape (rows, members, labels) = {expected}. "
            f"Received: {np.shape(level_one)}."
        )
    given = np.asarray(level_one, dtype="float64")
    check_finite(given, "level_one")
    for index, name in enumerate(view.member_names):
        outside = ((given[:, index] < 0) | (given[:, index] > 1)).any(axis=-1)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise EnsembleError(
                f"level_one of member {name!r} (member {index}): expected probabilities in [0, 1], "
                f"one per label. Received: row {row} is {np.round(given[row, index], 4).tolist()}. "
                "Logits? Apply a sigmoid first."
            )
    return given.astype("float32")


def label_weights(
    level_one: np.ndarray,
    targets: np.ndarray,
    method: str,
    rounds: int = 50,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """The `(members, labels)` weights, each label's column fitted on its own as a binary
    problem (`method` "optimal": minimal binary log loss; "selection": greedy selection).

    A label present in every fitting row, or in none, tells nothing of which member ranks it
    better (the lowest loss is merely the most extreme member): its weights stay equal, with a
    warning naming it (`names`, else its column)."""
    columns = []
    members = level_one.shape[1]
    for label in range(targets.shape[1]):
        if np.all(targets[:, label] == targets[0, label]):
            log.warning(
                "Label %s is %s in every one of the %d fitting rows: nothing there ranks the "
                "members on it, so its weights stay equal.",
                repr(names[label]) if names is not None else f"column {label}",
                "present" if targets[0, label] else "absent",
                len(targets),
            )
            columns.append(np.full(members, 1.0 / members))
            continue
        p = level_one[:, :, label].astype("float64")
        binary = np.stack([1.0 - p, p], axis=-1)  # (rows, members, 2)
        y = targets[:, label].astype("int64")
        if method == "optimal":
            columns.append(optimal_weights(binary, y, task=CLASSIFICATION))
        else:
            columns.append(ensemble_selection(binary, y, task=CLASSIFICATION, rounds=rounds))
    return np.stack(columns, axis=1)


def binary_log_loss(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The mean over labels of scikit-learn's binary log loss of each label's column."""
    return float(
        np.mean(
            [
                metrics.log_loss(targets[:, j], probabilities[:, j], labels=[0, 1])
                for j in range(targets.shape[1])
            ]
        )
    )


def fit_multilabel(
    model: keras.Model,
    x: Data,
    y: Any,
    *,
    method: str = "auto",
    level_one: np.ndarray | None = None,
    level_one_unseen: bool = False,
    store: LevelOneStore | None = None,
    allow_overlap: bool = False,
    guard_rtol: float = DEFAULT_RTOL,
    guard_atol: float = DEFAULT_ATOL,
    strategy: tf.distribute.Strategy | None = None,
    verbose: Any = "auto",
    calibration: str | None = None,
    rounds: int = 50,
) -> FitReport:
    """`ensemble.fit` for a multilabel ensemble (it dispatches here): `method="optimal"` or
    `"selection"` learns a `MeanCombiner`'s weights per label (a `(members, labels)` table,
    `label_weights`); `"auto"` and `"none"` fit nothing (the combiner is used as configured).
    The other arguments mean what they mean for `ensemble.fit`; calibration (softmax scaling)
    has no multilabel form and is refused."""
    view = EnsembleView.of(model)
    if method not in METHODS:
        raise EnsembleError(f"Expected method in {METHODS} for a multilabel ensemble. Received: {method!r}")
    method = "none" if method == "auto" else method
    combiner = view.combiner
    if method != "none" and not isinstance(combiner, MeanCombiner):
        raise EnsembleError(
            f"method={method!r} learns a MeanCombiner's weights per label. Received: "
            f"{type(combiner).__name__} {combiner.name!r}"
        )
    if calibration is not None:
        raise EnsembleError(
            f"calibration={calibration!r} scales one softmax distribution; a multilabel ensemble's "
            "labels are independent probabilities. Received: a multilabel ensemble."
        )
    rows = row_count(x)
    if rows == 0:
        raise EnsembleError("Expected at least one row to fit the combiner. Received: an empty split.")
    targets = multilabel_targets(y, view.width, rows)
    check_finite_inputs(x)
    if level_one is None and level_one_unseen:
        raise EnsembleError(
            "level_one_unseen=True says the given level_one predictions come from models that "
            "never saw their rows. Received no level_one: pass it, or drop level_one_unseen."
        )
    given = level_one is not None
    overlaps: GuardResult | None = None
    if given:
        level_one = check_multilabel_level_one(view, level_one, rows)
    if not level_one_unseen:
        overlaps = guard_rows(
            model, x, allow_overlap=allow_overlap, rtol=guard_rtol, atol=guard_atol, level_one_given=given
        )
    if level_one is None:
        level_one = (store or LevelOneStore(strategy=strategy, verbose=verbose)).predictions(model, x)
        for index, name in enumerate(view.member_names):
            check_finite(level_one[:, index], f"Member {name!r}'s predictions of the (finite) fitting rows")
    fitted = None
    restore_initial_state(combiner)  # the rows are good: nothing an earlier fit chose carries over
    if method != "none":
        fitted = label_weights(level_one, targets, method, rounds, names=view.classes)
        combiner.set_label_weights(fitted.tolist())
    for layer in model.layers:
        if isinstance(layer, MultilabelUncertainty):
            layer.set_member_weights(combiner.label_weights or combiner.member_weights)
    forget_compiled(model)
    losses = [binary_log_loss(level_one[:, i].astype("float64"), targets) for i in range(len(view.members))]
    best = int(np.argmin(losses))
    table = getattr(combiner, "label_weights", None)
    weights = table if table is not None else combiner.member_weights
    return FitReport(
        task=view.task,
        combiner=type(combiner).__name__,
        method=method,
        options={} if method != "selection" else {"rounds": rounds},
        regime="given" if given else "holdout",
        rows=rows,
        overlaps=dict(overlaps or {}),
        selected_member={
            "name": view.member_names[best],
            "by": f"mean binary log loss over labels on the {rows} fitting rows",
            "nll": losses[best],
        },
        member_weights=None if weights is None else dict(zip(view.member_names, weights, strict=True)),
        noise_variance=None,
        fitted=fitted,
        level_one=level_one,
        targets=targets,
        guard=overlaps.as_dict()
        if overlaps is not None
        else {"checked": False, "reason": "level_one_unseen"},
    )
