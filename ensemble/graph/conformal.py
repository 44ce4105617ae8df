"""Split-conformal outputs in the graph: a prediction set per row (classification) or an interval
per target (regression, `ensemble.graph.conformal_interval`), each from a threshold calibrated on
held-out rows and kept as a constant of the layer's config, so every export carries it.

Classification scores (higher = less conforming) for the probabilities `p` of a row and a class
`c` of rank `o` (1-based; probabilities sorted descending, ties by the lower class index first),
`m` the mass of the classes ranked above `c`, `u` one Uniform(0, 1) draw per row:

- `thr` (Sadinle, Lei & Wasserman 2019, MAPIE's "lac"): `1 - p_c`; the set is every class with
  `1 - p_c <= q`. It may be empty. Of sets built on `p`, the smallest on average.
- `aps` (Romano, Sesia & Candès 2020): `m + p_c` (not randomised) or `m + u * p_c` (randomised);
- `raps` (Angelopoulos et al. 2021): the APS score plus `lambda_reg * max(0, o - k_reg)`, which
  makes the classes past the `k_reg` likeliest costly, so the sets stay small.

A randomised set is every class whose randomised score is `<= q` (the same `u` for each class of
a row, a fresh `u` per row and per call): coverage is `1 - alpha` up to `1/(n + 1)`, and the set
may be empty. Two calls on the same row may give different sets (as MAPIE's "randomized"); so a
randomised layer exports to a SavedModel (and the registry) but not to TFLite or ONNX, whose
converters refuse its random op and seed state (the error names them): export a non-randomised
set there. A non-randomised APS/RAPS set keeps, beyond every class whose score is `<= q`, the one
that crosses `q` (MAPIE's `include_last_label=True`): never empty on a finite row, it over-covers
by up to the crossing class's share, badly for underconfident members (trained with label
smoothing, say), which is why `add_conformal(method="auto")` chooses among the randomised ones.

A row whose prediction is not finite (the graph's `NonFiniteRows` makes every output NaN on a
row with a non-finite input) gets an all-False set, never a confident one: no class is offered,
and the row counts as not covered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from ensemble.graph.conformal_interval import (
    REGRESSION_METHODS,
    ConformalInterval,
    check_calibration,
    regression_scores,
)
from ensemble.types import Tensor

__all__ = [
    "CLASS_METHODS",
    "CONFORMAL_OUTPUTS",
    "REGRESSION_METHODS",
    "ConformalInterval",
    "ConformalSet",
    "class_scores",
    "class_sets",
    "conformal_config",
    "regression_scores",
]

CLASS_METHODS: tuple[str, ...] = ("aps", "raps", "thr")
CONFORMAL_OUTPUTS: tuple[str, ...] = ("prediction_set", "interval_low", "interval_high")


def _ranked(p: Tensor, k_reg: int, lambda_reg: float) -> tuple[Tensor, Tensor, Tensor]:
    """`(sorted probabilities, the mass ranked above each plus its RAPS penalty, each class's
    0-based rank)`, each (batch, classes): a class's APS/RAPS score is `start + u * p_c`."""
    classes = p.shape[-1]
    ordered, order = ops.top_k(p, k=classes, sorted=True)  # stable on ties
    start = ops.pad(ops.cumsum(ordered, axis=-1)[:, :-1], ((0, 0), (1, 0)))
    if lambda_reg:  # lambda_reg * max(0, o - k_reg) for the 1-based ranks o
        ranks = ops.arange(1, classes + 1, dtype="float32")
        start = start + ops.multiply(lambda_reg, ops.maximum(ranks - float(k_reg), 0.0))
    return ordered, start, ops.argsort(order, axis=-1)


def _own(ordered: Tensor, noise: Tensor | None) -> Tensor:
    """A class's own share of its score: `p_c`, or `u * p_c` with one `u` per row."""
    return ordered if noise is None else ops.reshape(ops.cast(noise, "float32"), (-1, 1)) * ordered


def class_scores(
    method: str,
    probabilities: Tensor,
    labels: Tensor,
    *,
    noise: Tensor | None = None,
    k_reg: int = 0,
    lambda_reg: float = 0.0,
) -> Tensor:
    """The nonconformity score of each row's label (batch,), by the same ops as the set.

    `noise`: one Uniform(0, 1) value per row for a randomised APS/RAPS score (seeded by the
    caller, so calibration is reproducible); None for the non-randomised score.
    """
    p = ops.cast(probabilities, "float32")
    labels = ops.reshape(ops.cast(labels, "int32"), (-1, 1))
    if method == "thr":
        return ops.squeeze(ops.take_along_axis(1.0 - p, labels, axis=-1), -1)
    ordered, start, rank = _ranked(p, k_reg, lambda_reg if method == "raps" else 0.0)
    position = ops.take_along_axis(rank, labels, axis=-1)
    scores = start + _own(ordered, noise)
    return ops.squeeze(ops.take_along_axis(scores, position, axis=-1), -1)


