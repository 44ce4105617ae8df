"""`fit_levels`: a `LayeredCombiner` fitted leak-free, level by level (`ensemble.fit` runs it,
as `fit_layered`, for `method="layered"`).

The members' predictions of the fitting rows (guarded as every fit is: no member trained on
them) train each second-level combiner. The final combiner must not learn from a level's
prediction of a row that level was fitted on, so it trains on the levels' out-of-fold
predictions: each level is fitted again on `cv - 1` folds of the fitting rows and predicts
the fold it did not see (as `stack_out_of_fold` does for members, one level up). The levels
the graph keeps are then fitted on every fitting row.

Each level and the final combiner are fitted by `ensemble.fit` itself, in an ensemble of
their own over the same members, so every combiner and fit method works at every level. `fit`
dispatches here, so it comes in as an argument (`fit_level`) rather than as an import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from combiners.base import Combiner
from combiners.layered import LayeredCombiner
from ensemble.errors import EnsembleError
from ensemble.fitting.level_one import LevelOneStore
from ensemble.fitting.out_of_fold import fold_splits
from ensemble.fitting.prepare import CombinerState, fitting_rows, forget_compiled, initial_state
from ensemble.graph.build import build_ensemble
from ensemble.graph.view import EnsembleView
from ensemble.members.load import load_member
from ensemble.rows import take_rows
from ensemble.types import CLASSIFICATION, Data

__all__ = ["fit_levels"]

log = logging.getLogger(__name__)

# What every level's fit is given here: its rows' predictions, out of fold or not.
# (A level's calibration would be lost: the whole ensemble is calibrated, by `ensemble.fit`.)
_SET_HERE = {"level_one", "level_one_unseen", "store", "allow_overlap", "strategy", "verbose", "calibration"}


def fit_levels(
    model: keras.Model,
    x: Data,
    y: Any,
    *,
    fit_level: Callable[..., Any],
    cv: int = 5,
    seed: int = 0,
    level_options: Sequence[Mapping[str, Any]] | None = None,
    final_options: Mapping[str, Any] | None = None,
    store: LevelOneStore | None = None,
    level_one: np.ndarray | None = None,
    level_one_unseen: bool = False,
    allow_overlap: bool = False,
    strategy: tf.distribute.Strategy | None = None,
    verbose: Any = "auto",
) -> dict[str, Any]:
    """Fit the `LayeredCombiner` of `model` on `(x, y)`, in place.

    Args:
        fit_level: the fit of each level and of the final combiner, given their ensemble and
            rows (`ensemble.fit`).
        cv, seed: the folds of the fitting rows (scikit-learn's `StratifiedKFold`, `KFold` for
            regression, shuffled with `seed`) for the levels' out-of-fold predictions.
        level_options: for each level, the options of its `ensemble.fit` (`method`, `C`,
            `alpha`, `epochs`, ...); None: the defaults (`method="auto"`) for each.
        final_options: the options of the final combiner's `ensemble.fit`.
        store, level_one, level_one_unseen, allow_overlap, strategy, verbose: as `ensemble.fit`.

    Returns:
        `{"levels": [FitReport per level], "final": FitReport, "out_of_fold": (rows, levels,
        width)}`; the final report's `level_one` is what the final combiner fitted on.
    """
    view = EnsembleView.of(model)
    combiner = view.combiner
    if not isinstance(combiner, LayeredCombiner):
        raise EnsembleError(
            f"fit_layered fits a LayeredCombiner. Received: {type(combiner).__name__} {combiner.name!r}"
        )
    levels = [{} for _ in combiner.levels] if level_options is None else [dict(o) for o in level_options]
    if len(levels) != len(combiner.levels):
        raise EnsembleError(
            f"Expected one mapping of fit options per level ({len(combiner.levels)}). Received: "
            f"level_options={levels}"
        )
    taken = sorted({key for o in [*levels, dict(final_options or {})] for key in o} & _SET_HERE)
    if taken:
        raise EnsembleError(f"fit_layered sets {taken} of each level's fit itself. Received them in options.")
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
    splits = fold_splits(x, targets, cv=cv, task=view.task, seed=seed)
    options: dict[str, Any] = {"level_one_unseen": True, "strategy": strategy, "verbose": 0}
    out_of_fold = np.empty((len(targets), len(combiner.levels), view.width), dtype="float32")
    reports, stand_ins, states = [], [], []
    for index, (level, fit_options) in enumerate(zip(combiner.levels, levels, strict=True)):
        alone = build_ensemble(list(view.members), level, task=view.task, name=f"level_{index}")
        fitted = EnsembleView.of(alone).combiner
        # The copy carries the level's last fit: every fit starts where a fresh model's would.
        start = initial_state(level)
        for fold, (train, held_out) in enumerate(splits):
            _restore(fitted, start)
            part = take_rows(x, train)
            try:
                fit_level(alone, part, targets[train], level_one=level_one[train], **options, **fit_options)
            except EnsembleError as error:
                raise EnsembleError(f"Level {level.name!r}, fold {fold}: {error}") from error
            out_of_fold[held_out, index] = EnsembleView.of(alone).combine(
                level_one[held_out], take_rows(x, held_out)
            )
        _restore(fitted, start)
        reports.append(fit_level(alone, x, targets, level_one=level_one, **options, **fit_options))
        states.append(_state(fitted))
        log.info("Level %r fitted on %d rows, out of fold over %d folds", level.name, len(targets), cv)
        stand_ins.append(_as_member(alone, level.name, view.task, view.classes))
    inputs = out_of_fold
    if combiner.passthrough:
        stand_ins += list(view.members)
        inputs = np.concatenate([out_of_fold, level_one], axis=1)
    top = build_ensemble(stand_ins, combiner.final, task=view.task, name="final_level")
    _restore(EnsembleView.of(top).combiner, initial_state(combiner.final))
    final = fit_level(top, x, targets, level_one=inputs, **options, **dict(final_options or {}))
    # Every fit went through: the model takes the fitted states (a refusal above leaves it as it was).
    for level, state in zip(combiner.levels, states, strict=True):
        _restore(level, state)
    top_combiner = EnsembleView.of(top).combiner
    _restore(combiner.final, _state(top_combiner))
    forget_compiled(model)
    return {"levels": reports, "final": final, "out_of_fold": out_of_fold}


def _state(combiner: Combiner) -> CombinerState:
    """A combiner's weights and member weights as a fit left them (no per-label table here)."""
    return [np.array(w) for w in combiner.get_weights()], combiner.member_weights, None


def _restore(combiner: Combiner, state: CombinerState) -> None:
    """Set a combiner's weights and member weights (a fit's result, or where it started)."""
    weights, member_weights, _ = state
    combiner.set_weights(weights)
    combiner.set_member_weights(member_weights)


def _as_member(level: keras.Model, name: str, task: str, classes: tuple[str, ...] | None) -> Any:
    """A level's ensemble as a member of the final level's (its `prediction` alone, in the
    members' class order)."""
    model = keras.Model(level.input, level.output["prediction"], name=name)
    if task != CLASSIFICATION:
        return load_member(model, name=name)
    return load_member(model, name=name, output="probabilities", classes=classes)
