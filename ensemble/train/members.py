"""What the training functions share: compiling a member the user left uncompiled, wrapping a
trained model as a `Member` that carries its training rows for the leakage guard, and the
checks of labels, targets and teacher outputs made before anything trains (the labels' and the
finite values' own checks are `ensemble.fitting.arrays`', which every door shares)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from ensemble.errors import EnsembleError
from ensemble.fitting.arrays import check_probabilities, check_row_count, checked_labels, non_finite
from ensemble.members.load import final_activation, load_member
from ensemble.members.member import Member
from ensemble.rows import flat_features, take_rows
from ensemble.types import CLASSIFICATION, REGRESSION, OutputKind, Task

__all__ = [
    "check_finite_rows",
    "check_finite_x",
    "check_labels",
    "checked_targets",
    "compiled",
    "ends_in_softmax",
    "output_kind",
    "output_width",
    "trained_member",
]


def ends_in_softmax(model: keras.Model) -> bool:
    """Whether the model's last layer is a softmax (an activation or a `Softmax` layer)."""
    return final_activation(model) == "softmax"


def output_kind(model: keras.Model) -> OutputKind:
    """What a classifier emits: probabilities behind a final softmax, else logits."""
    return "probabilities" if ends_in_softmax(model) else "logits"


def compiled(model: keras.Model, task: Task | None, optimizer: Any = "adam") -> tuple[keras.Model, Task]:
    """`model`, compiled with `optimizer` and its task's loss unless it already is, and the
    task (None: classification behind a final softmax, else regression)."""
    task = task or (CLASSIFICATION if ends_in_softmax(model) else REGRESSION)
    if not getattr(model, "compiled", False):
        loss: Any = keras.losses.MeanSquaredError()
        if task == CLASSIFICATION:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not ends_in_softmax(model))
        model.compile(optimizer=optimizer, loss=loss)
    return model, task


def trained_member(model: keras.Model, name: str, trained_on: Any, task: Task) -> Member:
    """`model` as a member named `name` whose training-row record is `trained_on`."""
    member = load_member(model, name=name, output=output_kind(model) if task == CLASSIFICATION else None)
    member.training_rows = np.asarray(flat_features(trained_on), dtype="float32")
    return member


def output_width(model: keras.Model, x: Any) -> int:
    """The columns `model` emits, from one row of `x` (any model, built or not)."""
    return int(np.shape(model(take_rows(x, np.arange(1)), training=False))[-1])


def check_labels(
    y: Any, rows: int, door: str, classes: int | None = None, columns: str = "the model's output"
) -> np.ndarray:
    """`y` as int64 class labels, one per row of x and below `classes` (None: any >= 0); an
    error naming `door`, the first bad row and what was expected otherwise."""
    labels = np.asarray(y)
    check_row_count(labels, rows, door=door)
    return checked_labels(labels, classes, door=door, columns=columns)


def checked_targets(y: Any, rows: int, task: Task, door: str, classes: int | None = None) -> np.ndarray:
    """`y` checked for a member of `task`: class labels (`check_labels`), or rows of class
    probabilities as wide as the member's output (one-hot or smoothed targets, which Keras
    trains on with a categorical loss), or finite numeric regression targets, one per row of x."""
    if task == CLASSIFICATION:
        rows_of_classes = np.ndim(y) == 2 and classes is not None and np.shape(y)[1] == classes > 1
        if not rows_of_classes:
            return check_labels(y, rows, door, classes)
        probabilities = np.asarray(y)
        check_row_count(probabilities, rows, door=door)
        check_finite_rows(probabilities, f"{door}: y")
        check_probabilities(probabilities, f"{door}: y, rows of class probabilities")
        return probabilities
    targets = np.asarray(y)
    check_row_count(targets, rows, door=door)
    if targets.dtype.kind not in "biuf":
        raise EnsembleError(
            f"{door}: Expected numeric regression targets in y. Received: dtype {targets.dtype}."
        )
    check_finite_rows(targets, f"{door}: y")
    return targets


def check_finite_rows(values: np.ndarray, what: str) -> None:
    """An error naming the first row of `values` that holds a NaN or an infinity, or a float64
    value past float32's range (infinite in the float32 graph: `non_finite`, the check every
    door shares), with its columns, their values and which cause it is."""
    array = np.asarray(values)
    if array.ndim == 0 or array.size == 0:
        return
    bad = non_finite(array).reshape(len(array), -1)
    rows = np.flatnonzero(bad.any(axis=1))
    if not rows.size:
        return
    row = int(rows[0])
    columns = np.flatnonzero(bad[row])
    held = array.reshape(len(array), -1)[row, columns[:5]]
    wide = (
        f"; {array.dtype} values past float32's range (|value| > 3.4e38) are infinite in the float32 graph"
        if np.isfinite(held).any()
        else ""
    )
    raise EnsembleError(
        f"{what}: row {row} is not finite ({len(rows)} such row(s)): column(s) "
        f"{columns[:10].tolist()} (of the row flattened) hold {held.tolist()}{wide}. Drop or "
        "impute those rows first."
    )


def check_finite_x(x: Any, door: str) -> None:
    """Before anything trains on or predicts `x` (one array, or arrays by input name):
    `check_finite_rows` of each input, naming `door` and the input."""
    for name, values in x.items() if isinstance(x, Mapping) else [(None, x)]:
        check_finite_rows(np.asarray(values), f"{door}: x" if name is None else f"{door}: x[{name!r}]")
