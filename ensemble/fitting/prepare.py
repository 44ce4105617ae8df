"""What every fit starts from: checked targets, and the members' predictions of the fitting
rows (given out of fold, or computed once after the leakage guard)."""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from ensemble.errors import EnsembleError
from ensemble.fitting.guard import DEFAULT_ATOL, DEFAULT_RTOL, guard_rows
from ensemble.fitting.level_one import LevelOneStore
from ensemble.graph.view import EnsembleView
from ensemble.rows import row_count
from ensemble.types import Data

__all__ = ["FittingRows", "check_level_one", "check_targets", "fitting_rows", "forget_compiled"]


class FittingRows(NamedTuple):
    targets: np.ndarray
    level_one: np.ndarray  # (rows, members, width), float32
    overlaps: dict[str, int] | None  # the guard's counts; None when the predictions were given


def fitting_rows(
    view: EnsembleView,
    x: Data,
    y: Any,
    *,
    store: LevelOneStore | None = None,
    level_one: np.ndarray | None = None,
    level_one_unseen: bool = False,
    allow_overlap: bool = False,
    strategy: tf.distribute.Strategy | None = None,
    guard_rtol: float = DEFAULT_RTOL,
    guard_atol: float = DEFAULT_ATOL,
) -> FittingRows:
    """The fitting rows of `view`'s combiner on `(x, y)`: the targets checked against the
    members' outputs; the members' predictions of `x`, from `store` or given, after the
    leakage guard (its tolerance `guard_rtol`, `guard_atol`) with its overlaps. Given
    predictions are guarded too, unless `level_one_unseen` says they come from models that
    never saw their rows (out of fold): then nothing is checked and the overlaps are None."""
    targets = check_targets(view, x, y)
    if level_one is None and level_one_unseen:
        raise EnsembleError(
            "level_one_unseen=True says the given level_one predictions come from models that "
            "never saw their rows. Received no level_one: pass it, or drop level_one_unseen."
        )
    if level_one is not None:
        level_one = check_level_one(view, level_one, len(targets))
        if level_one_unseen:
            return FittingRows(targets, level_one, None)
    overlaps = guard_rows(
        view.model,
        x,
        allow_overlap=allow_overlap,
        rtol=guard_rtol,
        atol=guard_atol,
        level_one_given=level_one is not None,
    )
    if level_one is None:
        store = store or LevelOneStore(strategy=strategy)
        level_one = store.predictions(view.model, x)
    return FittingRows(targets, level_one, overlaps)


def check_level_one(view: EnsembleView, level_one: Any, rows: int) -> np.ndarray:
    """Given level-one predictions as float32, once their shape is checked against the ensemble."""
    expected = (rows, len(view.members), view.width)
    if np.shape(level_one) != expected:
        raise EnsembleError(
            f"Expected level_one of shape (rows, members, width) = {expected}. "
            f"Received: {np.shape(level_one)}"
        )
    return np.asarray(level_one, dtype="float32")


def forget_compiled(model: keras.Model) -> None:
    """Forget traced functions: they hold the combiner's old constants."""
    model.predict_function = None
    model.train_function = None
    model.test_function = None


def check_targets(view: EnsembleView, x: Data, y: Any) -> np.ndarray:
    """`y` as the fit needs it: int64 labels in [0, classes), or float32 `(rows, targets)`."""
    rows = row_count(x)
    if rows == 0:
        raise EnsembleError("Expected at least one row to fit the combiner. Received: an empty split.")
    targets = np.asarray(y)
    if len(targets) != rows:
        raise EnsembleError(f"Expected y with one target per row of x ({rows}). Received: {len(targets)}.")
    width = view.width
    if view.task == "regression":
        targets = targets.astype("float32").reshape(rows, -1)
        if targets.shape[1] != width:
            raise EnsembleError(
                f"Expected {width} regression target(s) per row, as the members predict. "
                f"Received: y of shape {np.shape(y)}."
            )
        return targets
    if targets.ndim != 1 or not np.all(np.mod(targets, 1) == 0):
        raise EnsembleError(
            "Expected integer class labels, shape (rows,), for a classification ensemble. "
            f"Received: y of shape {targets.shape} and dtype {targets.dtype}"
            + (" with non-integer values (regression targets?)." if targets.ndim == 1 else ".")
        )
    targets = targets.astype("int64")
    outside = sorted({int(t) for t in targets if not 0 <= t < width})
    if outside:
        raise EnsembleError(
            f"Expected class labels in [0, {width}), one per column of the members' outputs. "
            f"Received labels {outside[:10]}: do these labels match the members' classes?"
        )
    return targets
