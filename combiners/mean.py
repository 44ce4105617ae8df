"""Weighted average of the member predictions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras
from keras import ops

from combiners.base import CLASSIFICATION, MULTILABEL, REGRESSION, Combiner, Tensor, validate_weights

__all__ = ["MeanCombiner", "validate_label_weights"]


def validate_label_weights(weights: Iterable[Any]) -> list[list[float]]:
    """A `(members, labels)` table of weights as lists of Python floats: one row per member,
    one column per label, each column non-negative with a positive weight (`validate_weights`
    judges each row; the counts are checked at build time)."""
    rows = [list(row) for row in weights]
    if not rows or len({len(row) for row in rows}) != 1:
        raise ValueError(
            "Expected per-label weights as a (members, labels) table, rows of one length. "
            f"Received: weights={rows!r}"
        )
    table = []
    for label, column in enumerate(_columns(rows)):
        try:
            table.append(validate_weights(column) or [])
        except ValueError as error:  # which label's column, and the whole table
            reason = str(error).split(" Received:")[0]
            raise ValueError(
                f"{reason} Each label's column (one weight per member) is judged on its own: label "
                f"{label} (column {label}) is {column!r}. Received: weights={rows!r}"
            ) from error
    return _columns(table)


def _columns(rows: list[list[Any]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


def _is_table(weights: Any) -> bool:
    """Whether `weights` is a table (rows that are sequences), not one weight per member."""
    if weights is None or isinstance(weights, (str, bytes)) or not isinstance(weights, Iterable):
        return False
    first = next(iter(weights), None)
    return isinstance(first, Iterable) and not isinstance(first, (str, bytes))


@keras.saving.register_keras_serializable(package="combiners")
class MeanCombiner(Combiner):
    """Averages member predictions: `sum_i w_i p_i / sum_i w_i`.

    Works for classification (probabilities stay probabilities), regression and multilabel
    (each label's probability averaged on its own).

    Args:
        weights: one non-negative number per member, or None for uniform; under
            task="multilabel" also a `(members, labels)` table, one weight per member per
            label (each label's column normalised on its own: learned weights per label,
            `ensemble.fit(..., method="optimal")`), held as `label_weights`.
        **kwargs: `task` and standard layer keyword arguments.
    """

    supported_tasks = (CLASSIFICATION, REGRESSION, MULTILABEL)
    combines_positions = True

    def __init__(self, weights: Iterable[Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label_weights: list[list[float]] | None = None
        if _is_table(weights):
            self.set_label_weights(weights)
        else:
            self.member_weights = validate_weights(weights)

    def set_label_weights(self, weights: Iterable[Any] | None) -> None:
        """Replace the weights by a `(members, labels)` table (None: uniform), for a multilabel
        task; as `set_member_weights`, a model holding this layer must drop its traced
        functions afterwards."""
        if self.built and self.task != MULTILABEL:  # unbuilt: `_build_state` checks the task
            raise ValueError(
                f"Per-label weights need task='multilabel'; this MeanCombiner is configured for a "
                f"{self.task} task. Received: weights={weights!r}"
            )
        table = None if weights is None else validate_label_weights(weights)
        if table is not None and self.built:
            self._check_table(self.members_, self.width_, table)
        self.label_weights, self.member_weights = table, None

    def set_member_weights(self, weights: Iterable[Any] | None) -> None:
        super().set_member_weights(weights)
        self.label_weights = None

    def _build_state(self, members: int, width: int, features_dim: int | None) -> None:
        self.width_ = width
        if self.label_weights is not None:
            if self.task != MULTILABEL:  # per-label means would not sum to one over classes
                raise ValueError(
                    "Per-label weights (a (members, labels) table) need task='multilabel'. "
                    f"Received: a {self.task} task."
                )
            self._check_table(members, width, self.label_weights)

    def _check_table(self, members: int, labels: int, table: list[list[float]]) -> None:
        if len(table) != members or len(table[0]) != labels:
            raise ValueError(
                f"Expected per-label weights of shape (members, labels) = ({members}, {labels}). "
                f"Received: shape ({len(table)}, {len(table[0])})"
            )

    def _combine(self, member_predictions: Tensor, features: Tensor | None) -> Tensor:
        if self.label_weights is None:
            return self._weighted_mean(member_predictions)
        table = ops.convert_to_tensor(self.label_weights, dtype=member_predictions.dtype)
        table = table / ops.sum(table, axis=0, keepdims=True)
        shape = (1, *table.shape[:1], *(1,) * (len(member_predictions.shape) - 3), table.shape[1])
        return ops.sum(member_predictions * ops.reshape(table, shape), axis=1)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        table, weights = self.label_weights, self.member_weights
        if table is not None:
            config.update({"weights": [[float(w) for w in row] for row in table]})
        else:
            config.update({"weights": None if weights is None else list(weights)})
        return config
