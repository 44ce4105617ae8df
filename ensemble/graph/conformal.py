"""Split-conformal outputs in the graph: a prediction set per row (classification) or an interval
per target (regression), each from a threshold calibrated on held-out rows and kept as a constant
of the layer's config, so every export (SavedModel, TFLite, the registry) carries it.

Classification scores (higher = less conforming), for the probabilities `p` of a row, label `y`:

- `thr` (Sadinle, Lei & Wasserman 2019, "least ambiguous sets"): `1 - p_y`; the set is every
  class with `1 - p_c <= q`. It may be empty (no class is probable enough).
- `aps` (Romano, Sesia & Candès 2020), not randomised: the mass of the classes ranked at or
  above `y` (probabilities sorted descending, ties by the lower class index first); the set is
  the top classes up to and including the one whose cumulative mass first reaches `q` (the
  class that crosses the threshold stays in, as MAPIE's `include_last_label=True`). It is never
  empty on a finite row, and it holds every class whose own score is `<= q`, so coverage is at
  least `1 - alpha`; it over-covers by up to the crossing class's share (the randomised version
  drops that class at random to be exact, at the price of sets that change between calls).

Regression: `absolute` scores `|y - prediction|` (intervals of one width), `normalized` scores
`|y - prediction| / max(std, MIN_STD)` (intervals as wide as the members' spread), one threshold
per target.

A row whose prediction is not finite (the graph's `NonFiniteRows` makes every output NaN on a
row with a non-finite input) gets an all-False set, never a confident one: no class is offered,
and the row counts as not covered. Its interval bounds are NaN, as its prediction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import keras
from keras import ops

from ensemble.evaluate.metrics import MIN_STD
from ensemble.types import Tensor

__all__ = [
    "CLASS_METHODS",
    "CONFORMAL_OUTPUTS",
    "REGRESSION_METHODS",
    "ConformalInterval",
    "ConformalSet",
    "class_scores",
    "conformal_config",
    "regression_scores",
]

CLASS_METHODS: tuple[str, ...] = ("aps", "thr")
REGRESSION_METHODS: tuple[str, ...] = ("absolute", "normalized")
CONFORMAL_OUTPUTS: tuple[str, ...] = ("prediction_set", "interval_low", "interval_high")


def _cumulative_mass(probabilities: Tensor) -> tuple[Tensor, Tensor]:
    """The running sum of the probabilities sorted descending (ties: lower class first), and
    each class's rank in that order: `(inclusive sums, rank)`, each (batch, classes)."""
    classes = probabilities.shape[-1]
    ordered, order = ops.top_k(probabilities, k=classes, sorted=True)  # stable on ties
    return ops.cumsum(ordered, axis=-1), ops.argsort(order, axis=-1)


def class_scores(method: str, probabilities: Tensor, labels: Tensor) -> Tensor:
    """The nonconformity score of each row's label (batch,), by the same ops as the set."""
    p = ops.cast(probabilities, "float32")
    labels = ops.reshape(ops.cast(labels, "int32"), (-1, 1))
    if method == "thr":
        return ops.squeeze(ops.take_along_axis(1.0 - p, labels, axis=-1), -1)
    inclusive, rank = _cumulative_mass(p)
    position = ops.take_along_axis(rank, labels, axis=-1)
    return ops.squeeze(ops.take_along_axis(inclusive, position, axis=-1), -1)


def regression_scores(method: str, targets: Tensor, prediction: Tensor, std: Tensor) -> Tensor:
    """The nonconformity score of each row and target (batch, targets)."""
    residual = ops.abs(ops.cast(targets, "float32") - ops.cast(prediction, "float32"))
    if method == "normalized":
        residual = residual / ops.maximum(ops.cast(std, "float32"), MIN_STD)
    return residual


def _check(method: str, methods: tuple[str, ...], alpha: float, rows: int) -> None:
    if method not in methods:
        raise ValueError(f"Expected method in {methods}. Received: method={method!r}")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"Expected alpha in (0, 1). Received: alpha={alpha!r}")
    if rows < 1:
        raise ValueError(f"Expected calibration_rows >= 1. Received: calibration_rows={rows!r}")


