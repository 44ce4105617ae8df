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

    With `mean_feature` (classification, default meta-model), one more block
    of features, `log(mean_j clip(p_j, 1e-7, 1))` (the members' arithmetic
    mean), feeds the logits through a `(width, width)` kernel `mean_kernel_`:
    `softmax(meta_features @ kernel + bias + log_mean @ mean_kernel_)`. It
    is a non-trainable variable, zero (no effect) until `fit_stacking` sets
    it: the arithmetic plain mean, which no log-linear head over the
    members' log-probabilities can express, is then one of the default
    stacker's candidates. `meta_features` and the trainable weights are as
    without it.

    Args:
        meta_model: a Keras layer or model mapping `(batch, F)` to
            `(batch, width)`, probabilities for classification; None for the
            default above.
        passthrough: whether the raw `features` are meta features too.
        weights: one non-negative number per member, or None: how the uncertainty outputs
            (`mutual_information`, `disagreement`) weigh the members (None: equally);
            `fit_stacking` sets one-hot weights when it picks one member alone. The
            meta-model itself does not read them.
        mean_feature: whether the arithmetic-mean block above is in the graph; None (the
            default): when `meta_model` is None. A config without the key (saved before it
            existed) loads without it, and predicts as it did.
        **kwargs: `task` and standard layer keyword arguments. The task must
            be known before build: pass `task=` or call `configure(task)`.
    """

    def __init__(
        self,
        meta_model: keras.layers.Layer | None = None,
        passthrough: bool = False,
        weights: Iterable[Any] | None = None,
        mean_feature: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.member_weights = validate_weights(weights)
        self.meta_model = meta_model
        self.passthrough = bool(passthrough)
        if mean_feature and meta_model is not None:
            raise ValueError(
                "mean_feature adds logits to the default meta-model's; a given meta_model "
                "outputs probabilities. Received: mean_feature=True with "
                f"meta_model={type(meta_model).__name__}"
            )
        self.mean_feature = meta_model is None if mean_feature is None else bool(mean_feature)
        # The meta-model in use (the given one or the default), set in build.
        self.meta_model_: keras.layers.Layer | None = None
        # The kernel of the arithmetic-mean block, set in build (classification, mean_feature).
        self.mean_kernel_: Any = None

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
            if self.mean_feature and self.task == CLASSIFICATION:
                # Not trained by Keras: the exact fit sets it (a regression's members' mean is
                # already linear in its meta features: no block there).
                self.mean_kernel_ = self.add_weight(
                    shape=(width, width), initializer="zeros", trainable=False, name="mean_kernel"
                )
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
        meta_features = self.meta_features(member_predictions, features)
        if self.mean_kernel_ is None:
            return self.meta_model_(meta_features)
        dense = self.meta_model_
        logits = ops.matmul(meta_features, dense.kernel) + dense.bias
        return ops.softmax(logits + ops.matmul(self.log_mean(member_predictions), self.mean_kernel_))

    def log_mean(self, member_predictions: Tensor) -> Tensor:
        """The arithmetic-mean block, `(batch, width)`: `log(mean_j clip(p_j, 1e-7, 1))`
        (the members' clipped probabilities, as in `meta_features`, so it is theirs exactly)."""
        clipped = ops.clip(ops.cast(member_predictions, "float32"), LOG_EPSILON, 1.0)
        return ops.log(ops.mean(clipped, axis=1))

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
                "mean_feature": self.mean_feature,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StackingCombiner:
        config = dict(config)
        config.setdefault("mean_feature", False)  # saved before it existed: as it was then
        if config.get("meta_model") is not None:
            config["meta_model"] = keras.saving.deserialize_keras_object(config["meta_model"])
        return cls(**config)

    def _describe(self) -> str:
        return f"StackingCombiner(passthrough={self.passthrough})"
