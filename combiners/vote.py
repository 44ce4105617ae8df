"""Hard or soft voting of classifiers, with scikit-learn's names."""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import keras
from keras import ops

from combiners.base import (
    CLASSIFICATION,
    MULTILABEL,
    Combiner,
    Tensor,
    first_argmax,
    validate_weights,
)

__all__ = ["VoteCombiner", "exact_vote_weights"]

VOTING = ("hard", "soft")

# Integer tallies up to this total are exact in float32 too; past it (weights with no small
# common denominator), hard votes are tallied in float32, exact only to its rounding.
_MAX_EXACT_TOTAL = 2**24


def exact_vote_weights(weights: list[float] | None, members: int) -> list[int] | None:
    """The members' weights as the smallest integers in the same ratios, so that hard-vote
    tallies are exact and a tie is a tie: 0.1 and 0.2 are read as 1/10 and 2/10 (the shortest
    fraction within 1e-12 of each weight). None when their total passes 2**24, where float32
    (and so the vote shares) stops holding every integer."""
    if weights is None:
        return [1] * members
    fractions = []
    for weight in weights:
        fraction = Fraction(weight).limit_denominator(10**9)
        if abs(float(fraction) - weight) > 1e-12 * max(weight, 1e-300):
            return None
        fractions.append(fraction)
    scale = math.lcm(*(f.denominator for f in fractions))
    integers = [int(f * scale) for f in fractions]
    divisor = math.gcd(*integers)
    integers = [i // divisor for i in integers]
    return integers if sum(integers) <= _MAX_EXACT_TOTAL else None


@keras.saving.register_keras_serializable(package="combiners")
class VoteCombiner(Combiner):
    """Combines classifiers by (weighted) voting, like sklearn's VotingClassifier.

    - `voting="soft"`: the weighted mean of the members' probabilities.
    - `voting="hard"`: each member votes for its most probable class (a tie
      inside one member goes to the lowest class index, as `np.argmax`); the
      output is the weighted vote shares, which sum to 1 per row. The votes are
      tallied exactly (in integers in the weights' ratios, `exact_vote_weights`),
      so an exact tie between classes stays one and goes to the lowest class
      index, as scikit-learn's `VotingClassifier` breaks it.

    Under task="multilabel" each label is voted on alone: soft voting is the weighted mean of
    the members' probabilities of it; hard voting, the weighted share of the members whose
    score is >= 0.5 (a score of exactly 0.5 votes for the label), tallied exactly as above. An
    exact tie is a share of exactly 0.5, which the 0.5 threshold reads as the label present:
    a tie goes to the label, as a member's own 0.5 does.

    Args:
        voting: `"hard"` or `"soft"`.
        weights: one non-negative number per member, or None for uniform.
        **kwargs: `task` and standard layer keyword arguments.
    """

    supported_tasks = (CLASSIFICATION, MULTILABEL)
    combines_positions = True

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
        width = member_predictions.shape[-1]
        members = member_predictions.shape[1]
        if self.task == MULTILABEL:  # a vote per label: for it (1) or against (0)
            votes = ops.cast(ops.greater_equal(member_predictions, 0.5), "int32")
        else:
            votes = ops.one_hot(first_argmax(member_predictions), width, dtype="int32")
        integers = exact_vote_weights(self.member_weights, members)
        if integers is None:  # no exact integer tally: float32 weights, as the mean does
            return self._weighted_mean(ops.cast(votes, member_predictions.dtype))
        shape = (1, members) + (1,) * (len(member_predictions.shape) - 2)
        tally = ops.sum(votes * ops.reshape(ops.convert_to_tensor(integers, dtype="int32"), shape), axis=1)
        if self.task == MULTILABEL:  # the weighted share of members voting for each label
            # Divided in float32 (exact for a tie: 2 * tally == total gives 0.5), so that a total
            # past float16's range never becomes a float16 constant.
            share = ops.cast(tally, "float32") / float(sum(integers))
            return ops.cast(share, member_predictions.dtype)
        # Equal integer tallies give equal shares, distinct ones stay ordered (float32 holds
        # integers to 2**24). The total is summed at run time: a constant as large would not
        # survive a float16 export.
        tally = ops.cast(tally, member_predictions.dtype)
        return tally / ops.sum(tally, axis=-1, keepdims=True)

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