def class_sets(
    method: str,
    probabilities: Tensor,
    threshold: float,
    *,
    noise: Tensor | None = None,
    k_reg: int = 0,
    lambda_reg: float = 0.0,
) -> Tensor:
    """The prediction set (batch, classes) of booleans for threshold `q` (the module's rules):
    randomised with `noise` (one Uniform(0, 1) value per row), all False on a non-finite row."""
    p = ops.cast(probabilities, "float32")
    q = ops.convert_to_tensor(threshold, "float32")
    finite = ops.all(ops.isfinite(p), axis=-1, keepdims=True)
    if method == "thr":
        return ops.logical_and(ops.less_equal(1.0 - p, q), finite)
    p = ops.where(finite, p, ops.zeros_like(p))  # a NaN must not reach the sort
    ordered, start, rank = _ranked(p, k_reg, lambda_reg if method == "raps" else 0.0)
    within = ops.less_equal(start + _own(ordered, noise), q)
    if noise is None:  # and the class that crosses q: its score with u = 0 is below q
        within = ops.logical_or(within, ops.less(start, q))
    # Every score rises with the rank (p_c >= u * p_c, the penalty grows), so the chosen
    # classes are the top `count`.
    count = ops.sum(ops.cast(within, "int32"), axis=-1, keepdims=True)
    return ops.logical_and(ops.less(rank, count), finite)


@keras.saving.register_keras_serializable(package="ensemble")
class ConformalSet(keras.layers.Layer):
    """The conformal prediction set (batch, classes) of booleans for class probabilities.

    Args:
        method: "aps", "raps" or "thr" (the module's definitions).
        threshold: the calibrated score quantile `q` (a float32 value).
        alpha: the miscoverage it was calibrated for (recorded, not used in the graph).
        calibration_rows: how many rows the threshold was computed on (recorded).
        randomized: draw one Uniform(0, 1) per row and call (APS and RAPS only): sets as small
            as the coverage allows, which may differ between calls and be empty.
        k_reg, lambda_reg: RAPS's penalty `lambda_reg * max(0, rank - k_reg)`.
        seed: the seed of the layer's random stream (randomised sets; None: an arbitrary one).
        selection: how `add_conformal` chose the method and its parameters (recorded).
    """

    def __init__(
        self,
        method: str,
        threshold: float,
        alpha: float,
        calibration_rows: int,
        randomized: bool = False,
        k_reg: int = 0,
        lambda_reg: float = 0.0,
        seed: int | None = None,
        selection: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        threshold = float(threshold)
        if not math.isfinite(threshold):
            raise ValueError(f"Expected a finite threshold. Received: threshold={threshold}")
        check_calibration(method, CLASS_METHODS, float(alpha), int(calibration_rows))
        if randomized and method == "thr":
            raise ValueError("Expected randomized=False for method='thr' (its score has no tie to break).")
        if isinstance(k_reg, bool) or int(k_reg) != k_reg or k_reg < 0:
            raise ValueError(f"Expected k_reg, a whole number >= 0. Received: k_reg={k_reg!r}")
        if not (math.isfinite(float(lambda_reg)) and float(lambda_reg) >= 0):
            raise ValueError(
                f"Expected lambda_reg, a finite number >= 0. Received: lambda_reg={lambda_reg!r}"
            )
        if method != "raps" and (k_reg or lambda_reg):
            raise ValueError(f"k_reg and lambda_reg are RAPS's. Received them for method={method!r}.")
        self.method = method
        self.threshold = threshold
        self.alpha = float(alpha)
        self.calibration_rows = int(calibration_rows)
        self.randomized = bool(randomized)
        self.k_reg = int(k_reg)
        self.lambda_reg = float(lambda_reg)
        self.seed = None if seed is None else int(seed)
        self.selection = None if selection is None else dict(selection)
        # Only a randomised layer holds a random stream: the others stay free of state and of
        # random ops, so TFLite and ONNX take them.
        self.seed_generator = keras.random.SeedGenerator(self.seed) if self.randomized else None

    def call(self, probabilities: Tensor) -> Tensor:
        noise = None
        if self.seed_generator is not None:
            rows = ops.shape(probabilities)[0]
            noise = keras.random.uniform((rows, 1), seed=self.seed_generator)
        return class_sets(
            self.method,
            probabilities,
            self.threshold,
            noise=noise,
            k_reg=self.k_reg,
            lambda_reg=self.lambda_reg,
        )

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
                "randomized": self.randomized,
                "k_reg": self.k_reg,
                "lambda_reg": self.lambda_reg,
                "seed": self.seed,
                "selection": self.selection,
            }
        )
        return config


_RECORDED = ("method", "alpha", "threshold", "calibration_rows")
_SET_RECORDED = ("randomized", "k_reg", "lambda_reg", "selection")


def conformal_config(model: keras.Model) -> dict[str, Any] | None:
    """The conformal layer's method, alpha, threshold and calibration rows (for sets also
    `randomized`, `k_reg`, `lambda_reg` and the `selection` that chose them); None without one."""
    for layer in model.layers:
        if isinstance(layer, (ConformalSet, ConformalInterval)):
            config = layer.get_config()
            keys = _RECORDED + (_SET_RECORDED if isinstance(layer, ConformalSet) else ())
            return {key: config[key] for key in keys}
    return None
