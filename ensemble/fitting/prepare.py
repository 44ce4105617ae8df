"""What every fit starts from: checked targets and rows (finite, every class present), and the
members' predictions of the fitting rows (given, or computed once) after the leakage guard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from ensemble.errors import EnsembleError
from ensemble.fitting.guard import DEFAULT_ATOL, DEFAULT_RTOL, guard_rows
from ensemble.fitting.level_one import LevelOneStore
from ensemble.graph.layers import ClassificationUncertainty
from ensemble.graph.view import EnsembleView
from ensemble.rows import row_count
from ensemble.types import Data

__all__ = [
    "FittingRows",
    "check_every_class",
    "check_finite",
    "check_level_one",
    "check_targets",
    "fitting_rows",
    "forget_compiled",
]


class FittingRows(NamedTuple):
    targets: np.ndarray
    level_one: np.ndarray  # (rows, members, width), float32
    overlaps: dict[str, int] | None  # the guard's counts; None when level_one_unseen


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
    verbose: Any = "auto",
    guard_rtol: float = DEFAULT_RTOL,
    guard_atol: float = DEFAULT_ATOL,
    learning: bool = True,
) -> FittingRows:
    """The fitting rows of `view`'s combiner on `(x, y)`: the targets checked against the
    members' outputs; the members' predictions of `x`, from `store` or given, after the
    leakage guard (its tolerance `guard_rtol`, `guard_atol`) with its overlaps. Given
    predictions are guarded too, unless `level_one_unseen` says they come from models that
    never saw their rows (out of fold): then nothing is checked and the overlaps are None.
    `verbose` is the level-one pass's progress bar (a `store` given keeps its own). Rows that
    lack a class are refused when the fit is `learning` (not for a fit that learns nothing)."""
    positions = tuple(view.model.output["member_predictions"].shape[2:-1])
    if positions:
        raise EnsembleError(
            f"The members predict per position, shape (rows, {', '.join(map(str, positions))}, "
            f"width): a combiner fits on (rows, members, width) predictions. Combine them with "
            "fixed weights (MeanCombiner or VoteCombiner), with nothing to fit."
        )
    targets = check_targets(view, x, y)
    if learning and view.task != "regression":
        check_every_class(targets, view.width)
    if isinstance(x, Mapping):
        for name, values in x.items():
            check_finite(values, f"x[{name!r}]")
    else:
        check_finite(x, "x")
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
        store = store or LevelOneStore(strategy=strategy, verbose=verbose)
        level_one = store.predictions(view.model, x)
        _check_member_predictions(view, level_one)
    return FittingRows(targets, level_one, overlaps)


def check_finite(values: Any, what: str) -> None:
    """An error counting and naming the rows and columns of `values` that are NaN or infinite."""
    array = np.asarray(values)
    if array.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(array.reshape(len(array), -1))
    if not bad.any():
        return
    rows, columns = np.flatnonzero(bad.any(axis=1)), np.flatnonzero(bad.any(axis=0))
    raise EnsembleError(
        f"{what} holds NaN or infinite values in {len(rows)} row(s) of {len(array)} (first rows "
        f"{rows[:5].tolist()}), column(s) {columns[:10].tolist()} (of the row flattened). A combiner "
        "cannot fit on them: drop or impute those rows first."
    )


def _check_member_predictions(view: EnsembleView, level_one: np.ndarray) -> None:
    """Finite rows must get finite predictions: a member that answers NaN is named."""
    for index, name in enumerate(view.member_names):
        check_finite(level_one[:, index], f"Member {name!r}'s predictions of the (finite) fitting rows")


def check_level_one(view: EnsembleView, level_one: Any, rows: int) -> np.ndarray:
    """Given level-one predictions as float32, once their shape is checked against the ensemble."""
    expected = (rows, len(view.members), view.width)
    if np.shape(level_one) != expected:
        raise EnsembleError(
            f"Expected level_one of shape (rows, members, width) = {expected}. "
            f"Received: {np.shape(level_one)}"
        )
    values: np.ndarray = np.asarray(level_one, dtype="float32")
    check_finite(values, "level_one")
    return values


def forget_compiled(model: keras.Model) -> None:
    """After a fit changed the graph's constants (weights, calibration): the uncertainty
    outputs take the combiner's new member weights, and traced functions, which hold the old
    constants, are forgotten."""
    view = EnsembleView.of(model)
    for layer in model.layers:
        if isinstance(layer, ClassificationUncertainty):
            layer.set_member_weights(view.combiner.member_weights)
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
        check_finite(targets, "y")
        if targets.shape[1] != width:
            raise EnsembleError(
                f"Expected {width} regression target(s) per row, as the members predict. "
                f"Received: y of shape {np.shape(y)}."
            )
        return targets
    check_finite(targets, "y")
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


def check_every_class(targets: np.ndarray, classes: int) -> None:
    """An error naming the classes with no row in `targets`: a combiner never learns them."""
    missing = sorted(set(range(classes)) - {int(t) for t in targets})
    if missing:
        raise EnsembleError(
            f"Class(es) {missing[:10]} have no row in y ({len(targets)} rows): a combiner fitted "
            "on them never learns those classes. Fit on rows of every class (a stratified split)."
        )
