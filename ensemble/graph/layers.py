"""The ensemble graph's own layers: member stacking, uncertainty outputs, passthrough features."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from combiners.base import first_argmax
from ensemble.types import Tensor

__all__ = [
    "ClassificationUncertainty",
    "FlatFeatures",
    "MemberStack",
    "NonFiniteRows",
    "RegressionSpread",
    "entropy",
]

_EPSILON = 1e-7


def entropy(probabilities: Tensor) -> Tensor:
    """Shannon entropy in nats over the last axis (0 log 0 taken as 0)."""
    return -ops.sum(probabilities * ops.log(ops.clip(probabilities, _EPSILON, 1.0)), axis=-1)


@keras.saving.register_keras_serializable(package="ensemble")
class MemberStack(keras.layers.Layer):
    """Stacks `members` predictions of shape (batch, width) into (batch, members, width)."""

    def call(self, predictions: list[Tensor]) -> Tensor:
        return ops.stack(predictions, axis=1)


@keras.saving.register_keras_serializable(package="ensemble")
class ClassificationUncertainty(keras.layers.Layer):
    """Total uncertainty, its epistemic part, and how many members disagree with the ensemble.

    - `entropy`: entropy of the ensemble's prediction.
    - `mutual_information`: entropy of the members' mean minus the members' mean
      entropy (the BALD decomposition); 0 when all members agree exactly.
    - `disagreement`: the fraction of members whose top class differs from the
      ensemble's.
    """

    def call(self, member_predictions: Tensor, prediction: Tensor) -> dict[str, Tensor]:
        mean = ops.mean(member_predictions, axis=1)
        mutual_information = entropy(mean) - ops.mean(entropy(member_predictions), axis=1)
        member_votes = first_argmax(member_predictions)
        ensemble_vote = ops.expand_dims(first_argmax(prediction), 1)
        disagreement = ops.mean(ops.cast(ops.not_equal(member_votes, ensemble_vote), "float32"), 1)
        return {
            "entropy": entropy(prediction),
            "mutual_information": ops.maximum(mutual_information, 0.0),
            "disagreement": disagreement,
        }

    def compute_output_spec(self, member_predictions: Any, prediction: Any) -> dict[str, Any]:
        # One KerasTensor per output: a shared one would make them one graph output.
        return {
            key: keras.KerasTensor(tuple(prediction.shape[:-1]), dtype="float32")
            for key in ("entropy", "mutual_information", "disagreement")
        }


@keras.saving.register_keras_serializable(package="ensemble")
class RegressionSpread(keras.layers.Layer):
    """The members' standard deviation per target (population, ddof=0): (batch, targets)."""

    def call(self, member_predictions: Tensor) -> Tensor:
        return ops.std(member_predictions, axis=1)


@keras.saving.register_keras_serializable(package="ensemble")
class FlatFeatures(keras.layers.Layer):
    """The raw ensemble inputs (in input-name order), flattened, float32, concatenated: (batch, d)."""

    def call(self, inputs: list[Tensor]) -> Tensor:
        flat = [ops.reshape(ops.cast(x, "float32"), (ops.shape(x)[0], -1)) for x in inputs]
        return flat[0] if len(flat) == 1 else ops.concatenate(flat, axis=-1)

    def compute_output_spec(self, inputs: list[Any]) -> Any:
        width: int | None = 0
        for x in inputs:
            size: int | None = 1
            for dim in x.shape[1:]:
                size = None if size is None or dim is None else size * dim
            width = None if width is None or size is None else width + size
        return keras.KerasTensor((inputs[0].shape[0], width), dtype="float32")


@keras.saving.register_keras_serializable(package="ensemble")
class NonFiniteRows(keras.layers.Layer):
    """Every output NaN on a row whose inputs or member predictions hold a NaN or infinity.

    A non-finite value must not become a confident answer: fused kernels (a matmul with its
    relu) and the hard vote's argmax can turn it into a finite one. The other rows pass as they
    are; integer inputs (token ids) are finite by construction and not checked.
    """

    def call(self, outputs: dict[str, Tensor], checked: list[Tensor]) -> dict[str, Tensor]:
        finite = None
        for value in checked:
            if "float" not in str(value.dtype):
                continue
            rows = ops.all(ops.isfinite(ops.reshape(value, (ops.shape(value)[0], -1))), axis=1)
            finite = rows if finite is None else ops.logical_and(finite, rows)
        if finite is None:
            return dict(outputs)
        result = {}
        for key, value in outputs.items():
            mask = ops.reshape(finite, (-1,) + (1,) * (len(value.shape) - 1))
            result[key] = ops.where(mask, value, ops.cast(float("nan"), value.dtype))
        return result

    def compute_output_spec(self, outputs: dict[str, Any], checked: list[Any]) -> dict[str, Any]:
        return {key: keras.KerasTensor(value.shape, dtype=value.dtype) for key, value in outputs.items()}
