"""What a built ensemble is made of, resolved once: its members, combiner, task and width.

Fitting, evaluation and export read these facts from one `EnsembleView` instead of each
searching the model's layers again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from combiners.base import CLASSIFICATION, MULTILABEL, REGRESSION, Combiner
from combiners.calibration import Calibration
from ensemble.errors import EnsembleError
from ensemble.graph.fused import FusedMembers
from ensemble.members.member import Member
from ensemble.rows import flat_features
from ensemble.types import Task

__all__ = ["EnsembleView", "ensemble_combiner", "ensemble_members", "ensemble_task"]


@dataclass(frozen=True)
class EnsembleView:
    """The parts of an ensemble built by `build_ensemble`, in member order."""

    model: keras.Model
    members: tuple[Member, ...]
    combiner: Combiner
    task: Task
    width: int  # classes, labels (multilabel), or regression targets
    calibration: Calibration | None = None  # after the combiner, classification only

    @classmethod
    def of(cls, model: Any) -> EnsembleView:
        """The view of `model`; an error when it is not an ensemble from `build_ensemble`."""
        if not isinstance(model, keras.Model):
            raise EnsembleError(
                f"Expected an ensemble built by build_ensemble. Received: {type(model).__name__}"
            )
        output = getattr(model, "output", None) if model.built else None
        members = _members_in_order(model) if output else ()
        combiners = [layer for layer in model.layers if isinstance(layer, Combiner)] if output else []
        if not isinstance(output, Mapping) or "prediction" not in output or not members or not combiners:
            raise EnsembleError(
                f"Model {model.name!r} is not an ensemble built by build_ensemble (expected a built "
                "functional model with Member layers, a combiner and a dict output with 'prediction')."
            )
        task: Task = REGRESSION if "std" in output else CLASSIFICATION
        if combiners[0].task == MULTILABEL:  # the combiner is configured for its ensemble's task
            task = MULTILABEL
        calibration = next((layer for layer in model.layers if isinstance(layer, Calibration)), None)
        return cls(model, members, combiners[0], task, int(output["prediction"].shape[-1]), calibration)

    @property
    def fused(self) -> list[list[str]]:
        """The names of the members computed together, one list per fused group."""
        return [layer.member_names for layer in self.model.layers if isinstance(layer, FusedMembers)]

    @property
    def classes(self) -> tuple[str, ...] | None:
        """The label of each column of the prediction (`build_ensemble` aligned every member to
        one order), or None when its columns are unnamed."""
        return self.members[0].classes if self.task != REGRESSION else None

    @property
    def order_emitted(self) -> bool:
        """Whether some member emits its columns in the ensemble's order as it comes (integer
        labels then number that member's columns), not every one reordered by label."""
        return any(member.columns is None for member in self.members)

    @property
    def member_names(self) -> list[str]:
        return [member.name for member in self.members]

    def combine(self, level_one: Any, x: Any = None) -> np.ndarray:
        """The combiner's output (before calibration) for level-one predictions `(rows,
        members, width)` of rows `x` (needed only by a combiner that reads the raw features)."""
        predictions = np.asarray(level_one, dtype="float32")
        if self.combiner.needs_features:
            combined = self.combiner(predictions, flat_features(x))
        else:
            combined = self.combiner(predictions)
        return np.asarray(keras.ops.convert_to_numpy(combined))


def _members_in_order(model: keras.Model) -> tuple[Member, ...]:
    """The members in the order `member_predictions` stacks them: Member layers, and the
    members of fused layers (`ensemble.graph.fused`) at the positions of their outputs."""
    layers = [layer for layer in model.layers if isinstance(layer, (Member, FusedMembers))]
    if not any(isinstance(layer, FusedMembers) for layer in layers):
        return tuple(layer for layer in layers if isinstance(layer, Member))
    try:
        stacked = model.get_layer("member_predictions").input
    except ValueError:
        return ()
    placed: list[Member] = []
    for tensor in stacked if isinstance(stacked, (list, tuple)) else [stacked]:
        operation = tensor._keras_history[0]  # the layer that made it
        placed.extend(operation.members if isinstance(operation, FusedMembers) else [operation])
    order = model.get_layer("member_predictions").order
    members = placed if order is None else [placed[index] for index in order]
    return tuple(members)


def ensemble_members(model: keras.Model) -> list[Member]:
    """The members of an ensemble built by `build_ensemble`, in order."""
    return list(EnsembleView.of(model).members)


def ensemble_combiner(model: keras.Model) -> Combiner:
    """The combiner layer of an ensemble built by `build_ensemble`."""
    return EnsembleView.of(model).combiner


def ensemble_task(model: keras.Model) -> Task:
    """The task of an ensemble built by `build_ensemble`."""
    return EnsembleView.of(model).task
