"""Stacking: a trainable Keras meta-model over the members' outputs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras
import numpy as np
from keras import ops

from combiners.base import CLASSIFICATION, TASKS, Combiner, Tensor, validate_weights

__all__ = ["StackingCombiner", "mean_kernel"]

# Keeps log(p) finite for members that give a class probability 0.
LOG_EPSILON = 1e-7


def mean_kernel(members: int, width: int, num_features: int) -> np.ndarray:
    """The meta-model kernel that averages the members: row `j * width + c` feeds class (or
    target) `c` of member `j` with 1 / members; rows past the members' (raw features) are 0."""
    kernel = np.zeros((num_features, width))
    for j in range(members):
        kernel[j * width : (j + 1) * width] += np.eye(width) / members
    return kernel


@keras.saving.register_keras_serializable(package="combiners")
class StackingCombiner(Combiner):
    """Feeds the members' outputs to a meta-model, like sklearn's stacking.

    Meta features: for classification `log(clip(p, 1e-7, 1))` of every
    member, for regression the predictions, flattened to
    `(batch, members * width)`; with `passthrough=True` the raw `features`
    follow them.

    The default meta-model is a `Dense(width)` (softmax for classification:
    a multinomial logistic regression) that, before any training, computes
    the normalised geometric mean of the members (classification) or their
    plain mean (regression); passthrough columns start at zero. Its
    variables are this layer's trainable weights.

    Args:
        meta_model: a Keras layer or model mapping `(batch, F)` to
            `(batch, width)`, probabilities for classification; None for the
            default above.
        passthrough: whether the raw `features` are meta features too.
        weights: one non-negative number per member, or None: how the uncertainty outputs
            (`mutual_information`, `disagreement`) weigh the members (None: equally);
            `fit_stacking` sets one-hot weights when it picks one member alone. The
            meta-model itself does not read them.
        **kwargs: `task` and standard layer keyword arguments. The task must
            be known before build: pass `task=` or call `configure(task)`.
    """

    def __init__(
        self,
        meta_model: keras.layers.Layer | None = None,
        passthrough: bool = False,
        weights: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.member_weights = validate_weights(weights)
        self.meta_model = meta_model
        self.passthrough = bool(passthrough)
        # The meta-model in use (the given one or the default), set in build.
        self.meta_model_: keras.layers.Layer | None = None

    @property
    def needs_features(self) -> bool:
        return self.passthrough

    def _build_state(self, members: int, width: int, features_dim: int | None) -> None:
        if self.task is None:
            raise ValueError(
                f"{self._describe()} needs its task before it is built: call "
                f"`configure(task)` or pass `task=`, one of {TASKS}. "
                "Received: task=None"
            )
        num_features = members * width + (features_dim or 0)
        if self.meta_model is None:
            self.meta_model_ = self._default_meta_model(members, width, num_features)
        else:
            self.meta_model_ = self.meta_model
            if not self.meta_model_.built:
                self.meta_model_.build((None, num_features))

    def _default_meta_model(self, members: int, width: int, num_features: int) -> keras.layers.Layer:
        activation = "softmax" if self.task == CLASSIFICATION else None
        dense = keras.layers.Dense(
            width,
            activation=activation,
            kernel_initializer="zeros",
            name="meta_dense",
        )
        dense.build((None, num_features))
        # The untrained model averages the members (in log space for
        # classification), a sensible start for training.
        dense.kernel.assign(mean_kernel(members, width, num_features).astype("float32"))
        return dense

    def _combine(self, member_predictions: Tensor, features: Tensor | None) -> Tensor:
        assert self.meta_model_ is not None  # set by build
        return self.meta_model_(self.meta_features(member_predictions, features))

    def meta_features(self, member_predictions: Tensor, features: Tensor | None = None) -> Tensor:
        """What the meta-model sees: `(batch, members * width [+ d])`.

        Public so that a meta-model fitted outside Keras (scikit-learn's
        `LogisticRegression`, `Ridge`) is fitted on exactly these features.
        """
        _, members, width = member_predictions.shape
        member_predictions = ops.cast(member_predictions, "float32")
        if self.task == CLASSIFICATION:
            member_predictions = ops.log(ops.clip(member_predictions, LOG_EPSILON, 1.0))
        meta_features = ops.reshape(member_predictions, (-1, members * width))
        if self.passthrough:
            if features is None:
                raise ValueError(
                    f"{self._describe()} needs the raw features: call it as "
                    "`combiner(member_predictions, features)`. "
                    "Received: features=None"
                )
            features = ops.cast(features, meta_features.dtype)
            meta_features = ops.concatenate([meta_features, features], axis=-1)
        return meta_features

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        meta_model = None
        if self.meta_model is not None:
            meta_model = keras.saving.serialize_keras_object(self.meta_model)
        weights = self.member_weights
        config.update(
            {
                "meta_model": meta_model,
                "passthrough": self.passthrough,
                "weights": None if weights is None else list(weights),
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StackingCombiner:
        config = dict(config)
        if config.get("meta_model") is not None:
            config["meta_model"] = keras.saving.deserialize_keras_object(config["meta_model"])
        return cls(**config)

    def _describe(self) -> str:
        return f"StackingCombiner(passthrough={self.passthrough})"
