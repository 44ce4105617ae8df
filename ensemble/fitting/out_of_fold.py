"""Out-of-fold predictions: the leak-free level-one data a stacking meta-model trains on.

As in scikit-learn's `cross_val_predict`, each training row is predicted by a
fresh copy of the member that was trained on the other folds, so the
meta-model never learns from a prediction on a row the member has seen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import keras
import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from ensemble.errors import EnsembleError, MemberError
from ensemble.fitting.arrays import check_probabilities
from ensemble.rows import row_count, take_rows
from ensemble.types import CLASSIFICATION, MULTILABEL, TASKS, Data, Task

__all__ = ["FitPredict", "OutOfFold", "fold_splits", "out_of_fold_predictions", "stack_out_of_fold"]

log = logging.getLogger(__name__)

FitPredict = Callable[[Data, np.ndarray, Data], np.ndarray]
"""`fit_predict(x_train, y_train, x_predict)`: train a fresh model, return its predictions."""

Split = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class OutOfFold:
    """`predictions[i]` comes from the model that did not see row i; `folds[i]` is row i's fold."""

    predictions: np.ndarray
    folds: np.ndarray


def out_of_fold_predictions(
    fit_predict: FitPredict,
    x: Data,
    y: np.ndarray,
    *,
    cv: int = 5,
    task: Task = "classification",
    seed: int = 0,
    verbose: bool = False,
) -> OutOfFold:
    """Predict every row of `x` with a model trained on the other `cv - 1` folds.

    Folds are scikit-learn's `StratifiedKFold` (classification) or `KFold`
    (regression), shuffled with `seed`. Predictions are `(rows, width)`.
    `verbose` shows a Keras progress bar over the folds.
    """
    splits = fold_splits(x, y, cv=cv, task=task, seed=seed)
    predictions = _predict_folds(fit_predict, x, y, splits, verbose=verbose)
    return OutOfFold(predictions, _fold_ids(splits))


def stack_out_of_fold(
    members: Mapping[str, FitPredict],
    x: Data,
    y: np.ndarray,
    *,
    cv: int = 5,
    task: Task = "classification",
    seed: int = 0,
    verbose: bool = False,
    width: int | None = None,
    probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions of every member on the same folds: `(level_one, folds)`.

    `level_one` is `(rows, members, width)` in the order of `members`. For an ensemble's
    members (`fit_out_of_fold`), each member's predictions are checked as its outputs are,
    the member named: `width` columns when given, and class probabilities (each value in
    [0, 1], each row summing to 1) with `probabilities`; under `task="multilabel"` each value
    an independent probability of its label, in [0, 1].
    """
    if not members:
        raise EnsembleError("Expected at least one member. Received: members={}")
    splits = fold_splits(x, y, cv=cv, task=task, seed=seed)
    columns = []
    for name, fit_predict in members.items():
        log.info("Out-of-fold predictions of member %r", name)
        try:
            columns.append(_predict_folds(fit_predict, x, y, splits, verbose=verbose))
            if probabilities:
                check_probabilities(columns[-1], "out-of-fold predictions")
            if task == MULTILABEL:
                _check_label_probabilities(columns[-1])
        except EnsembleError as error:
            raise MemberError(name, str(error)) from error
        if width is not None and columns[-1].shape[1] != width:
            raise MemberError(
                name,
                f"expected out-of-fold predictions of {width} columns, as the ensemble's members "
                f"predict. Received: {columns[-1].shape[1]} columns.",
            )
    widths = {name: c.shape[1] for name, c in zip(members, columns, strict=True)}
    if len(set(widths.values())) > 1:
        raise EnsembleError(f"Expected every member to predict the same width. Received: widths={widths}")
    return np.stack(columns, axis=1), _fold_ids(splits)


def fold_splits(x: Data, y: np.ndarray, *, cv: int, task: Task, seed: int) -> list[Split]:
    """`cv` shuffled folds of the rows of `x`, as `(train, held_out)` index pairs: stratified
    by class for classification (every fold holds every class), plain for regression and
    multilabel rows (a `(rows, labels)` 0/1 `y`, which no one class stratifies)."""
    rows = row_count(x)
    if task not in TASKS:
        raise EnsembleError(f"Expected task in {TASKS}. Received: task={task!r}")
    if cv < 2:
        raise EnsembleError(f"Expected cv >= 2 folds. Received: cv={cv}")
    if len(y) != rows:
        raise EnsembleError(f"Expected len(y) == {rows}, one target per row of x. Received: len(y)={len(y)}")
    if cv > rows:
        raise EnsembleError(f"Expected cv <= {rows}, the number of rows. Received: cv={cv}")
    if task != CLASSIFICATION:
        splitter = KFold(cv, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(rows)))
    if np.ndim(y) != 1:
        raise EnsembleError(f"Expected 1-D class labels for classification. Received: y.shape={np.shape(y)}")
    classes, counts = np.unique(y, return_counts=True)
    smallest = int(np.argmin(counts))
    if counts[smallest] < cv:
        raise EnsembleError(
            f"Expected cv <= {counts[smallest]}, the rows of the smallest class "
            f"{classes[smallest].item()!r}, so every fold holds every class. Received: cv={cv}"
        )
    splitter = StratifiedKFold(cv, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(rows), y))


def _predict_folds(
    fit_predict: FitPredict, x: Data, y: np.ndarray, splits: list[Split], *, verbose: bool
) -> np.ndarray:
    y = np.asarray(y)
    progress = keras.utils.Progbar(len(splits), unit_name="fold") if verbose else None
    outputs: list[np.ndarray] = []
    for fold, (train, held_out) in enumerate(splits):
        output = np.asarray(fit_predict(take_rows(x, train), y[train], take_rows(x, held_out)))
        if output.ndim == 1:
            output = output[:, None]
        if output.ndim != 2 or len(output) != len(held_out):
            raise EnsembleError(
                f"Fold {fold}: expected predictions of shape ({len(held_out)},) or "
                f"({len(held_out)}, width), one row per held-out row. Received: shape={output.shape}"
            )
        if outputs and output.shape[1] != outputs[0].shape[1]:
            raise EnsembleError(
                f"Fold {fold}: expected width {outputs[0].shape[1]} as in fold 0. "
                f"Received: shape={output.shape}"
            )
        log.info(
            "Fold %d of %d folds: trained on %d rows, predicted %d held-out rows",
            fold,
            len(splits),
            len(train),
            len(held_out),
        )
        outputs.append(output)
        if progress is not None:
            progress.update(fold + 1)
    predictions = np.empty((len(y), outputs[0].shape[1]), dtype=np.result_type(*outputs))
    for (_, held_out), output in zip(splits, outputs, strict=True):
        predictions[held_out] = output
    return predictions


def _check_label_probabilities(predictions: np.ndarray) -> None:
    """Multilabel out-of-fold predictions: each value a label's probability, in [0, 1]."""
    outside = ~((predictions >= 0) & (predictions <= 1)).all(axis=1)  # NaN too
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise EnsembleError(
            "Expected out-of-fold predictions of independent label probabilities, each in [0, 1] "
            f"(a sigmoid's outputs). Received: row {row} is {np.round(predictions[row], 4).tolist()} "
            f"({int(outside.sum())} such row(s)). Logits? Apply a sigmoid first."
        )


def _fold_ids(splits: list[Split]) -> np.ndarray:
    folds = np.empty(sum(len(held_out) for _, held_out in splits), dtype="int64")
    for fold, (_, held_out) in enumerate(splits):
        folds[held_out] = fold
    return folds
