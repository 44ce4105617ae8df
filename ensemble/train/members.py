"""What the training functions share: compiling a member the user left uncompiled, and
wrapping a trained model as a `Member` that carries its training rows for the leakage guard."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from ensemble.members.load import load_member
from ensemble.members.member import Member
from ensemble.rows import flat_features
from ensemble.types import CLASSIFICATION, REGRESSION, OutputKind, Task

__all__ = ["compiled", "ends_in_softmax", "output_kind", "trained_member"]


def ends_in_softmax(model: keras.Model) -> bool:
    activation = getattr(model.layers[-1], "activation", None) if model.layers else None
    return getattr(activation, "__name__", "") == "softmax"


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
