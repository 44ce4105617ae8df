"""A bias plus the weighted sum of the member predictions: gradient boosting's additive model."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import keras
from keras import ops

from combiners.base import REGRESSION, Combiner, Tensor, validate_weights

__all__ = ["AdditiveCombiner"]


def _per_target(values: Iterable[Any], what: str, *, non_negative: bool = False) -> list[float]:
    try:
        result = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(
            f"Expected {what} to be a list of numbers, one per target. Received: {values!r}"
        ) from None
    if not result or not all(math.isfinite(v) for v in result):
        raise ValueError(f"Expected {what} to be finite numbers, one per target. Received: {result}")
    if non_negative and any(v < 0 for v in result):
        raise ValueError(f"Expected non-negative {what}. Received: {result}")
    return result


@keras.saving.register_keras_serializable(package="combiners")
class AdditiveCombiner(Combiner):
    """`bias + sum_m w_m h_m`: the members as the stages of an additive model (gradient
    boosting's `F_M = F_0 + sum_m learning_rate * h_m`), regression only.

    The weights are NOT normalised (each member predicts a residual, not the target).

    Args:
        weights: one non-negative number per member (gradient boosting: the learning rate).
        bias: one number per target, the model's initial prediction `F_0`.
        residual_std: None, or one non-negative number per target: the RMS residual of the
            prediction on rows that trained nothing (gradient boosting's validation rows).
            When set, the ensemble graph's `std` output is this homoscedastic scale, the
            same for every row, rather than the members' spread (which says nothing about
            residual learners).
        **kwargs: `task` and standard layer keyword arguments.
    """

    supported_tasks = (REGRESSION,)

    def __init__(
        self,
        weights: Iterable[Any],
        bias: Iterable[Any],
        residual_std: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.member_weights = validate_weights(weights)
        if self.member_weights is None:
            raise ValueError("AdditiveCombiner needs weights, one per member. Received: weights=None")
        self.bias = _per_target(bias, "bias")
        self.residual_std = (
            None if residual_std is None else _per_target(residual_std, "residual_std", non_negative=True)
        )

    def _build_state(self, members: int, width: int, features_dim: int | None) -> None:
        for what, values in (("bias", self.bias), ("residual_std", self.residual_std)):
            if values is not None and len(values) != width:
                raise ValueError(
                    f"{self._describe()}: expected {width} {what} values, one per target. Received: {values}"
                )

    def _combine(self, member_predictions: Tensor, features: Tensor | None) -> Tensor:
        dtype = member_predictions.dtype
        weights = ops.reshape(ops.convert_to_tensor(self.member_weights, dtype=dtype), (1, -1, 1))
        bias = ops.convert_to_tensor(self.bias, dtype=dtype)
        return bias + ops.sum(member_predictions * weights, axis=1)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "weights": list(self.member_weights or []),
                "bias": list(self.bias),
                "residual_std": None if self.residual_std is None else list(self.residual_std),
            }
        )
        return config
