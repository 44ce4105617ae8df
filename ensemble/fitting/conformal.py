"""`add_conformal`: split-conformal prediction sets (or intervals) calibrated on held-out rows and
added to the ensemble's graph as one more output; `conformal_metrics` measures them on rows.

The guarantee (Vovk et al. 2005; Angelopoulos & Bates 2021): when the calibration rows and a new
row are exchangeable, the new row's label lies in its set with probability at least `1 - alpha`.
So the calibration rows must be ones that neither a member trained on nor the combiner (or the
post-hoc calibration) was fitted on: on rows the model has fitted, its scores are too small and
its sets too tight. Members that carry a training-row record are checked with the project's
leakage guard (`check_leakage`, within its tolerance) and calibration rows they trained on are
refused; the combiner's fitting rows are not recorded on the model, so keeping them apart is the
caller's part (in the main job: calibrate on a share of the test split, never the holdout).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from ensemble.errors import EnsembleError
from ensemble.fitting.arrays import non_finite, past_float32
from ensemble.fitting.conformal_rules import (
    TUNING_SHARE,
    SetRule,
    calibrated_set,
    check_rule,
    check_share,
    conformal_quantile,
    minimum_rows,
    rows_needed,
)
from ensemble.fitting.guard import DEFAULT_ATOL, DEFAULT_RTOL, check_leakage
from ensemble.fitting.prepare import check_targets
from ensemble.graph.conformal import (
    CLASS_METHODS,
    CONFORMAL_OUTPUTS,
    REGRESSION_METHODS,
    ConformalInterval,
    ConformalSet,
    conformal_config,
    regression_scores,
)
from ensemble.graph.model import EnsembleModel
from ensemble.graph.view import EnsembleView
from ensemble.rows import row_count
from ensemble.tfdata import arrays_of
from ensemble.types import Data

__all__ = [
    "FIT_CLASS_METHODS",
    "add_conformal",
    "conformal_config",
    "conformal_quantile",
    "minimum_rows",
]

log = logging.getLogger(__name__)

FIT_CLASS_METHODS: tuple[str, ...] = ("auto", *CLASS_METHODS)
DEFAULT_CLASS_METHOD = "auto"  # the smallest sets at the coverage, deterministic (issue 27)


def add_conformal(
    model: keras.Model,
    x: Data,
    y: Any = None,
    *,
    alpha: float = 0.1,
    method: str | None = None,
    randomized: bool | None = None,
    k_reg: int | None = None,
    lambda_reg: float | None = None,
    tuning_share: float = TUNING_SHARE,
    seed: int = 0,
    allow_overlap: bool = False,
    guard_rtol: float = DEFAULT_RTOL,
    guard_atol: float = DEFAULT_ATOL,
    batch_size: int = 256,
) -> keras.Model:
    """A new model: `model`'s outputs unchanged plus split-conformal sets or intervals
    calibrated on `(x, y)` (see `ensemble.graph.conformal` for the definitions).

    Args:
        model: an ensemble from `build_ensemble` (fitted as it will be used; one that already
            has conformal outputs is calibrated again, its old ones replaced).
        x, y: calibration rows and their labels (or regression targets): held out from every
            member's training and from the combiner's fit (the module's note); or `x` a
            `tf.data.Dataset` of batches `(x, y)` and `y` None.
        alpha: the miscoverage, in (0, 1): sets hold the label with probability >= 1 - alpha.
        method: classification "auto" (None's choice), "aps", "raps", "thr"; "auto": on a seeded
            `tuning_share` of the rows, the one of THR, APS and RAPS (RAPS tuned there too)
            with the smallest mean set size at `1 - alpha`, its threshold computed on the other
            rows; regression "absolute" (None's choice: plain |y - prediction|) or
            "normalized" (|y - prediction| / std).
        randomized: randomised APS/RAPS scores and sets (sets as small as the coverage allows,
            which differ between calls, and a model that exports to a SavedModel but not to
            TFLite or ONNX); None: True for "raps", False for "auto" and "aps", so that the
            default's sets are the same on every call and export everywhere.
        k_reg, lambda_reg: RAPS's penalty `lambda_reg * max(0, rank - k_reg)`; None tunes it
            on the tuning rows as Angelopoulos et al. (2021) do (`k_reg` the 1 - alpha quantile
            of the label's rank, `lambda_reg` the size-minimising value of their grid).
        tuning_share: the share of the rows that choose the rule (`auto`, or RAPS with a
            parameter to tune); the threshold is computed on the rest alone, so coverage holds.
        seed: seeds the tuning split, the randomised calibration scores' noise and the
            layer's random stream, so calibrating again gives the same model.
        allow_overlap: calibrate even on rows a member's training-row record holds.
        guard_rtol, guard_atol: the leakage guard's tolerance.
        batch_size: rows per batch when the ensemble predicts the calibration rows.

    Returns:
        An `EnsembleModel` over the same layers (the caller's model is not modified; the two
        share the members and combiner, so refit neither after calibrating, or calibrate again)
        with `prediction_set` (batch, classes), bool, or `interval_low`, `interval_high`
        (batch, targets). Its `ConformalSet`/`ConformalInterval` layer holds the threshold and
        the chosen rule (with how it was chosen: `selection`) as constants of its config;
        `conformal_config` reads them back.
    """
    view = EnsembleView.of(model)
    x, y = arrays_of(x, y, where="add_conformal")
    if view.task == "multilabel":
        raise EnsembleError(
            "add_conformal makes a set of classes from one distribution, or an interval for "
            "regression targets; a multilabel ensemble's labels are independent probabilities, "
            "which it does not cover (per-label conformal is not supported). Received: a "
            "multilabel ensemble."
        )
    alpha = _check_alpha(alpha)
    classification = view.task == "classification"
    methods = FIT_CLASS_METHODS if classification else REGRESSION_METHODS
    method = (DEFAULT_CLASS_METHOD if classification else methods[0]) if method is None else method
    if method not in methods:
        raise EnsembleError(f"Expected method in {methods} for a {view.task} ensemble. Received: {method!r}")
    randomized = check_rule(method, randomized, k_reg, lambda_reg, classification)
    tunes = method == "auto" or (method == "raps" and (k_reg is None or lambda_reg is None))
    share = check_share(tuning_share)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise EnsembleError(f"Expected seed to be an integer. Received: seed={seed!r}")
    if len(model.output["prediction"].shape) != 2:
        raise EnsembleError(
            "add_conformal calibrates (batch, width) predictions; this ensemble predicts per "
            f"position: {tuple(model.output['prediction'].shape)}."
        )
    rows = row_count(x)
    if rows < minimum_rows(alpha):
        raise EnsembleError(
            f"alpha={alpha:g} needs at least {minimum_rows(alpha)} calibration rows (the "
            f"ceil((n+1)(1-alpha))-th smallest score must exist). Received: {rows} rows."
        )
    if tunes and rows < rows_needed(share, minimum_rows(alpha)):
        raise EnsembleError(
            f"method={method!r} chooses its rule on tuning_share={share:g} of the calibration rows "
            f"and computes the threshold on the rest, each needing {minimum_rows(alpha)} rows at "
            f"alpha={alpha:g}: at least {rows_needed(share, minimum_rows(alpha))} rows. Received: "
            f"{rows} rows. Give more rows, or a rule to use as it is (method='thr' or 'aps', or "
            "'raps' with k_reg and lambda_reg)."
        )
    targets = check_targets(view, x, y)
    for name, values in x.items() if isinstance(x, Mapping) else [("x", x)]:
        _check_finite(values, name if name == "x" else f"x[{name!r}]")
    overlaps = check_leakage(model, x, allow_overlap=True, rtol=guard_rtol, atol=guard_atol)
    leaked = {name: count for name, count in overlaps.items() if count}
    if leaked and not allow_overlap:
        raise EnsembleError(
            f"Calibration rows trained member(s) {leaked} (name: overlapping rows of {rows}, equal "
            f"within rtol={guard_rtol:g}, atol={guard_atol:g}): on them the members' scores are too "
            "small, and the sets too tight to cover 1 - alpha of new rows. Calibrate on held-out "
            "rows that no member trained on and the combiner was not fitted on, or pass "
            "allow_overlap=True if you mean it."
        )
    outputs = model.predict(x, batch_size=batch_size, verbose=0)
    _check_finite(outputs["prediction"], "The ensemble's prediction of the (finite) calibration rows")
    base = {key: value for key, value in model.output.items() if key not in CONFORMAL_OUTPUTS}
    name = _free_name(model, "conformal")
    added: dict[str, Any]
    if classification:
        rule = SetRule(method, randomized, k_reg or 0, lambda_reg or 0.0) if not tunes else None
        layer, size = calibrated_set(
            outputs["prediction"],
            np.asarray(targets),
            alpha,
            rule,
            method=method,
            randomized=randomized,
            k_reg=k_reg,
            lambda_reg=lambda_reg,
            share=share,
            seed=int(seed),
            name=name,
        )
        added = {"prediction_set": layer(base["prediction"])}
        log.info(
            "Conformal %s (randomized=%s, k_reg=%d, lambda_reg=%g) at alpha=%g on %d rows: threshold "
            "%.6g, mean set size %.3f on those rows",
            layer.method,
            layer.randomized,
            layer.k_reg,
            layer.lambda_reg,
            alpha,
            layer.calibration_rows,
            layer.threshold,
            size,
        )
    else:
        scores = regression_scores(method, targets, outputs["prediction"], outputs["std"])
        threshold = conformal_quantile(keras.ops.convert_to_numpy(scores), alpha)
        interval = ConformalInterval(method, threshold.tolist(), alpha, rows, name=name)
        added = interval(base["prediction"], base["std"])
        answered = keras.tree.map_structure(
            keras.ops.convert_to_numpy, interval(outputs["prediction"], outputs["std"])
        )
        log.info(
            "Conformal %s at alpha=%g on %d rows: threshold %s, mean width %.4g on those rows",
            method,
            alpha,
            rows,
            [f"{value:.6g}" for value in threshold],
            np.mean(answered["interval_high"] - answered["interval_low"]),
        )
    return EnsembleModel(inputs=model.input, outputs={**base, **added}, name=model.name)


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)):
        raise EnsembleError(f"Expected alpha to be a number in (0, 1). Received: alpha={alpha!r}")
    if not (0.0 < float(alpha) < 1.0):
        raise EnsembleError(f"Expected alpha in (0, 1), the miscoverage. Received: alpha={alpha!r}")
    return float(alpha)


def _check_finite(values: Any, what: str) -> None:
    """An error naming the rows of `values` that are NaN, infinite, or past float32's range
    (infinite in the float32 graph: `non_finite`)."""
    array = np.asarray(values)
    bad = non_finite(array).reshape(len(array), -1).any(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        wide = past_float32(array)
        note = f" ({wide} finite {array.dtype} value(s) past float32's range among them)" if wide else ""
        raise EnsembleError(
            f"{what} holds NaN or infinite values in {len(rows)} row(s) of {len(array)} (first "
            f"rows {rows[:5].tolist()}){note}: conformal calibration needs finite rows; drop them first."
        )


def _free_name(model: keras.Model, stem: str) -> str:
    """`stem`, or `stem_<n>`, unused by the layers `model` keeps (its old conformal layer aside)."""
    taken = {layer.name for layer in model.layers if not isinstance(layer, (ConformalSet, ConformalInterval))}
    name, number = stem, 1
    while name in taken:
        number += 1
        name = f"{stem}_{number}"
    return name
