"""What every fit starts from: checked targets and rows (finite, every class present), the
members' predictions of the fitting rows (given and checked like member outputs, or computed
once) after the leakage guard, and the combiner's initial state (`initial_state`): a fit that
trains from the combiner's weights starts from it, whatever fit ran before."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from combiners.base import Combiner
from ensemble.errors import EnsembleError
from ensemble.fitting.arrays import (
    check_probabilities,
    check_row_count,
    checked_labels,
    named_labels,
    non_finite,
    past_float32,
    probability_problem,
    sum_tolerance,
)
from ensemble.fitting.guard import DEFAULT_ATOL, DEFAULT_RTOL, guard_rows
from ensemble.fitting.level_one import LevelOneStore, check_given_level_one
from ensemble.graph.layers import ClassificationUncertainty
from ensemble.graph.view import EnsembleView
from ensemble.rows import row_count
from ensemble.types import Data

__all__ = [
    "FittingRows",
    "check_every_class",
    "check_finite",
    "check_finite_inputs",
    "check_level_one",
    "check_targets",
    "fitting_rows",
    "forget_compiled",
    "initial_state",
    "restore_initial_state",
]

# Its weights, member weights and (a multilabel MeanCombiner's) per-label weight table.
CombinerState = tuple[list[np.ndarray], list[float] | None, list[list[float]] | None]

# Each combiner's state when a fit first saw it (as built, or as loaded from a file).
_INITIAL_STATES: weakref.WeakKeyDictionary[Combiner, CombinerState] = weakref.WeakKeyDictionary()


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
    lack a class are refused when the fit is `learning` (not for a fit that learns nothing).
    The combiner's state is recorded the first time (`initial_state`), before any fit changes it."""
    initial_state(view.combiner)
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
    check_finite_inputs(x)
    if level_one is None and level_one_unseen:
        raise EnsembleError(
            "level_one_unseen=True says the given level_one predictions come from models that "
            "never saw their rows. Received no level_one: pass it, or drop level_one_unseen."
        )
    if level_one is not None:
        level_one = check_level_one(view, level_one, len(targets))
        if level_one_unseen:
            return FittingRows(targets, level_one, None)
        check_given_level_one(view, x, level_one)
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


def check_finite_inputs(x: Data, *, why: str = "A combiner cannot fit on them") -> None:
    """`check_finite` of each input of `x` (one array, or arrays by input name), named."""
    for name, values in x.items() if isinstance(x, Mapping) else [(None, x)]:
        check_finite(values, "x" if name is None else f"x[{name!r}]", why=why)


def check_finite(values: Any, what: str, *, why: str = "A combiner cannot fit on them") -> None:
    """An error counting and naming the rows and columns of `values` that are NaN or infinite,
    or float64 values past float32's range (infinite in the float32 graph: `non_finite`);
    `why` says what they would break."""
    array = np.asarray(values)
    bad = non_finite(array)
    if not bad.any():
        return
    bad = bad.reshape(len(array), -1)
    rows, columns = np.flatnonzero(bad.any(axis=1)), np.flatnonzero(bad.any(axis=0))
    wide = past_float32(array)
    note = (
        f" {wide} of them are finite {array.dtype} values past float32's range (|value| > 3.4e38), "
        "infinite in the float32 graph."
        if wide
        else ""
    )
    raise EnsembleError(
        f"{what} holds NaN or infinite values in {len(rows)} row(s) of {len(array)} (first rows "
        f"{rows[:5].tolist()}), column(s) {columns[:10].tolist()} (of the row flattened).{note} {why}: "
        "drop or impute those rows first."
    )


def _check_member_predictions(view: EnsembleView, level_one: np.ndarray) -> None:
    """Finite rows must get finite predictions: a member that answers NaN is named."""
    for index, name in enumerate(view.member_names):
        check_finite(level_one[:, index], f"Member {name!r}'s predictions of the (finite) fitting rows")


