"""Ensembles that train their own members: `boost` (SAMME, Zhu et al. 2009, for integer labels;
gradient boosting for float targets, `ensemble.train.gradient_boost`) and `bag`
(bootstrap members, Breiman 1996). Each returns ONE ensemble graph from `build_ensemble`, so it
fits, exports and serves like any other, and each member carries the record of the rows that
trained it, so the leakage guard refuses to fit a combiner on them.

`boost` trains a member per round on sample-weighted rows (Keras' `sample_weight`), weighs it
`alpha = learning_rate * (log((1 - err) / err) + log(K - 1))` by its weighted error `err`,
and raises the weight of the rows it got wrong by `exp(alpha)`. The ensemble is the members
under a hard vote weighted by their alphas: SAMME's `argmax_k sum_m alpha_m [h_m(x) = k]`, with K
the number of classes in `y` (as scikit-learn counts it).
As scikit-learn's `AdaBoostClassifier`, it stops early at a member with no error (weighed 1)
and refuses a member no better than chance (`err >= 1 - 1/K`), which ends the rounds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from combiners import MeanCombiner, VoteCombiner
from combiners.base import Combiner
from ensemble.errors import EnsembleError
from ensemble.graph.build import build_ensemble
from ensemble.members.member import Member
from ensemble.rows import row_count, take_rows
from ensemble.train.gradient_boost import gradient_boost
from ensemble.train.members import (
    check_finite_x,
    check_labels,
    checked_targets,
    compiled,
    output_width,
    trained_member,
)
from ensemble.types import CLASSIFICATION, Task

__all__ = ["BuildFn", "bag", "boost"]

log = logging.getLogger(__name__)

BuildFn = Callable[[int], keras.Model]  # the member of round (or bag) i, compiled or not


def boost(
    build_fn: BuildFn,
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
    """A boosted ensemble of `rounds` Keras members at most: SAMME for integer class labels,
    gradient boosting on residuals for float targets (`ensemble.train.gradient_boost`).

    Args:
        build_fn: `build_fn(round)` returns a fresh Keras classifier (softmax probabilities or
            logits) or regressor; an uncompiled one is compiled with Adam and its cross entropy
            (squared error for a regressor).
        x, y: the training rows and their integer class labels or float targets.
        rounds: the most members to train.
        learning_rate: shrinks each member's alpha (SAMME) or each member (gradient boosting);
            None: 1.0 for SAMME (as published), 0.1 for gradient boosting (as scikit-learn).
        validation_fraction, n_iter_no_change, seed: gradient boosting only: the share of rows
            held out (drawn with `seed`) for early stopping after `n_iter_no_change` rounds
            without improvement (None: never) and for the `std` output (their RMS residual).
        **fit_options: passed to each member's `fit` (epochs, batch_size, verbose, callbacks).

    Returns:
        SAMME: `build_ensemble(members, VoteCombiner("hard", weights=alphas))`;
        `combiner.member_weights` holds the alphas. Gradient boosting:
        `build_ensemble(members, AdditiveCombiner(...))`.

    Raises:
        EnsembleError: for a row of x that is not finite (NaN, infinite, or float64 past
            float32's range; named before anything trains), labels that are not integer
            classes, a bad round count or learning rate, or a first member no better than chance.
    """
    check_finite_x(x, "boost")  # before any round trains (float64 past float32's range too)
    labels = np.asarray(y)
    if np.issubdtype(labels.dtype, np.floating):
        return gradient_boost(
            build_fn, x, y, rounds=rounds, learning_rate=learning_rate, n_iter_no_change=n_iter_no_change,
            validation_fraction=validation_fraction, seed=seed, **fit_options,
        )  # fmt: skip
    learning_rate = 1.0 if learning_rate is None else learning_rate
    # Not float targets: class labels for SAMME (strings, say, are refused with what to do).
    rows = row_count(x)
    labels = check_labels(labels, rows, "boost")
    if rounds < 1 or not learning_rate > 0:
        raise EnsembleError(
            f"Expected rounds >= 1 and learning_rate > 0. Received: {rounds}, {learning_rate}"
        )
    if "sample_weight" in fit_options:
        raise EnsembleError("boost sets each member's sample_weight itself; pass none in fit_options.")
    classes = len(np.unique(labels))  # K, as scikit-learn's AdaBoostClassifier counts it
    if classes < 2:
        raise EnsembleError(f"boost needs at least two classes in y. Received: {np.unique(labels).tolist()}")
    weights = np.full(rows, 1.0 / rows)
    members: list[Member] = []
    alphas: list[float] = []
    for index in range(rounds):
        model, _ = compiled(build_fn(index), CLASSIFICATION)
        width = output_width(model, x)
        check_labels(labels, rows, "boost", width, columns=f"the learner's output (it emits {width} classes)")
        model.fit(x, labels, sample_weight=weights * rows, **fit_options)
        member = trained_member(model, f"boost_{index}", x, CLASSIFICATION)
        probabilities = np.asarray(member.predict(x, verbose=0))
        wrong = probabilities.argmax(-1) != labels
        error = float(np.sum(weights[wrong]) / np.sum(weights))
        log.info("Boosting round %d: weighted error %.4f", index, error)
        if error >= 1 - 1 / classes:
            if not members:
                raise EnsembleError(
                    f"Boosting round 0: the member's weighted error {error:.3f} is no better than chance "
                    f"({1 - 1 / classes:.3f} for {classes} classes); make the learner stronger."
                )
            log.info("Boosting stops at round %d: its member is no better than chance.", index)
            break
        members.append(member)
        if error <= 0:  # perfect on its rows: weighed 1, nothing left to boost (as sklearn)
            alphas.append(1.0)
            break
        alpha = learning_rate * (np.log((1 - error) / error) + np.log(classes - 1))
        alphas.append(float(alpha))
        weights = weights * np.exp(alpha * wrong)
        weights /= weights.sum()
    return build_ensemble(members, VoteCombiner(voting="hard", weights=alphas))


def bag(
    build_fn: BuildFn,
    x: Any,
    y: Any,
    *,
    members: int,
    seed: int = 0,
    combiner: Combiner | None = None,
    task: Task | None = None,
    **fit_options: Any,
) -> keras.Model:
    """An ensemble of `members` Keras models, each trained on a bootstrap sample of `x, y`.

    Args:
        build_fn: `build_fn(i)` returns a fresh Keras model (compiled or not: an uncompiled
            classifier gets Adam and its cross entropy, a regressor Adam and squared error).
        x, y: the training rows and their labels (class integers) or targets.
        members: how many bootstrap members to train.
        seed: draws the bootstrap samples (rows with replacement, as many as `x` has).
        combiner: combines them; default `MeanCombiner()` (the bagged mean).
        task: "classification" or "regression"; None: classification behind a final softmax,
            else regression (pass "classification" for members that emit logits).
        **fit_options: passed to each member's `fit`.

    Returns:
        `build_ensemble(members, combiner, task=task)`; member i is named `bag_<i>` and its
        training-row record holds its bootstrap rows.
    """
    if members < 1:
        raise EnsembleError(f"Expected members >= 1. Received: {members}")
    rows = row_count(x)
    check_finite_x(x, "bag")  # before any member trains (float64 past float32's range too)
    first, kind = compiled(build_fn(0), task)
    classes = output_width(first, x) if kind == CLASSIFICATION else None
    targets = checked_targets(y, rows, kind, "bag", classes)  # before anything trains
    loss = getattr(first, "loss", None)
    if targets.ndim == 2 and kind == CLASSIFICATION and "sparse" in str(getattr(loss, "name", loss)):
        raise EnsembleError(
            f"bag: y holds rows of class probabilities (one-hot), but the learner is compiled with "
            f"a sparse loss ({getattr(loss, 'name', loss)}) that takes integer labels. Pass the "
            "labels, or compile with a categorical loss."
        )
    rng = np.random.default_rng(seed)
    trained = []
    for index in range(members):
        sample = rng.integers(0, rows, rows)
        xs = take_rows(x, sample)
        model, kind = (first, kind) if index == 0 else compiled(build_fn(index), task)
        model.fit(xs, targets[sample], **fit_options)
        trained.append(trained_member(model, f"bag_{index}", xs, kind))
    return build_ensemble(trained, combiner if combiner is not None else MeanCombiner(), task=task)
