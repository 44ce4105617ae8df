"""The ensemble graph's own layers: member stacking, uncertainty outputs, passthrough features."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import keras
from keras import ops

from combiners.base import first_argmax, validate_weights
from ensemble.types import Tensor

__all__ = [
    "ClassificationUncertainty",
    "FlatFeatures",
    "MemberStack",
    "MultilabelUncertainty",
    "NonFiniteRows",
    "RegressionSpread",
    "ResidualScale",
    "binary_entropy",
    "entropy",
]

_EPSILON = 1e-7


def entropy(probabilities: Tensor) -> Tensor:
    """Shannon entropy in nats over the last axis (0 log 0 taken as 0)."""
    return -ops.sum(probabilities * ops.log(ops.clip(probabilities, _EPSILON, 1.0)), axis=-1)


def binary_entropy(probabilities: Tensor) -> Tensor:
    """Binary entropy in nats of each value, an independent probability (0 log 0 taken as 0)."""
    return entropy(ops.stack([probabilities, 1.0 - probabilities], axis=-1))


@keras.saving.register_keras_serializable(package="ensemble")
class MemberStack(keras.layers.Layer):
    """Stacks the members' predictions, each (batch, width), into (batch, members, width).

    With fused members (`ensemble.graph.fused`) a piece may hold several members already
    stacked: `sizes` gives each piece's member count (None: one each), and `order` the
    position in the concatenated pieces of each member, in member order (None: as they come).
    """

    def __init__(
        self, sizes: Sequence[int] | None = None, order: Sequence[int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.sizes = None if sizes is None else [int(size) for size in sizes]
        self.order = None if order is None else [int(index) for index in order]

    def call(self, predictions: list[Tensor]) -> Tensor:
        predictions = list(predictions) if isinstance(predictions, (list, tuple)) else [predictions]
        sizes = self.sizes or [1] * len(predictions)
        pieces = [
            p if size > 1 else ops.expand_dims(p, 1) for p, size in zip(predictions, sizes, strict=True)
        ]
        stacked = pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, axis=1)
        return stacked if self.order is None else ops.take(stacked, self.order, axis=1)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"sizes": self.sizes, "order": self.order})
        return config


@keras.saving.register_keras_serializable(package="ensemble")
class ClassificationUncertainty(keras.layers.Layer):
    """Total uncertainty, its epistemic part, and how much of the members disagree with the
    ensemble, with the members weighed as the combiner weighs them (`weights`, normalised;
    None: equally).

    - `entropy`: entropy of the ensemble's prediction.
    - `mutual_information`: entropy of the members' weighted mean minus their weighted mean
      entropy (the BALD decomposition of that mixture); 0 when all members agree exactly.
    - `disagreement`: the weight of the members whose top class differs from the ensemble's.
    """

    def __init__(self, weights: Iterable[Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.set_member_weights(weights)

    def set_member_weights(self, weights: Iterable[Any] | None) -> None:
        """The members' weights, validated like a combiner's (`combiners.base.validate_weights`)."""
        self.member_weights = validate_weights(weights)

    def _weigh(self, values: Tensor) -> Tensor:
        """The weighted mean of `(batch, members, ...)` over the members."""
        if self.member_weights is None:
            return ops.mean(values, axis=1)
        total = sum(self.member_weights)
        weights = ops.convert_to_tensor([w / total for w in self.member_weights], dtype=values.dtype)
        return ops.sum(values * ops.reshape(weights, (1, -1) + (1,) * (len(values.shape) - 2)), axis=1)

    def call(self, member_predictions: Tensor, prediction: Tensor) -> dict[str, Tensor]:
        mixture = self._weigh(member_predictions)
        mutual_information = entropy(mixture) - self._weigh(entropy(member_predictions))
        member_votes = first_argmax(member_predictions)
        ensemble_vote = ops.expand_dims(first_argmax(prediction), 1)
        disagreement = self._weigh(ops.cast(ops.not_equal(member_votes, ensemble_vote), "float32"))
        return {
            "entropy": entropy(prediction),
            "mutual_information": ops.maximum(mutual_information, 0.0),
            "disagreement": disagreement,
        }

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        weights = self.member_weights
        config.update({"weights": None if weights is None else list(weights)})
        return config

    def compute_output_spec(self, member_predictions: Any, prediction: Any) -> dict[str, Any]:
        # One KerasTensor per output: a shared one would make them one graph output.
        return {
            key: keras.KerasTensor(tuple(prediction.shape[:-1]), dtype="float32")
            for key in ("entropy", "mutual_information", "disagreement")
        }


@keras.saving.register_keras_serializable(package="ensemble")
class MultilabelUncertainty(keras.layers.Layer):
    """The uncertainty outputs of a multilabel ensemble, each the mean over labels of a
    per-label score, the members weighed as the combiner weighs them: `weights` one per member,
    or one per member per label `(members, labels)` (normalised per label; None: equally).

    - `entropy`: the binary entropy of the ensemble's probability of each label.
    - `mutual_information`: the binary entropy of the members' weighted mean minus their
      weighted mean binary entropy (per label, floored at 0); 0 when the members agree exactly.
    - `disagreement`: the weight of the members whose vote (score >= 0.5) differs from the
      ensemble's (prediction >= 0.5).
    """

    def __init__(self, weights: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.set_member_weights(weights)

    def set_member_weights(self, weights: Any) -> None:
        """One weight per member, or a `(members, labels)` table, as the combiner holds them."""
        if weights is not None and len(weights) and isinstance(weights[0], (list, tuple)):
            self.member_weights: Any = [[float(w) for w in row] for row in weights]
        else:
            self.member_weights = validate_weights(weights)

    def _weigh(self, values: Tensor) -> Tensor:
        """The weighted mean over the members of `(batch, members, labels)`."""
        if self.member_weights is None:
            return ops.mean(values, axis=1)
        table = ops.convert_to_tensor(self.member_weights, dtype=values.dtype)
        table = table if len(table.shape) == 2 else ops.expand_dims(table, -1)
        table = table / ops.sum(table, axis=0, keepdims=True)
        return ops.sum(values * ops.expand_dims(table, 0), axis=1)

    def call(self, member_predictions: Tensor, prediction: Tensor) -> dict[str, Tensor]:
        mixture = self._weigh(member_predictions)
        information = binary_entropy(mixture) - self._weigh(binary_entropy(member_predictions))
        member_votes = ops.greater_equal(member_predictions, 0.5)
        ensemble_votes = ops.expand_dims(ops.greater_equal(prediction, 0.5), 1)
        differs = ops.cast(ops.not_equal(member_votes, ensemble_votes), prediction.dtype)
        return {
            "entropy": ops.mean(binary_entropy(prediction), axis=-1),
            "mutual_information": ops.mean(ops.maximum(information, 0.0), axis=-1),
            "disagreement": ops.mean(self._weigh(differs), axis=-1),
        }

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"weights": self.member_weights})
        return config

    def compute_output_spec(self, member_predictions: Any, prediction: Any) -> dict[str, Any]:
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
class ResidualScale(keras.layers.Layer):
    """A fixed predictive scale per target, the same for every row: (batch, targets).

    The `std` of an ensemble whose members learn residuals (gradient boosting): the RMS
    residual of its prediction on held-out rows. Computed from the prediction tensor
    (`zeros_like(prediction) + scale`), so the batch stays dynamic in every export.
    """

    def __init__(self, scale: Sequence[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = [float(s) for s in scale]

    def call(self, prediction: Tensor) -> Tensor:
        return ops.zeros_like(prediction) + ops.convert_to_tensor(self.scale, dtype=prediction.dtype)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"scale": list(self.scale)})
        return config


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
        # `poison`: per row, the sum of every checked value times 0, which is exactly 0 on a
        # finite row and NaN on any other (inf * 0 is NaN; no sum of zeros overflows). Adding it
        # to a float output leaves the finite rows as they are (x + 0 == x; a -0.0 becomes +0.0,
        # the same value) and makes the others
        # NaN: two ops per checked tensor and one per output, where a mask and a select per
        # output cost several times the ops (each one a kernel launch at batch 1).
        poison = None
        for value in checked:
            if "float" not in str(value.dtype):
                continue
            row = ops.cast(ops.sum(value * 0.0, axis=tuple(range(1, len(value.shape)))), "float32")
            poison = row if poison is None else poison + row
        if poison is None:
            return dict(outputs)
        result, by_rank = {}, {}
        for key, value in outputs.items():
            rank = len(value.shape)
            if rank not in by_rank:
                by_rank[rank] = ops.reshape(poison, (-1,) + (1,) * (rank - 1))
            if "float" in str(value.dtype):
                result[key] = value + ops.cast(by_rank[rank], value.dtype)
            else:
                nan = ops.cast(float("nan"), value.dtype)
                result[key] = ops.where(ops.logical_not(ops.isnan(by_rank[rank])), value, nan)
        return result

    def compute_output_spec(self, outputs: dict[str, Any], checked: list[Any]) -> dict[str, Any]:
        return {key: keras.KerasTensor(value.shape, dtype=value.dtype) for key, value in outputs.items()}
