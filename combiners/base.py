"""The base of every combiner: checks member predictions once, in one place.

A combiner merges the stacked member predictions `(batch, members, width)`
into one prediction `(batch, width)`. Like Keras' `base_merge.Merge`, the base
class holds the validation and each concrete combiner only implements
`_combine`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import keras
from keras import ops

__all__ = [
    "CLASSIFICATION",
    "MULTILABEL",
    "REGRESSION",
    "TASKS",
    "Combiner",
    "Shape",
    "Task",
    "Tensor",
    "first_argmax",
    "validate_weights",
]

# The task names, defined once for the whole project (`ensemble.types` re-exports them).
# "multilabel": k independent probabilities per row (k sigmoids), not one distribution.
Task = Literal["classification", "regression", "multilabel"]
CLASSIFICATION: Task = "classification"
REGRESSION: Task = "regression"
MULTILABEL: Task = "multilabel"
TASKS: tuple[Task, ...] = (CLASSIFICATION, REGRESSION, MULTILABEL)

# Annotations never import a backend (the keras-rs `types.py` convention).
Tensor = Any
Shape = tuple[int | None, ...]


def first_argmax(values: Tensor) -> Tensor:
    """Index of the maximum along the last axis; a tie goes to the lowest index, like `np.argmax`.

    Computed explicitly: backends do not promise how `argmax` breaks ties.
    """
    width = values.shape[-1]
    # `initial` keeps both reductions defined on a batch of no rows.
    is_max = ops.equal(values, ops.max(values, axis=-1, keepdims=True, initial=-math.inf))
    return ops.min(ops.where(is_max, ops.arange(width, dtype="int32"), width), axis=-1, initial=width)


def validate_weights(weights: Iterable[Any] | None) -> list[float] | None:
    """Returns `weights` as a list of Python floats, or None for uniform.

    Accepts any sequence (list, tuple, NumPy array, OmegaConf `ListConfig`),
    so that a Hydra config can hand its list over as it is. The count is
    checked later, at build time, when the number of members is known.
    """
    if weights is None:
        return None
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ValueError(
            f"Expected weights to be a list of numbers, one per member. Received: weights={weights!r}"
        ) from None
    if not values:
        raise ValueError(f"Expected at least one weight, one per member. Received: weights={values}")
    if not all(math.isfinite(w) for w in values):
        raise ValueError(f"Expected finite weights. Received: weights={values}")
    if any(w < 0 for w in values):
        raise ValueError(f"Expected non-negative weights. Received: weights={values}")
    if not any(values):
        raise ValueError(
            f"Expected at least one positive weight; all weights are zero. Received: weights={values}"
        )
    return values


class Combiner(keras.layers.Layer):
    """Merges `(batch, members, width)` member predictions to `(batch, width)`.

    Args:
        task: `"classification"`, `"regression"` or `"multilabel"` (where `supported_tasks`
            has it), or None: `build_ensemble` then holds a
            copy configured for its task (from `get_config()`, so every constructor argument
            must be in it) and leaves this layer as it was.
        **kwargs: standard layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        member_predictions: float tensor `(batch, members, width)`.
        features: optional float tensor `(batch, d)`, the raw ensemble inputs
            flattened and concatenated. Only combiners that declare
            `needs_features` use it; the others ignore it.
    """

    # Multi-label support is opted into: a combiner whose state or output assumes one
    # distribution per row (stacking, calibration) must not take k independent scores.
    supported_tasks: tuple[str, ...] = (CLASSIFICATION, REGRESSION)
    # Whether member predictions may carry axes between members and width, `(batch, members,
    # ..., width)` (a per-token or per-pixel classifier): the combiner then merges position by
    # position. Combiners whose state is sized by members x width (stacking) cannot.
    combines_positions: bool = False
    # Per-member weights; combiners that take `weights=` set them.
    member_weights: list[float] | None = None

    def __init__(self, *, task: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task: str | None = None
        if task is not None:
            self.configure(task)

    @property
    def needs_features(self) -> bool:
        """Whether `call` needs the `features` tensor."""
        return False

    def configure(self, task: str) -> None:
        """Sets the task, once; a layer built without one needs it before it is called."""
        if task not in TASKS:
            raise ValueError(f"Expected task to be one of {TASKS}. Received: task={task!r}")
        if task not in self.supported_tasks:
            raise ValueError(self._unsupported_task_message(task))
        if self.task is not None and self.task != task:
            raise ValueError(
                f"{self._describe()} is already configured for a {self.task} task. Received: task={task!r}"
            )
        self.task = task

    def build(
        self,
        member_predictions_shape: Shape,
        features_shape: Shape | None = None,
    ) -> None:
        shape = tuple(member_predictions_shape)
        rank_ok = len(shape) == 3 or (len(shape) > 3 and self.combines_positions)
        if not rank_ok or shape[1] is None or shape[-1] is None:
            expected = (
                "(batch, members, ..., width)" if self.combines_positions else "(batch, members, width)"
            )
            raise ValueError(
                f"{self._describe()} expects member predictions of shape {expected} with known "
                f"members and width. Received: member_predictions_shape={shape}"
            )
        members, width = int(shape[1]), int(shape[-1])
        features_dim = None
        if self.needs_features:
            if features_shape is None or len(features_shape) != 2 or features_shape[-1] is None:
                raise ValueError(
                    f"{self._describe()} needs the raw features: call it as "
                    "`combiner(member_predictions, features)` with features "
                    "of shape (batch, d). "
                    f"Received: features_shape={features_shape}"
                )
            features_dim = int(features_shape[-1])
        self._check_weight_count(members, self.member_weights)
        self.members_: int = members
        self._build_state(members, width, features_dim)

    def call(self, member_predictions: Tensor, features: Tensor | None = None) -> Tensor:
        return self._combine(member_predictions, features)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"task": self.task})
        return config

    # Subclass hooks.

    def _combine(self, member_predictions: Tensor, features: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _build_state(self, members: int, width: int, features_dim: int | None) -> None:
        """Creates the layer's state once the shapes are known and valid."""

    def _describe(self) -> str:
        return type(self).__name__

    def _unsupported_task_message(self, task: str) -> str:
        supported = " and ".join(self.supported_tasks)
        return f"{self._describe()} cannot combine a {task} task: it supports {supported} only."

    # Shared by the weighted combiners.

    def set_member_weights(self, weights: Iterable[Any] | None) -> None:
        """Replace the per-member weights (validated like the constructor's).

        The weights are constants of traced graphs: a model holding this
        layer must drop its compiled functions afterwards (`fit_mean_weights`
        does).
        """
        values = validate_weights(weights)
        if self.built:
            self._check_weight_count(self.members_, values)
        self.member_weights = values

    def _check_weight_count(self, members: int, weights: list[float] | None) -> None:
        if weights is not None and len(weights) != members:
            raise ValueError(f"Expected {members} weights, one per member. Received: weights={list(weights)}")

    def _weighted_mean(self, values: Tensor) -> Tensor:
        """Weighted mean over the members axis of `(batch, members, ...)`."""
        if self.member_weights is None:
            return ops.mean(values, axis=1)
        total = sum(self.member_weights)
        normalized = ops.convert_to_tensor([w / total for w in self.member_weights], dtype=values.dtype)
        shape = (1, -1) + (1,) * (len(values.shape) - 2)
        return ops.sum(values * ops.reshape(normalized, shape), axis=1)
