"""`fit`: whatever an ensemble's combiner needs fitted, without leakage, with a report of it.

One entry point for a training script: it checks the targets, keeps the combiner off rows its
members trained on (the leakage guard), runs the members once over the fitting rows (the
level-one store), fits the combiner the way its kind asks, and says what it did.
`fit_out_of_fold` is the other regime: the combiner fits on out-of-fold predictions of members
retrained per fold by your builders, while the ensemble keeps members trained on every row.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ensemble.errors import EnsembleError
from ensemble.fitting.calibrate import calibrate, check_calibration
from ensemble.fitting.guard import DEFAULT_ATOL, DEFAULT_RTOL, GuardResult
from ensemble.fitting.head import fit_combiner
from ensemble.fitting.layered import fit_levels
from ensemble.fitting.level_one import LevelOneStore
from ensemble.fitting.mean_weights import fit_mean_weights
from ensemble.fitting.methods import FIT_METHODS, resolve_method
from ensemble.fitting.multilabel import fit_multilabel, multilabel_targets
from ensemble.fitting.out_of_fold import FitPredict, stack_out_of_fold
from ensemble.fitting.prepare import (
    check_targets,
    fitting_rows,
    forget_compiled,
    initial_state,
    restore_initial_state,
)
from ensemble.fitting.report import FitReport
from ensemble.fitting.selected import noise_variance, selected_member
from ensemble.fitting.stacking import chosen_by_fit, fit_stacking
from ensemble.graph.view import EnsembleView
from ensemble.rows import row_count
from ensemble.tfdata import arrays_of
from ensemble.types import MULTILABEL, Data

__all__ = ["FIT_METHODS", "FitReport", "fit", "fit_layered", "fit_out_of_fold"]

log = logging.getLogger(__name__)


_FITTERS: dict[str, Callable[..., Any]] = {
    "sklearn": fit_stacking,
    "keras": fit_combiner,
    "selection": functools.partial(fit_mean_weights, method="selection"),
    "optimal": functools.partial(fit_mean_weights, method="optimal"),
}


def fit(
    model: keras.Model,
    x: Data,
    y: Any = None,
    *,
    method: str = "auto",
    level_one: np.ndarray | None = None,
    level_one_unseen: bool = False,
    store: LevelOneStore | None = None,
    allow_overlap: bool = False,
    guard_rtol: float = DEFAULT_RTOL,
    guard_atol: float = DEFAULT_ATOL,
    strategy: tf.distribute.Strategy | None = None,
    verbose: Any = "auto",
    calibration: str | None = None,
    **options: Any,
) -> FitReport:
    """Fit what the combiner of `model` (from `build_ensemble`) needs on `(x, y)`, in place.

    Args:
        model: the ensemble; only its combiner changes, members stay bit-identical.
        x, y: the fitting rows, which no member may have trained on (the leakage guard
            checks members that carry a training-row record, `record_training_rows`); or
            `x` a `tf.data.Dataset` of batches `(x, y)` and `y` None (`ensemble.tfdata`).
        method: one of `FIT_METHODS`; `auto` picks by combiner.
        level_one: the members' predictions of `x` made elsewhere, shape `(rows, members,
            width)`, reported as `regime="given"`. The guard still checks `x` against the
            members' training rows: predictions of rows a member trained on are refused.
            They are checked as the members' own outputs: finite, and for classification
            each member's rows class probabilities (in [0, 1], summing to 1 within 1e-4).
        level_one_unseen: `level_one` comes from models that never saw their rows (out of
            fold, as `fit_out_of_fold` makes; the final members may have trained on `x`):
            the guard does not run, and the report says so.
        store: where the members' predictions of `x` are computed and cached.
        allow_overlap: fit even on rows a member trained on (the guard only counts them).
        guard_rtol, guard_atol: the guard's tolerance (`ensemble.fitting.guard`): a row of
            `x` is a training row when every feature is within `atol + rtol * max|feature|`.
        strategy: a `tf.distribute` strategy for the level-one pass and Keras training.
        verbose: Keras' progress setting for the level-one pass and Keras training.
        calibration: `"temperature"` or `"vector"` (scaling, `ensemble.fitting.temperature`)
            fitted exactly on the same rows after the combiner, into the graph's
            `Calibration` layer; with `method="optimal"`, `"temperature"` is fitted jointly
            with the weights (a calibrated weighted mean). None leaves the layer the
            identity. Every fit starts from the identity: a refit never keeps an old one.
        **options: for the fit function of `method` (`C`, `alpha`, `cv` for `sklearn`;
            `epochs`, `batch_size`, `seed`, ... for `keras`; `rounds` for `selection`).

    Returns:
        A `FitReport`.
    """
    view = EnsembleView.of(model)
    x, y = arrays_of(x, y, where="fit")
    initial_state(view.combiner)  # recorded before any fit changes it: every fit starts there
    if view.task == MULTILABEL:  # y is a (rows, labels) 0/1 matrix: weights per label
        return fit_multilabel(
            model,
            x,
            y,
            method=method,
            level_one=level_one,
            level_one_unseen=level_one_unseen,
            store=store,
            allow_overlap=allow_overlap,
            guard_rtol=guard_rtol,
            guard_atol=guard_atol,
            strategy=strategy,
            verbose=verbose,
            calibration=calibration,
            **options,
        )
    method = resolve_method(view, method)
    if method == "none" and options:
        raise EnsembleError(f"method='none' fits nothing. Received options: {sorted(options)}")
    check_calibration(view, calibration)
    given = level_one is not None
    targets, level_one, overlaps = fitting_rows(
        view,
        x,
        y,
        store=store,
        level_one=level_one,
        level_one_unseen=level_one_unseen,
        allow_overlap=allow_overlap,
        strategy=strategy,
        verbose=verbose,
        guard_rtol=guard_rtol,
        guard_atol=guard_atol,
        learning=method != "none" or calibration is not None,
    )
    # The rows are good: the combiner fits (and is calibrated) from scratch, its weights and
    # member weights as built (or loaded): what an earlier fit chose never carries into this
    # one, method='none' included. A fit refused above leaves the model as it was.
    restore_initial_state(view.combiner)
    if view.calibration is not None and not view.calibration.is_identity:
        view.calibration.set_scaling()
    forget_compiled(model)
    fitted = None
    if method == "none":
        log.info(
            "%s %r has nothing to fit: used as configured.", type(view.combiner).__name__, view.combiner.name
        )
    else:
        # The rows are checked and guarded, the predictions made: the fit function takes them
        # as they are (unseen, as far as the guard could tell), and y as the caller gave it
        # (labels by name are mapped again; integers are judged as the caller's, once more).
        fitted = (fit_layered if method == "layered" else _FITTERS[method])(
            model,
            x,
            y,
            level_one=level_one,
            level_one_unseen=True,
            strategy=strategy,
            verbose=verbose,
            **options,
        )
    scaling = None
    if calibration is not None:
        scaling = calibrate(view, x, targets, level_one, calibration, joint=method == "optimal")
    weights = view.combiner.member_weights
    return FitReport(
        task=view.task,
        combiner=type(view.combiner).__name__,
        method=method,
        options=options,
        regime="given" if given else "holdout",
        rows=len(targets),
        overlaps=dict(overlaps or {}),
        selected_member=selected_member(view, level_one, targets),
        member_weights=None if weights is None else dict(zip(view.member_names, weights, strict=True)),
        noise_variance=(noise_variance(view, level_one, targets, x) if view.task == "regression" else None),
        fitted=fitted,
        level_one=level_one,
        targets=targets,
        guard=_guard_record(overlaps),
        calibration=None if scaling is None else scaling.as_dict(),
        chosen=chosen_by_fit(fitted, view.member_names),
    )


def fit_layered(model: keras.Model, x: Data, y: Any = None, **options: Any) -> dict[str, Any]:
    """Fit the `LayeredCombiner` of `model` on `(x, y)`, in place: `fit_levels`
    (`ensemble.fitting.layered`) with `fit` for every level and the final combiner. `options`
    are `fit_levels`' (`cv`, `seed`, `level_options`, `final_options`, and `fit`'s `store`,
    `level_one`, `level_one_unseen`, `allow_overlap`, `strategy`, `verbose`)."""
    x, y = arrays_of(x, y, where="fit_layered")
    return fit_levels(model, x, y, fit_level=fit, **options)


def fit_out_of_fold(
    model: keras.Model,
    x: Data,
    y: Any = None,
    builders: Mapping[str, FitPredict] | None = None,
    *,
    cv: int = 5,
    seed: int = 0,
    fitter: Callable[..., FitReport] | None = None,
    **options: Any,
) -> FitReport:
    """Fit the combiner of `model` on out-of-fold predictions of its members.

    Every row of `(x, y)` is predicted by a fresh copy of each member trained on the other
    `cv - 1` folds (scikit-learn's `StratifiedKFold`, `KFold` for regression, shuffled with
    `seed`), so the combiner learns from rows no member saw; the ensemble keeps its own
    members, trained on every row as the builders train them.

    Args:
        model: the ensemble of final members, from `build_ensemble`.
        x, y: the rows, as `fit` takes them (a `tf.data.Dataset` of `(x, y)` batches is read
            into arrays first, so its rows split by index into folds).
        builders: for each member name of `model`, `fit_predict(x_train, y_train, x_predict)`
            training a fresh copy of that member and returning its predictions (class
            probabilities for a classifier): the zoo's recipes, or your own callables.
        fitter: the fit step run on those predictions: `fit` (the default), or a partial of it
            such as a `conf/fit` option instantiated.
        **options: for `fitter` (`method`, `strategy`, and the fit function's options).

    Returns:
        A `FitReport` with `regime="oof"` and each row's fold in `folds`.
    """
    view = EnsembleView.of(model)
    names = view.member_names
    x, y = arrays_of(x, y, where="fit_out_of_fold")
    if builders is None:
        raise EnsembleError(f"fit_out_of_fold: expected builders, one per member {names}. Received: None")
    if set(builders) != set(names):
        raise EnsembleError(
            f"Expected one builder per member {names}. Missing: {sorted(set(names) - set(builders))}; "
            f"not members: {sorted(set(builders) - set(names))}"
        )
    if view.task == MULTILABEL:  # a (rows, labels) 0/1 matrix, checked as the multilabel fit does
        multilabel_targets(y, view.width, row_count(x))
    else:
        check_targets(view, x, y)  # before any builder trains
    level_one, folds = stack_out_of_fold(
        {name: builders[name] for name in names},
        x,
        np.asarray(y),
        cv=cv,
        task=view.task,
        seed=seed,
        width=view.width,
        probabilities=view.task == "classification",
    )
    # The final members trained on x; the predictions come from fold models that did not.
    report = (fitter or fit)(model, x, y, level_one=level_one, level_one_unseen=True, **options)
    return dataclasses.replace(report, regime="oof", folds=folds)


def _guard_record(overlaps: dict[str, int] | None) -> dict[str, Any]:
    if isinstance(overlaps, GuardResult):
        return overlaps.as_dict()
    return {"checked": False, "reason": "level_one_unseen: predictions from models that never saw their rows"}
