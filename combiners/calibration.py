"""Post-hoc calibration of class probabilities in the graph: temperature or vector scaling."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import keras
from keras import ops

from combiners.base import Tensor
from combiners.stack import LOG_EPSILON

__all__ = ["Calibration"]


def _floats(values: Iterable[Any] | None, name: str) -> list[float] | None:
    if values is None:
        return None
    result = [float(v) for v in values]
    if not result or not all(math.isfinite(v) for v in result):
        raise ValueError(
            f"Expected {name} to be a non-empty list of finite numbers. Received: {name}={values!r}"
        )
    return result


@keras.saving.register_keras_serializable(package="combiners")
class Calibration(keras.layers.Layer):
    """Rescales class probabilities: `softmax(log(p) / temperature)` (temperature scaling), or
    `softmax(log(p) * scale + bias)` with one scale and bias per class (vector scaling).

    `log(p)` is `log(clip(p, 1e-7, 1))`, as the stacking meta features. With the defaults
    (temperature 1, no scale) the layer is the identity and computes nothing. The parameters
    are constants of the traced graph, set from an exact fit (`ensemble.fit(calibration=...)`,
    `ensemble.fitting.temperature.fit_scaling`); a model holding the layer drops its compiled
    functions after `set_scaling`.

    Args:
        temperature: a positive number; above 1 softens, below 1 sharpens.
        scale, bias: one number per class each (vector scaling), or None.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        scale: Iterable[Any] | None = None,
        bias: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.classes_: int | None = None  # known once built
        self.set_scaling(temperature, scale, bias)

    def set_scaling(
        self, temperature: float = 1.0, scale: Iterable[Any] | None = None, bias: Iterable[Any] | None = None
    ) -> None:
        temperature = float(temperature)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"Expected a positive, finite temperature. Received: temperature={temperature}")
        scale_values, bias_values = _floats(scale, "scale"), _floats(bias, "bias")
        if (scale_values is None) != (bias_values is None) or (
            scale_values is not None and bias_values is not None and len(scale_values) != len(bias_values)
        ):
            raise ValueError(
                f"Expected scale and bias together, one number per class each. Received: scale={scale!r}, "
                f"bias={bias!r}"
            )
        if scale_values is not None and temperature != 1.0:
            raise ValueError("Expected either a temperature or a per-class scale and bias, not both.")
        if self.classes_ is not None and scale_values is not None and len(scale_values) != self.classes_:
            raise ValueError(f"Expected {self.classes_} scales, one per class. Received: {len(scale_values)}")
        self.temperature = temperature
        self.scale: list[float] | None = scale_values
        self.bias: list[float] | None = bias_values

    @property
    def is_identity(self) -> bool:
        return self.temperature == 1.0 and self.scale is None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        classes = input_shape[-1]
        if classes is None:
            raise ValueError(
                f"Calibration needs a known number of classes. Received: input_shape={input_shape}"
            )
        if self.scale is not None and len(self.scale) != classes:
            raise ValueError(f"Expected {classes} scales, one per class. Received: {len(self.scale)}")
        self.classes_ = int(classes)
        super().build(input_shape)

    def call(self, probabilities: Tensor) -> Tensor:
        if self.is_identity:
            return probabilities
        logits = ops.log(ops.clip(ops.cast(probabilities, "float32"), LOG_EPSILON, 1.0))
        if self.scale is not None:
            logits = logits * ops.convert_to_tensor(self.scale, "float32") + ops.convert_to_tensor(
                self.bias, "float32"
            )
        else:
            logits = logits / self.temperature
        return ops.softmax(logits, axis=-1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"temperature": self.temperature, "scale": self.scale, "bias": self.bias})
        return config
