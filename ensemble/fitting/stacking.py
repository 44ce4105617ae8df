"""`fit_stacking`: the default stacking meta-model fitted the exact convex way (scikit-learn)
and baked into the in-graph `Dense`."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.linear_model import (
    LogisticRegression,
    LogisticRegressionCV,
    Ridge,
    RidgeCV,
)

from combiners import StackingCombiner
from combiners.stack import mean_kernel
from ensemble.errors import EnsembleError
from ensemble.fitting.level_one import LevelOneStore
from ensemble.fitting.prepare import fitting_rows, forget_compiled
from ensemble.graph.view import EnsembleView
from ensemble.rows import flat_features
from ensemble.types import Data

__all__ = ["fit_stacking"]

log = logging.getLogger(__name__)


def fit_stacking(
    model: keras.Model,
    x: Data,
    y: Any,
    *,
    C: float | None = None,
    alpha: float | None = None,
    cv: int = 5,
    max_iter: int = 2000,
    store: LevelOneStore | None = None,
    level_one: np.ndarray | None = None,
    level_one_unseen: bool = False,
    allow_overlap: bool = False,
    strategy: tf.distribute.Strategy | None = None,
    verbose: Any = "auto",
) -> Any:
    """Fit the default stacking meta-model the exact convex way and bake it into the graph.

    Classification: a multinomial `LogisticRegression(C=C)`; regression:
    `Ridge(alpha=alpha)` on the residual of the members' plain mean (so that
    regularisation shrinks toward that mean); both on the meta features the
    `StackingCombiner` computes (`meta_features`). With `C`/`alpha` None (the default), the
    regularisation is chosen by `cv`-fold cross-validated log-loss (squared
    error) with `LogisticRegressionCV` / `RidgeCV`: the meta-model has
    members x classes^2 weights, which overfit the fitting rows otherwise.
    The ensemble's `prediction` then equals the estimator's `predict_proba`
    (classification) or the members' mean plus its `predict` (regression).

    The fitting rows are checked and guarded as `ensemble.fit` does it (`store`, `level_one`,
    `level_one_unseen`, `allow_overlap`, `strategy`, `verbose` mean what they mean there).

    Returns:
        The fitted scikit-learn estimator.
    """
    view = EnsembleView.of(model)
    combiner = view.combiner
    if not isinstance(combiner, StackingCombiner) or combiner.meta_model is not None:
        raise EnsembleError(
            "fit_stacking fits the default meta-model of a StackingCombiner (a Dense layer). "
            f"Received: {type(combiner).__name__} {combiner.name!r}"
            + (
                " with a custom meta_model; train it with fit_combiner."
                if isinstance(combiner, StackingCombiner)
                else "."
            )
        )
    targets, level_one, _ = fitting_rows(
        view,
        x,
        y,
        store=store,
        level_one=level_one,
        level_one_unseen=level_one_unseen,
        allow_overlap=allow_overlap,
        strategy=strategy,
        verbose=verbose,
    )
    features = np.asarray(
        combiner.meta_features(level_one, flat_features(x) if combiner.needs_features else None),
        dtype="float64",
    )
    width = level_one.shape[-1]
    if view.task == "classification":
        estimator: Any = (
            LogisticRegression(C=C, max_iter=max_iter)
            if C is not None
            else LogisticRegressionCV(
                Cs=np.logspace(-4, 2, 13),
                l1_ratios=(0.0,),
                cv=cv,
                scoring="neg_log_loss",
                use_legacy_attributes=False,
                max_iter=max_iter,
            )
        )
        estimator.fit(features, targets)
        if C is None:
            _log_chosen("C", float(estimator.C_), weakest=np.max(estimator.Cs) <= estimator.C_)
        kernel, bias = estimator.coef_.T, estimator.intercept_
        if width == 2:  # sklearn's binary form: p1 = sigmoid(x.w + b) = softmax([0, x.w + b])[1]
            kernel = np.hstack([np.zeros_like(kernel), kernel])
            bias = np.concatenate([[0.0], bias])
    else:
        # Ridge on what the members' plain mean gets wrong: the penalty then shrinks toward
        # the mean (a sound ensemble) rather than toward predicting zero.
        members_mean = level_one.mean(axis=1).astype("float64")
        estimator = (
            Ridge(alpha=alpha) if alpha is not None else RidgeCV(alphas=np.logspace(-4, 6, 21), cv=cv)
        ).fit(features, targets - members_mean)
        if alpha is None:
            _log_chosen(
                "alpha", float(estimator.alpha_), weakest=estimator.alpha_ <= np.min(estimator.alphas)
            )
        prior = mean_kernel(level_one.shape[1], width, features.shape[1])  # the untrained kernel
        kernel = prior + np.atleast_2d(estimator.coef_).T
        bias = np.atleast_1d(estimator.intercept_)
    dense = combiner.meta_model_
    assert dense is not None  # built with the ensemble
    dense.kernel.assign(kernel.astype("float32"))
    dense.bias.assign(bias.astype("float32"))
    forget_compiled(model)
    return estimator


def _log_chosen(name: str, value: float, weakest: bool) -> None:
    """Log the cross-validated regularisation; warn when it is the weakest on the grid."""
    log.info("Stacking meta-model: %s=%g, chosen by cross-validated loss", name, value)
    if weakest:
        log.warning(
            "Stacking meta-model: cross-validation chose the weakest regularisation tried "
            "(%s=%g): the fitting rows ask for a stacker as sure as the grid allows, so its "
            "confidence, and its NLL on new rows, may be optimistic. "
            "More fitting rows, or a fixed fit.%s, bound it.",
            name,
            value,
            name,
        )
