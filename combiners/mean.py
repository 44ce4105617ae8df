"""Weighted average of the member predictions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras

from combiners.base import Combiner, Tensor, validate_weights

__all__ = ["MeanCombiner"]


@keras.saving.register_keras_serializable(package="combiners")
class MeanCombiner(Combiner):
    """Averages member predictions: `sum_i w_i p_i / sum_i w_i`.

    Works for classification (probabilities stay probabilities) and
    regression.

    Args:
        weights: one non-negative number per member, or None for uniform.
        **kwargs: `task` and standard layer keyword arguments.
    """

    combines_positions = True

    def __init__(self, weights: Iterable[Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.member_weights = validate_weights(weights)

    def _combine(self, member_predictions: Tensor, features: Tensor | None) -> Tensor:
        return self._weighted_mean(member_predictions)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        weights = self.member_weights
        config.update({"weights": None if weights is None else list(weights)})
        return config
