"""Hard or soft voting of classifiers, with scikit-learn's names."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras
from keras import ops

from combiners.base import (
    CLASSIFICATION,
    Combiner,
    Tensor,
    first_argmax,
    validate_weights,
)

__all__ = ["VoteCombiner"]

VOTING = ("hard", "soft")


@keras.saving.register_keras_serializable(package="combiners")
class VoteCombiner(Combiner):
    """Combines classifiers by (weighted) voting, like sklearn's VotingClassifier.

    - `voting="soft"`: the weighted mean of the members' probabilities.
    - `voting="hard"`: each member votes for its most probable class (a tie
      inside one member goes to the lowest class index, as `np.argmax`); the
      output is the weighted vote shares, which sum to 1 per row.

    Args:
        voting: `"hard"` or `"soft"`.
        weights: one non-negative number per member, or None for uniform.
        **kwargs: `task` and standard layer keyword arguments.
    """

    supported_tasks = (CLASSIFICATION,)

    def __init__(
        self,
        voting: str = "hard",
        weights: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if voting not in VOTING:
            raise ValueError(f"Expected voting to be one of {VOTING}. Received: voting={voting!r}")
        # Set before the base __init__, which checks a given `task` and
        # names the voting in its error.
        self.voting = voting
        super().__init__(**kwargs)
        self.member_weights = validate_weights(weights)

    def _combine(self, member_predictions: Tensor, features: Tensor | None) -> Tensor:
        if self.voting == "soft":
            return self._weighted_mean(member_predictions)
        width = ops.shape(member_predictions)[-1]
        winner = first_argmax(member_predictions)
        votes = ops.one_hot(winner, width, dtype=member_predictions.dtype)
        return self._weighted_mean(votes)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        weights = self.member_weights
        config.update(
            {
                "voting": self.voting,
                "weights": None if weights is None else list(weights),
            }
        )
        return config

    def _describe(self) -> str:
        return f"VoteCombiner(voting={self.voting!r})"

    def _unsupported_task_message(self, task: str) -> str:
        return (
            f"{self._describe()} cannot combine a {task} task: "
            f"{self.voting} voting needs class probabilities. "
            "Use MeanCombiner, or StackingCombiner."
        )