def check_level_one(view: EnsembleView, level_one: Any, rows: int) -> np.ndarray:
    """Given level-one predictions as float32, once checked like the members' own outputs: the
    shape `(rows, members, width)` of the ensemble, finite values, and for classification each
    member's rows class probabilities (the member and its first bad row named)."""
    members, width = len(view.members), view.width
    expected = (rows, members, width)
    shape = np.shape(level_one)
    if shape != expected:
        transposed = shape == (rows, width, members)
        raise EnsembleError(
            f"Expected level_one of shape (rows, members, width) = {expected}. Received: {shape}"
            + (
                ": transposed, (rows, width, members)? Pass np.swapaxes(level_one, 1, 2)."
                if transposed
                else "."
            )
        )
    given = np.asarray(level_one)
    check_finite(given, "level_one")
    if view.task != "regression":
        tolerance = sum_tolerance(given.dtype)
        for index, name in enumerate(view.member_names):
            if probability_problem(given[:, index], tolerance) is not None:
                check_probabilities(
                    given[:, index],
                    f"level_one of member {name!r} (member {index})",
                    hint=_transposed_hint(given, tolerance),
                )
    values: np.ndarray = given.astype("float32")
    if view.task != "regression" and width > 1 and given.dtype.kind == "f" and given.dtype.itemsize < 4:
        # Rows checked at float16's precision sum to 1 only that closely: in float32 they sum
        # to 1 as a member's float32 rows do (a change below float16's own rounding).
        values /= values.sum(axis=-1, keepdims=True)
    return values


def _transposed_hint(level_one: np.ndarray, tolerance: float) -> str:
    """A hint when `level_one` reads as probabilities with its last two axes swapped."""
    swapped = np.swapaxes(level_one, 1, 2)
    if level_one.shape[1] != level_one.shape[2] or any(
        probability_problem(swapped[:, index], tolerance) is not None for index in range(swapped.shape[1])
    ):
        return ""
    return (
        " Its rows sum to 1 over the members instead: the array looks transposed, (rows, classes, "
        "members). Pass np.swapaxes(level_one, 1, 2)."
    )


def initial_state(combiner: Combiner) -> CombinerState:
    """The combiner's weights and member weights as the first fit found them (recorded then).

    A combiner fresh from `build_ensemble` is recorded as built; one loaded from a file, as
    loaded. A fit that trains from the combiner's weights (`fit_combiner`) starts from this
    state, so fitting twice gives what fitting a fresh ensemble once gives."""
    state = _INITIAL_STATES.get(combiner)
    if state is None:
        weights, table = combiner.member_weights, getattr(combiner, "label_weights", None)
        state = (
            [np.array(w) for w in combiner.get_weights()],
            None if weights is None else list(weights),
            None if table is None else [list(row) for row in table],
        )
        _INITIAL_STATES[combiner] = state
    return state


def restore_initial_state(combiner: Combiner) -> None:
    """Set the combiner back to `initial_state`: what ran before does not carry into a fit."""
    weights, member_weights, table = initial_state(combiner)
    combiner.set_weights(weights)
    combiner.set_member_weights(member_weights)
    if table is not None:
        combiner.set_label_weights(table)  # a multilabel MeanCombiner


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
    """`y` as the fit needs it: int64 labels in [0, classes) (labels given by name, when the
    ensemble's classes are named, as their columns), or float32 `(rows, targets)`."""
    rows = row_count(x)
    if rows == 0:
        raise EnsembleError("Expected at least one row to fit the combiner. Received: an empty split.")
    targets = np.asarray(named_labels(y, view.classes, emitted=view.order_emitted))
    check_row_count(targets, rows)
    width = view.width
    if view.task == "regression":
        if targets.dtype.kind not in "biuf":
            raise EnsembleError(f"Expected numeric regression targets in y. Received: dtype {targets.dtype}.")
        check_finite(targets.reshape(rows, -1), "y")  # before float32, which would overflow
        targets = targets.astype("float32").reshape(rows, -1)
        if targets.shape[1] != width:
            raise EnsembleError(
                f"Expected {width} regression target(s) per row, as the members predict. "
                f"Received: y of shape {np.shape(y)}."
            )
        return targets
    check_finite(targets, "y")
    return checked_labels(targets, width, columns="the members' outputs")


def check_every_class(targets: np.ndarray, classes: int) -> None:
    """An error naming the classes with no row in `targets`: a combiner never learns them."""
    missing = sorted(set(range(classes)) - {int(t) for t in targets})
    if missing:
        raise EnsembleError(
            f"Class(es) {missing[:10]} have no row in y ({len(targets)} rows): a combiner fitted "
            "on them never learns those classes. Fit on rows of every class (a stratified split)."
        )
