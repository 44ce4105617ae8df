"""`fit_mean_weights`: learned `MeanCombiner` weights, by ensemble selection or minimal NLL."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from combiners import MeanCombiner
from ensemble.errors import EnsembleError
from ensemble.fitting.level_one import LevelOneStore
from ensemble.fitting.multilabel import fit_multilabel
from ensemble.fitting.prepare import fitting_rows, forget_compiled
from ensemble.fitting.selection import ensemble_selection, optimal_weights
from ensemble.graph.view import EnsembleView
from ensemble.types import MULTILABEL, Data

__all__ = ["fit_mean_weights"]


def fit_mean_weights(
    model: keras.Model,
    x: Data,
    y: Any,
    *,
    method: str = "selection",
    rounds: int = 50,
    store: LevelOneStore | None = None,
    level_one: np.ndarray | None = None,
    level_one_unseen: bool = False,
    allow_overlap: bool = False,
    strategy: tf.distribute.Strategy | None = None,
    verbose: Any = "auto",
) -> np.ndarray:
    """Learn the weights of the ensemble's `MeanCombiner` on `(x, y)` and set them.

    `method="selection"`: Caruana et al.'s greedy ensemble selection with
    replacement (`rounds` picks); `"optimal"`: non-negative weights summing to
    1 that minimise the NLL (MSE for regression). The weights end up in the
    layer's config. A multilabel ensemble's weights are fitted per label, a `(members,
    labels)` table (`ensemble.fitting.multilabel`).

    The fitting rows are checked and guarded as `ensemble.fit` does it (`store`, `level_one`,
    `level_one_unseen`, `allow_overlap`, `strategy`, `verbose` mean what they mean there).

    Returns:
        The weights, one per member (multilabel: `(members, labels)`).
    """
    view = EnsembleView.of(model)
    combiner = view.combiner
    if not isinstance(combiner, MeanCombiner):
        raise EnsembleError(
            f"fit_mean_weights learns a MeanCombiner's weights. Received: "
            f"{type(combiner).__name__} {combiner.name!r}"
        )
    if method not in ("selection", "optimal"):
        raise EnsembleError(f"Expected method 'selection' or 'optimal'. Received: {method!r}")
    if view.task == MULTILABEL:  # one column of weights per label: `ensemble.fitting.multilabel`
        report = fit_multilabel(
            model,
            x,
            y,
            method=method,
            rounds=rounds,
            store=store,
            level_one=level_one,
            level_one_unseen=level_one_unseen,
            allow_overlap=allow_overlap,
            strategy=strategy,
            verbose=verbose,
        )
        fitted: np.ndarray = report.fitted
        return fitted
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
    level_one = level_one.astype("float64")
    task = view.task
    weights = (
        ensemble_selection(level_one, targets, task=task, rounds=rounds)
        if method == "selection"
        else optimal_weights(level_one, targets, task=task)
    )
    combiner.set_member_weights([float(w) for w in weights])
    forget_compiled(model)
    return weights
