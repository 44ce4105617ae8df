"""`fit_stacking`: the default stacking meta-model fitted the exact convex way, shrunk toward
the members' best calibrated pool, and baked into the in-graph `Dense` (and, for the
arithmetic mean's block, the combiner's `mean_kernel_`)."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.linear_model import Ridge, RidgeCV

from combiners import StackingCombiner
from combiners.stack import mean_kernel
from ensemble.errors import EnsembleError
from ensemble.fitting.level_one import LevelOneStore
from ensemble.fitting.prepare import fitting_rows, forget_compiled
from ensemble.fitting.stacker import CS, Stacker, fit_stacker
from ensemble.fitting.stacker_choice import cross_validated_stacker
from ensemble.graph.view import EnsembleView
from ensemble.rows import flat_features
from ensemble.types import Data

__all__ = ["chosen_by_fit", "fit_stacking"]

log = logging.getLogger(__name__)


def fit_stacking(
    model: keras.Model,
    x: Data,
    y: Any,
    *,
    C: float | None = None,
    alpha: float | None = None,
    cv: int = 5,
    store: LevelOneStore | None = None,
    level_one: np.ndarray | None = None,
    level_one_unseen: bool = False,
    allow_overlap: bool = False,
    strategy: tf.distribute.Strategy | None = None,
    verbose: Any = "auto",
) -> Any:
    """Fit the default stacking meta-model the exact convex way and bake it into the graph.

    Classification: a multinomial logistic regression on the members' log-probabilities (the
    `StackingCombiner`'s `meta_features`), or one member temperature-scaled (`ensemble.fitting.
    stacker`). With `C` None (the default), the candidates compete on held-out NLL over `cv`
    stratified folds of the fitting rows: the regression shrunk toward zero (what
    scikit-learn's `LogisticRegressionCV` fits) or toward the selected member temperature-
    scaled, at each `C` of `stacker.CS`, every member and the members' arithmetic (plain) mean
    temperature-scaled alone, and each of them and the geometric mean as they come, among
    those at least as accurate held out as the best member alone; so a dominant member is
    never shrunk away. The arithmetic mean and the regressions' use of its block need the
    combiner's `mean_feature` (on for a `StackingCombiner()`; a combiner saved before it
    existed fits without it, and says so). A given `C` fits the regression shrunk toward zero
    on the `meta_features` (scikit-learn's `LogisticRegression(C=C)`). Solved by L-BFGS, then Newton steps
    (trust-ncg) to a gradient of `stacker.GTOL` (1e-9) on the mean objective. The uncertainty outputs weigh the members
    equally, or, when the stacker is one member, that member alone.

    Regression: `Ridge(alpha=alpha)` on the residual of the members' plain mean, so that
    regularisation shrinks toward that mean; `alpha` None: chosen by `cv`-fold cross-validated
    squared error (`RidgeCV`).
    The ensemble's `prediction` is then that mean plus the ridge's `predict`.

    The fitting rows are checked and guarded as `ensemble.fit` does it (`store`, `level_one`,
    `level_one_unseen`, `allow_overlap`, `strategy`, `verbose` mean what they mean there).

    Returns:
        The fitted `stacker.Stacker` (classification) or scikit-learn `Ridge` (regression).
    """
    view = EnsembleView.of(model)
    combiner = view.combiner
    for name, value in (("C", C), ("alpha", alpha)):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise EnsembleError(
                f"Expected {name} to be a positive, finite number or None. Received: {name}={value!r}"
            )
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
    mean_block = combiner.mean_kernel_
    if view.task == "classification":
        log_p = features[:, : level_one.shape[1] * width].reshape(level_one.shape)
        if C is None:
            if mean_block is None:
                log.info(
                    "Stacking: %r has no arithmetic-mean block (mean_feature=False, or a config "
                    "saved before it existed): the members' plain mean is not a candidate.",
                    combiner.name,
                )
            try:
                estimator: Any = cross_validated_stacker(
                    features, log_p, targets, cv=cv, mean_feature=mean_block is not None
                )
            except ValueError as error:  # too few rows of a class for the folds
                raise EnsembleError(f"fit_stacking: {error}") from None
            _log_chosen(estimator, view.member_names)
        else:
            zero = np.zeros((features.shape[1], width))
            kernel, bias = fit_stacker(features, np.eye(width)[targets], zero, C)
            estimator = Stacker(kernel, bias, "zero", C, None)
        kernel, bias = estimator.kernel, estimator.bias
        # The uncertainty outputs weigh the members equally, unless the stacker is one member.
        weights = None
        if estimator.prior in ("member", "raw"):
            weights = [float(j == estimator.member) for j in range(len(view.members))]
        combiner.set_member_weights(weights)
    else:
        # Ridge on what the members' plain mean gets wrong: the penalty then shrinks toward the
        # mean rather than toward predicting zero. (Toward their least-squares weighted mean
        # instead, diabetes' test RMSE went from 56.9 to 57.5: 89 fitting rows overfit weights.)
        members_mean = level_one.mean(axis=1).astype("float64")
        estimator = (
            Ridge(alpha=alpha) if alpha is not None else RidgeCV(alphas=np.logspace(-4, 6, 21), cv=cv)
        ).fit(features, targets - members_mean)
        if alpha is None:
            alpha_, weakest = float(estimator.alpha_), estimator.alpha_ <= np.min(estimator.alphas)
            log.info("Stacking meta-model: alpha=%g, chosen by cross-validated squared error", alpha_)
            if weakest:
                _warn_weakest(f"alpha={alpha_:g}", "alpha")
        kernel = mean_kernel(level_one.shape[1], width, features.shape[1]) + np.atleast_2d(estimator.coef_).T
        bias = np.atleast_1d(estimator.intercept_)
    dense = combiner.meta_model_
    assert dense is not None  # built with the ensemble
    dense.kernel.assign(kernel.astype("float32"))
    dense.bias.assign(bias.astype("float32"))
    if mean_block is not None:  # zero unless the chosen stacker weighs the arithmetic mean
        mean = getattr(estimator, "mean_kernel", None)
        mean_block.assign(np.zeros((width, width), "float32") if mean is None else mean.astype("float32"))
    forget_compiled(model)
    return estimator


def _log_chosen(stacker: Stacker, names: list[str]) -> None:
    """Log the cross-validated choice; warn when it is the weakest penalty on the grid."""
    log.info("Stacking meta-model: %s, chosen by held-out NLL", stacker.describe(names))
    if stacker.C > 0 and max(CS) <= stacker.C:
        _warn_weakest(f"C={stacker.C:g}", "C")


def _warn_weakest(chosen: str, name: str) -> None:
    log.warning(
        "Stacking meta-model: cross-validation chose the weakest regularisation tried (%s): the "
        "fitting rows ask for a stacker as sure as the grid allows, so its confidence, and its "
        "NLL on new rows, may be optimistic. More fitting rows, or a fixed fit.%s, bound it.",
        chosen,
        name,
    )


def chosen_by_fit(fitted: Any, names: list[str]) -> dict[str, Any] | None:
    """What a fit chose, as plain values: the default stacker's candidate (`Stacker.as_dict`),
    a cross-validated ridge's `alpha`; None where the fit chose nothing (its options say it)."""
    if isinstance(fitted, Stacker):
        return fitted.as_dict(names)
    alpha = getattr(fitted, "alpha_", None)  # scikit-learn's RidgeCV
    if alpha is not None:
        return {"alpha": float(alpha), "by": "cross-validated squared error"}
    return None
