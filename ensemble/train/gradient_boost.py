"""Gradient boosting of Keras regressors on their residuals (Friedman 2001, squared error, as
scikit-learn's `GradientBoostingRegressor`): `F_0` is the mean of the targets (per target), round
`m` fits a fresh learner `h_m` to the residuals `y - F_{m-1}(x)` and `F_m = F_{m-1} +
learning_rate * h_m`. The ensemble is the members under an `AdditiveCombiner` (the bias `F_0`,
each member weighed by the learning rate).

A seeded `validation_fraction` of the rows trains nothing: it scores each round for early
stopping (`n_iter_no_change`, as scikit-learn: stop when the held-out squared error has not
improved for that many rounds; the members up to the best round are kept) and gives the
ensemble's `std`, the RMS residual of the boosted prediction on those rows, per target (a
homoscedastic predictive scale, the same for every row; the members' spread says nothing
about residual learners).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from combiners import AdditiveCombiner
from ensemble.errors import EnsembleError
from ensemble.graph.build import build_ensemble
from ensemble.members.member import Member
from ensemble.rows import flat_features, row_count, take_rows
from ensemble.train.members import check_finite_rows, compiled, trained_member
from ensemble.types import REGRESSION

__all__ = ["gradient_boost"]

log = logging.getLogger(__name__)

DEFAULT_LEARNING_RATE = 0.1  # scikit-learn's


def gradient_boost(
    build_fn: Callable[[int], keras.Model],
    x: Any,
    y: Any,
    *,
    rounds: int,
    learning_rate: float | None = None,
    validation_fraction: float = 0.1,
    n_iter_no_change: int | None = None,
    seed: int = 0,
    **fit_options: Any,
) -> keras.Model:
    """A gradient-boosted regression ensemble of `rounds` Keras members at most (see the module).

    Args:
        build_fn: `build_fn(round)` returns a fresh Keras regressor emitting one value per
            target; an uncompiled one is compiled with Adam and squared error.
        x, y: the rows and their float targets, `(rows,)` or `(rows, targets)`.
        rounds: the most members to train.
        learning_rate: shrinks each member; None: 0.1 (scikit-learn's default).
        validation_fraction: the share of rows held out (drawn with `seed`): they train no
            member, they score the rounds for early stopping and give the `std` output.
        n_iter_no_change: stop when the held-out squared error has not improved for this many
            rounds, keeping the members up to the best one; None: train every round.
        seed: draws the held-out rows.
        **fit_options: passed to each member's `fit` (epochs, batch_size, verbose, callbacks).

    Returns:
        `build_ensemble(members, AdditiveCombiner(weights, bias, residual_std))`: member m is
        `boost_<m>`, its training-row record the rows it trained on (every row not held out).
    """
    rate = DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate
    targets, fit_rows, held_rows = _checked(x, y, rounds, rate, validation_fraction, n_iter_no_change, seed)
    if "sample_weight" in fit_options:
        raise EnsembleError("boost: gradient boosting takes no sample_weight; pass none in fit_options.")
    x_fit, x_held = take_rows(x, fit_rows), take_rows(x, held_rows)
    y_fit, y_held = targets[fit_rows], targets[held_rows]
    bias = y_fit.mean(axis=0)
    fitted, held = np.broadcast_to(bias, y_fit.shape).copy(), np.broadcast_to(bias, y_held.shape).copy()
    members: list[Member] = []
    on_held_rows: list[np.ndarray] = []
    losses: list[float] = []
    for index in range(rounds):
        model, _ = compiled(build_fn(index), REGRESSION)
        width = int(np.prod(np.shape(model(take_rows(x, np.arange(1)), training=False))[1:]))
        if width != targets.shape[1]:
            raise EnsembleError(
                f"boost: the learner of round {index} emits {width} values per row; y has "
                f"{targets.shape[1]} targets."
            )
        model.fit(x_fit, (y_fit - fitted).astype("float32"), **fit_options)
        try:
            member = trained_member(model, f"boost_{index}", x_fit, REGRESSION)
        except EnsembleError as error:  # non-finite weights: a diverged run
            raise EnsembleError(f"boost: the member of round {index} is not usable: {error}") from error
        on_fit = _predictions(member, x_fit, index, "its training rows")
        on_held = _predictions(member, x_held, index, "the held-out rows")
        fitted, held = fitted + rate * on_fit, held + rate * on_held
        members.append(member)
        on_held_rows.append(on_held)
        losses.append(float(np.mean((y_held - held) ** 2)))
        log.info("Gradient boosting round %d: held-out squared error %.6g", index, losses[-1])
        best = int(np.argmin(losses))
        if n_iter_no_change is not None and index - best >= n_iter_no_change:
            log.info("Gradient boosting stops at round %d; the best round was %d.", index, best)
            break
    best = int(np.argmin(losses)) if n_iter_no_change is not None else len(members) - 1
    members = members[: best + 1]
    residual = y_held - bias - rate * np.sum(on_held_rows[: best + 1], axis=0)
    residual_std = np.sqrt(np.mean(residual**2, axis=0))
    combiner = AdditiveCombiner(
        weights=[rate] * len(members), bias=bias.tolist(), residual_std=residual_std.tolist()
    )
    return build_ensemble(members, combiner, task=REGRESSION)


def _checked(
    x: Any,
    y: Any,
    rounds: int,
    rate: float,
    fraction: float,
    n_iter_no_change: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The targets as `(rows, targets)` float64, and the fit and held-out row indices."""
    if rounds < 1 or not rate > 0 or not math.isfinite(rate):
        raise EnsembleError(f"Expected rounds >= 1 and learning_rate > 0. Received: {rounds}, {rate}")
    if n_iter_no_change is not None and n_iter_no_change < 1:
        raise EnsembleError(f"Expected n_iter_no_change >= 1 or None. Received: {n_iter_no_change}")
    rows = row_count(x)
    targets = np.asarray(y, dtype="float64")
    if targets.ndim not in (1, 2) or len(targets) != rows:
        raise EnsembleError(
            f"boost: expected targets of shape ({rows},) or ({rows}, targets). Received: {targets.shape}"
        )
    targets = targets.reshape(rows, -1)
    check_finite_rows(flat_features(x), "boost: x")
    check_finite_rows(targets, "boost: y")
    if not 0 < fraction < 1:
        raise EnsembleError(f"Expected 0 < validation_fraction < 1. Received: {fraction}")
    held_count = math.ceil(fraction * rows)  # as scikit-learn's train_test_split
    if held_count < 1 or rows - held_count < 1:
        raise EnsembleError(
            f"boost: validation_fraction={fraction} of {rows} rows leaves {held_count} held out and "
            f"{rows - held_count} to train on; both need at least one row."
        )
    held = np.zeros(rows, dtype=bool)
    held[np.random.default_rng(seed).permutation(rows)[:held_count]] = True
    return targets, np.flatnonzero(~held), np.flatnonzero(held)


def _predictions(member: Member, x: Any, index: int, what: str) -> np.ndarray:
    values = np.asarray(member.predict(x, verbose=0), dtype="float64")
    values = values.reshape(len(values), -1)
    if not np.isfinite(values).all():
        raise EnsembleError(f"boost: the member of round {index} predicts non-finite values on {what}.")
    return values
