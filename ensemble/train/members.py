"""What the training functions share: compiling a member the user left uncompiled, wrapping a
trained model as a `Member` that carries its training rows for the leakage guard, and the
checks of labels and teacher outputs made before anything trains."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from ensemble.errors import EnsembleError
from ensemble.members.load import final_activation, load_member
from ensemble.members.member import Member
from ensemble.rows import flat_features
from ensemble.types import CLASSIFICATION, REGRESSION, OutputKind, Task

__all__ = [
    "check_finite_rows",
    "check_labels",
    "compiled",
    "ends_in_softmax",
    "output_kind",
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


def check_labels(y: Any, rows: int, what: str, classes: int | None = None) -> np.ndarray:
    """`y` as integer class labels, one per row and below `classes`; an error naming the first
    bad row otherwise."""
    labels = np.asarray(y)
    if labels.ndim != 1 or len(labels) != rows:
        raise EnsembleError(f"{what}: expected one class label per row, ({rows},). Received: {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise EnsembleError(f"{what}: expected integer class labels. Received: {labels.dtype}")
    bad = (labels < 0) | (labels >= (classes if classes is not None else np.iinfo(labels.dtype).max))
    if bad.any():
        row = int(np.argmax(bad))
        raise EnsembleError(
            f"{what}: row {row} has label {labels[row]}; the model has classes 0..{(classes or 0) - 1}."
        )
    return labels


def check_finite_rows(values: np.ndarray, what: str) -> None:
    """An error naming the first row of `values` that holds a NaN or an infinity."""
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise EnsembleError(f"{what}: row {row} is not finite ({int((~finite).sum())} such rows).")
