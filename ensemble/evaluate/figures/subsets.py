"""The configured combiner refitted on a subset of the members, for the ensemble-size curve.

`configured_combine` turns a `FitReport` (the fitting rows' level-one predictions and targets,
how the combiner was fitted) and the combiner into `combine(member_indices)`: that combiner
fitted again, the way the report says it was, on those members' fitting-row predictions only,
then applied to their predictions of the scored rows; `calibrated_mean` does the same for the
plain mean temperature-scaled on the fitting rows, the reference fitted as the ensemble is
(`fitted_on_rows`). Public fitting functions only; nothing in the model changes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from sklearn.linear_model import Ridge

from combiners import MeanCombiner, StackingCombiner, VoteCombiner
from combiners.base import Combiner
from combiners.vote import exact_vote_weights
from ensemble.evaluate.figures.checks import FloatArray, IntArray
from ensemble.evaluate.metrics import classification_metrics, regression_metrics
from ensemble.fitting.selection import ensemble_selection, optimal_weights
from ensemble.fitting.stacker import Stacker, fit_stacker
from ensemble.fitting.stacker_choice import cross_validated_stacker
from ensemble.fitting.temperature import calibrated, fit_scaling, fit_weights_and_temperature

if TYPE_CHECKING:
    from ensemble.evaluate.figures.ensemble_size import Combine
    from ensemble.fitting.pipeline import FitReport

__all__ = ["calibrated_mean", "configured_combine", "fitted_on_rows", "fitting_order", "temperature_scaled"]

log = logging.getLogger(__name__)

Fitted = tuple[FloatArray, FloatArray]  # (fitting rows' prediction, scored rows' prediction)


def fitting_order(report: FitReport) -> IntArray:
    """The members by their own score on the fitting rows, best first: NLL (RMSE for
    regression) of each member alone on `report.level_one` against `report.targets`, ties to
    the lower index. The order of single-member scores, not a greedy one, so that it is the
    same order whatever the combiner (the plain mean's curve and the combiner's share it)."""
    level_one = np.asarray(report.level_one, dtype="float64")
    if report.task == "classification":
        scores = [
            classification_metrics(report.targets, level_one[:, m])["nll"] for m in range(level_one.shape[1])
        ]
    else:
        scores = [
            regression_metrics(report.targets, level_one[:, m])["rmse"] for m in range(level_one.shape[1])
        ]
    return np.argsort(scores, kind="stable").astype(np.int64)


def fitted_on_rows(report: FitReport) -> bool:
    """Whether the ensemble learned anything on the fitting rows (a fit method, or a post-hoc
    calibration): then its like-for-like baselines are calibrated on those rows too, as
    `evaluate_ensemble` records them; otherwise (fixed weights, uncalibrated) raw ones."""
    return report.method != "none" or report.calibration is not None


def temperature_scaled(fitting: Any, labels: Any, scored: Any) -> FloatArray:
    """`scored` (rows, classes) after the temperature fitted on `fitting` against `labels` (the
    fitting rows, `fit_scaling`): a baseline calibrated as `evaluate_ensemble` calibrates it.
    Where no positive temperature fits, `scored` as it is (so does `evaluate_ensemble`)."""
    probabilities: FloatArray = np.asarray(scored, dtype=np.float64)
    try:
        scaling = fit_scaling(fitting, np.asarray(labels).reshape(-1).astype("int64"), method="temperature")
    except ValueError as error:
        log.info("No positive temperature on the fitting rows, left unscaled: %s", error)
        return probabilities
    return np.asarray(calibrated(probabilities, scaling), dtype=np.float64)


def calibrated_mean(report: FitReport, member_predictions: Any) -> Combine:
    """`mean(member_indices)`: the plain mean of those members' `member_predictions` (rows,
    members, classes) temperature-scaled on their mean of the fitting rows (`report.level_one`),
    the ensemble-size curve's reference when the ensemble was fitted (`fitted_on_rows`). With
    every member, the calibrated mean `evaluate_ensemble` scores."""
    level_one = np.asarray(report.level_one, dtype="float64")
    scored = np.asarray(member_predictions, dtype="float64")

    def mean(indices: IntArray) -> FloatArray:
        idx = np.asarray(indices, dtype=np.int64)
        return temperature_scaled(level_one[:, idx].mean(1), report.targets, scored[:, idx].mean(1))

    return mean


def configured_combine(
    report: FitReport, combiner: Combiner, member_predictions: Any
) -> tuple[Combine, str] | None:
    """`(combine, label)`, `combine(indices)` the configured combiner refitted on the members
    `indices` and applied to `member_predictions` (rows, members, width) of the scored rows;
    None (logged) for a combiner this cannot refit: a Keras-trained or custom meta-model, or a
    stacker that reads the raw features (the report keeps no rows).

    How each is refitted (the ensemble's own fit with every member, when indices are all):
    - `MeanCombiner` / `VoteCombiner` fitted with `method="none"`: their weights restricted to
      the subset and renormalised (uniform if None); a hard vote is tallied as the graph does
      (`exact_vote_weights`); a subset whose weights are all 0 is undefined (None).
    - `MeanCombiner` with `selection` / `optimal`: `ensemble_selection` (the report's `rounds`) /
      `optimal_weights` on the subset's fitting rows; with a joint temperature,
      `fit_weights_and_temperature` from the optimal weights.
    - default `StackingCombiner` (`sklearn`), on the subset's `meta_features` of the fitting
      rows, at the C (alpha) the full fit chose, not cross-validated again per subset: the
      calibrated pool then the stacker around it (`ensemble.fitting.stacker`), or for a
      scikit-learn fit `LogisticRegression`; regression: `Ridge` on the residual of the
      subset's pool (the plain mean, or least squares on the simplex, as the full fit's).
    - a post-hoc calibration in the report (temperature or vector) is fitted again on the
      subset's combined fitting rows (`fit_scaling`) and applied.
    """
    level_one = np.asarray(report.level_one, dtype="float64")
    scored = np.asarray(member_predictions, dtype="float64")
    method, name = report.method, type(combiner).__name__
    fitters: dict[str, Callable[[IntArray], Fitted | None]] = {}
    if isinstance(combiner, MeanCombiner | VoteCombiner) and method == "none":
        hard = isinstance(combiner, VoteCombiner) and combiner.voting == "hard"
        weights = combiner.member_weights
        fitters[method] = lambda idx: _fixed_weights(level_one, scored, idx, weights, hard=hard)
        label = f"{name} ({'hard vote' if hard else 'weights renormalised'})"
    elif isinstance(combiner, MeanCombiner) and method in ("selection", "optimal"):
        rounds = int(report.options.get("rounds", 50))
        fitters[method] = lambda idx: _learned_weights(report, level_one, scored, idx, method, rounds)
        label = f"{name} ({method} refitted)"
    elif isinstance(combiner, StackingCombiner) and method == "sklearn" and not combiner.needs_features:
        fitters[method] = lambda idx: _stacking(report, combiner, level_one, scored, idx)
        label = f"{name} (meta-model refitted)"
    else:
        log.info(
            "Ensemble-size curve: %s fitted by %r is not refitted per subset; plain mean only", name, method
        )
        return None
    joint = method == "optimal" and (report.calibration or {}).get("method") == "temperature"
    calibration = None if joint else report.calibration
    fit = fitters[method]

    def combine(indices: IntArray) -> FloatArray | None:
        with _fallbacks_quiet():  # the fit of the full ensemble said them once
            fitted = fit(np.asarray(indices, dtype=np.int64))
        if fitted is None or calibration is None:
            return None if fitted is None else fitted[1]
        try:
            scaling = fit_scaling(fitted[0], report.targets, method=calibration["method"])
        except ValueError as error:  # a subset without signal has no positive temperature
            log.info("Ensemble-size curve: no calibration for members %s: %s", list(indices), error)
            return None
        return np.asarray(calibrated(fitted[1], scaling), dtype=np.float64)

    if calibration is not None or joint:
        label += f", {(report.calibration or {})['method']} scaling refitted"
    return combine, label


@contextlib.contextmanager
def _fallbacks_quiet() -> Iterator[None]:
    """The stacker's fallback warnings off while the curve refits it on the same rows per size."""
    logger = logging.getLogger("ensemble.fitting.stacker_choice")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fixed_weights(
    level_one: FloatArray, scored: FloatArray, idx: IntArray, weights: list[float] | None, *, hard: bool
) -> Fitted | None:
    w = np.ones(len(idx)) if weights is None else np.asarray(weights, dtype="float64")[idx]
    if w.sum() <= 0:
        return None
    if hard:
        integers = exact_vote_weights([float(v) for v in w], len(idx))
        w = w if integers is None else np.asarray(integers, dtype="float64")
        return _vote_shares(level_one[:, idx], w), _vote_shares(scored[:, idx], w)
    return _mean(level_one[:, idx], w), _mean(scored[:, idx], w)


def _learned_weights(
    report: FitReport, level_one: FloatArray, scored: FloatArray, idx: IntArray, method: str, rounds: int
) -> Fitted:
    subset, task = level_one[:, idx], report.task
    if method == "selection":
        w = ensemble_selection(subset, report.targets, task=task, rounds=rounds)
    else:
        w = optimal_weights(subset, report.targets, task=task)
        if (report.calibration or {}).get("method") == "temperature":
            w, scaling = fit_weights_and_temperature(subset, report.targets, start=w)
            return calibrated(_mean(subset, w), scaling), calibrated(_mean(scored[:, idx], w), scaling)
    return _mean(subset, w), _mean(scored[:, idx], w)


def _stacking(
    report: FitReport, combiner: StackingCombiner, level_one: FloatArray, scored: FloatArray, idx: IntArray
) -> Fitted:
    features = [_meta_features(combiner, rows[:, idx]) for rows in (level_one, scored)]
    fitted = report.fitted
    if report.task == "classification":
        labels = np.asarray(report.targets, dtype=np.int64)
        if fitted.cv_nll is None:  # a given C: the regression shrunk toward zero at that C
            classes = level_one.shape[-1]
            zero = np.zeros((features[0].shape[1], classes))
            kernel, bias = fit_stacker(features[0], np.eye(classes)[labels], zero, float(fitted.C))
            refitted = Stacker(kernel, bias, "zero", float(fitted.C), None)
        else:  # the cross-validated choice, made again among these members
            log_p = features[0].reshape(len(features[0]), len(idx), -1)
            refitted = cross_validated_stacker(features[0], log_p, labels)
        return refitted.predict_proba(features[0]), refitted.predict_proba(features[1])
    # Ridge on the residual of the members' plain mean, as the full fit shrinks toward it.
    alpha = float(np.ravel(getattr(fitted, "alpha_", getattr(fitted, "alpha", 1.0)))[0])
    subset = level_one[:, idx]
    targets = np.reshape(report.targets, subset[:, 0].shape)
    pool = np.ones(len(idx))
    means = [_mean(subset, pool), _mean(scored[:, idx], pool)]
    ridge = Ridge(alpha=alpha).fit(features[0], targets - means[0])
    fit_rows, scored_rows = (
        mean + np.reshape(ridge.predict(f), mean.shape) for mean, f in zip(means, features, strict=True)
    )
    return fit_rows, scored_rows


def _meta_features(combiner: StackingCombiner, predictions: FloatArray) -> FloatArray:
    """What the stacker's meta-model sees for these members (`StackingCombiner.meta_features`)."""
    features = combiner.meta_features(predictions.astype("float32"))
    return np.asarray(keras.ops.convert_to_numpy(features), dtype="float64")


def _mean(predictions: FloatArray, weights: Any) -> FloatArray:
    w = np.asarray(weights, dtype="float64")
    return np.asarray(np.einsum("rm...,m->r...", predictions, w / w.sum()), dtype=np.float64)


def _vote_shares(probabilities: FloatArray, weights: FloatArray) -> FloatArray:
    """Weighted hard-vote shares; a member's own tie goes to the lowest class (`np.argmax`)."""
    votes = np.eye(probabilities.shape[-1])[probabilities.argmax(-1)]  # (rows, members, classes)
    tally = np.einsum("rmc,m->rc", votes, weights)
    return np.asarray(tally / tally.sum(-1, keepdims=True), dtype=np.float64)