@keras.saving.register_keras_serializable(package="ensemble")
class ConformalSet(keras.layers.Layer):
    """The conformal prediction set (batch, classes) of booleans for class probabilities.

    Args:
        method: "aps" or "thr" (the module's definitions).
        threshold: the calibrated score quantile `q` (a float32 value).
        alpha: the miscoverage it was calibrated for (recorded, not used in the graph).
        calibration_rows: how many rows it was calibrated on (recorded).
    """

    def __init__(
        self, method: str, threshold: float, alpha: float, calibration_rows: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        threshold = float(threshold)
        if not math.isfinite(threshold):
            raise ValueError(f"Expected a finite threshold. Received: threshold={threshold}")
        _check(method, CLASS_METHODS, float(alpha), int(calibration_rows))
        self.method = method
        self.threshold = threshold
        self.alpha = float(alpha)
        self.calibration_rows = int(calibration_rows)

    def call(self, probabilities: Tensor) -> Tensor:
        p = ops.cast(probabilities, "float32")
        q = ops.convert_to_tensor(self.threshold, "float32")
        finite = ops.all(ops.isfinite(p), axis=-1, keepdims=True)
        if self.method == "thr":
            chosen = ops.less_equal(1.0 - p, q)
        else:
            p = ops.where(finite, p, ops.zeros_like(p))  # a NaN must not reach the sort
            inclusive, rank = _cumulative_mass(p)
            before = ops.pad(inclusive[:, :-1], ((0, 0), (1, 0)))  # the mass ranked above each
            within = ops.logical_or(ops.less_equal(inclusive, q), ops.less(before, q))
            # Both running sums rise with the rank, so the chosen classes are the top `count`.
            count = ops.sum(ops.cast(within, "int32"), axis=-1, keepdims=True)
            chosen = ops.less(rank, count)
        return ops.logical_and(chosen, finite)

    def compute_output_spec(self, probabilities: Any) -> Any:
        return keras.KerasTensor(tuple(probabilities.shape), dtype="bool")

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {
                "method": self.method,
                "threshold": self.threshold,
                "alpha": self.alpha,
                "calibration_rows": self.calibration_rows,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="ensemble")
class ConformalInterval(keras.layers.Layer):
    """`interval_low`, `interval_high` (batch, targets): `prediction -/+ q * scale`, the scale 1
    (`absolute`) or `max(std, MIN_STD)` (`normalized`), one `q` per target.

    Args:
        method: "absolute" or "normalized".
        threshold: one calibrated score quantile per target.
        alpha, calibration_rows: as for `ConformalSet`.
    """

    def __init__(
        self, method: str, threshold: Iterable[float], alpha: float, calibration_rows: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        values = [float(v) for v in threshold]
        if not values or not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(
                f"Expected one finite, non-negative threshold per target. Received: threshold={threshold!r}"
            )
        _check(method, REGRESSION_METHODS, float(alpha), int(calibration_rows))
        self.method = method
        self.threshold = values
        self.alpha = float(alpha)
        self.calibration_rows = int(calibration_rows)

    def call(self, prediction: Tensor, std: Tensor) -> dict[str, Tensor]:
        prediction = ops.cast(prediction, "float32")
        half = ops.convert_to_tensor(self.threshold, "float32")
        if self.method == "normalized":
            half = half * ops.maximum(ops.cast(std, "float32"), MIN_STD)
        return {"interval_low": prediction - half, "interval_high": prediction + half}

    def compute_output_spec(self, prediction: Any, std: Any) -> dict[str, Any]:
        # One KerasTensor per output: a shared one would make them one graph output.
        return {
            key: keras.KerasTensor(tuple(prediction.shape), dtype="float32")
            for key in ("interval_low", "interval_high")
        }

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {
                "method": self.method,
                "threshold": list(self.threshold),
                "alpha": self.alpha,
                "calibration_rows": self.calibration_rows,
            }
        )
        return config


def conformal_config(model: keras.Model) -> dict[str, Any] | None:
    """The conformal layer's method, alpha, threshold and calibration rows; None without one."""
    for layer in model.layers:
        if isinstance(layer, (ConformalSet, ConformalInterval)):
            config = layer.get_config()
            return {key: config[key] for key in ("method", "alpha", "threshold", "calibration_rows")}
    return None
