"""Split-conformal regression intervals in the graph (`ensemble.graph.conformal` holds the sets).

`absolute` scores `|y - prediction|` (intervals of one width), `normalized` scores
`|y - prediction| / max(std, MIN_STD)` (intervals as wide as the members' spread), one threshold
per target. A row whose prediction is not finite gets NaN bounds, as its prediction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import keras
from keras import ops

from ensemble.evaluate.metrics import MIN_STD
from ensemble.types import Tensor

__all__ = ["REGRESSION_METHODS", "ConformalInterval", "check_calibration", "regression_scores"]

REGRESSION_METHODS: tuple[str, ...] = ("absolute", "normalized")


def regression_scores(method: str, targets: Tensor, prediction: Tensor, std: Tensor) -> Tensor:
    """The nonconformity score of each row and target (batch, targets)."""
    residual = ops.abs(ops.cast(targets, "float32") - ops.cast(prediction, "float32"))
    if method == "normalized":
        residual = residual / ops.maximum(ops.cast(std, "float32"), MIN_STD)
    return residual


def check_calibration(method: str, methods: tuple[str, ...], alpha: float, rows: int) -> None:
    """The checks every conformal layer makes of what it was calibrated with."""
    if method not in methods:
        raise ValueError(f"Expected method in {methods}. Received: method={method!r}")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"Expected alpha in (0, 1). Received: alpha={alpha!r}")
    if rows < 1:
        raise ValueError(f"Expected calibration_rows >= 1. Received: calibration_rows={rows!r}")


@keras.saving.register_keras_serializable(package="ensemble")
class ConformalInterval(keras.layers.Layer):
    """`interval_low`, `interval_high` (batch, targets): `prediction -/+ q * scale`, the scale 1
    (`absolute`) or `max(std, MIN_STD)` (`normalized`), one `q` per target.

    Args:
        method: "absolute" or "normalized".
        threshold: one calibrated score quantile per target.
        alpha: the miscoverage it was calibrated for (recorded, not used in the graph).
        calibration_rows: how many rows it was calibrated on (recorded).
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
        check_calibration(method, REGRESSION_METHODS, float(alpha), int(calibration_rows))
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
