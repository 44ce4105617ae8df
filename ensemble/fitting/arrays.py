"""The checks every door shares: the arrays a fit, a training function or a pure-NumPy weight
learner takes (level-one predictions `(rows, members, width)`, class probabilities, labels,
targets), each error naming the argument, the row and what was expected.

One definition each, called by every door: `non_finite` (NaN, infinities, and float64 values
past float32's range, which the float32 graph turns into infinities), `check_row_count`,
`checked_labels` (integer labels in `[0, classes)`; strings and 1..K labels are refused with
what to do), `check_probabilities` (values in [0, 1], rows summing to 1).
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.members.classes import check_integer_labels
from ensemble.types import CLASSIFICATION, REGRESSION

__all__ = [
    "FLOAT32_MAX",
    "PROBABILITY_ATOL",
    "SUM_ATOL",
    "check_count",
    "check_probabilities",
    "check_row_count",
    "checked_labels",
    "checked_predictions",
    "checked_regression_targets",
    "named_labels",
    "non_finite",
    "past_float32",
    "probability_problem",
    "sum_tolerance",
]

FLOAT32_MAX = float(np.finfo(np.float32).max)
PROBABILITY_ATOL = 1e-6  # how far a probability may stray outside [0, 1]
SUM_ATOL = 1e-4  # how far a float32 row of probabilities may sum from 1
_CHUNK_ROWS = 1 << 16  # rows judged at a time (a float64 copy of this many rows is made)


def non_finite(values: Any) -> np.ndarray:
    """A mask of the values that are NaN or infinite, or that only a type wider than float32
    holds (|v| > 3.4e38): the graph computes in float32, where those are infinite."""
    array = np.asarray(values)
    if array.dtype.kind not in "fc":
        return np.zeros(array.shape, dtype=bool)
    bad: np.ndarray = ~np.isfinite(array)
    if array.dtype.itemsize > (4 if array.dtype.kind == "f" else 8):
        with np.errstate(invalid="ignore"):
            bad |= np.abs(array) > FLOAT32_MAX
    return bad


def past_float32(values: Any) -> int:
    """How many values are finite but past float32's range (what `non_finite` adds)."""
    array = np.asarray(values)
    if array.dtype.kind not in "fc":
        return 0
    return int(np.count_nonzero(non_finite(array) & np.isfinite(array)))


def check_row_count(values: Any, rows: int, *, what: str = "y", door: str = "") -> None:
    """An error unless `values` has one entry per row of x."""
    received = len(values) if np.ndim(values) else "a scalar"
    if received != rows:
        raise EnsembleError(
            f"{_prefix(door)}Expected {what} with one target per row of x ({rows}). Received: {received}."
        )


def check_count(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"Expected {name} to be an integer >= {minimum}. Received: {name}={value!r}")


def checked_predictions(P: Any, y: Any, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns predictions as float64 `(rows, members, width)` and the targets.

    Targets come back as int64 labels `(rows,)` for classification and as
    float64 `(rows, width)` for regression.
    """
    if task not in (CLASSIFICATION, REGRESSION):  # multi-label rows: `multilabel_targets`
        raise ValueError(
            f"Expected task to be one of {(CLASSIFICATION, REGRESSION)}. Received: task={task!r}"
        )
    predictions = np.asarray(P, dtype=np.float64)
    if predictions.ndim != 3:
        raise ValueError(
            "Expected level-one predictions P of shape (rows, members, width). "
            f"Received: P.shape={predictions.shape}"
        )
    rows, members, width = predictions.shape
    if rows == 0 or members == 0 or width == 0:
        raise ValueError(
            "Expected level-one predictions P with at least one row, member "
            f"and output. Received: P.shape={predictions.shape}"
        )
    if non_finite(predictions).any():
        raise ValueError("Expected finite level-one predictions P. Received: NaN or inf in P")
    targets = np.asarray(y)
    if targets.ndim == 0 or len(targets) != rows:
        raise ValueError(
            f"Expected y with one entry per row of P ({rows} rows). Received: y.shape={targets.shape}"
        )
    if task == CLASSIFICATION:
        return predictions, checked_labels(targets, width, columns="P")
    return predictions, checked_regression_targets(targets, width)


def named_labels(labels: Any, classes: Sequence[str] | None, what: str = "y", *, emitted: bool = True) -> Any:
    """Labels given by name (strings, or bytes) as their column indices among `classes` (an
    ensemble's labels), an error naming the first row whose label is none of them; integer
    labels as they came, once `check_integer_labels` found them unambiguous (`emitted`: some
    member emits the ensemble's order as it comes); any other labels as they came
    (`checked_labels` judges them)."""
    array = np.asarray(labels)
    if classes is not None and array.ndim == 1 and array.dtype.kind in "iu":
        check_integer_labels(array, classes, emitted=emitted, what=what)
    if classes is None or array.ndim != 1 or array.dtype.kind not in "OSU":
        return labels
    text = [v.decode() if isinstance(v, bytes) else v for v in array.tolist()]
    if not all(isinstance(v, str) for v in text):
        return labels
    index = {label: i for i, label in enumerate(classes)}
    unknown = next((row for row, label in enumerate(text) if label not in index), None)
    if unknown is not None:
        raise EnsembleError(
            f"{what}, row {unknown}: label {text[unknown]!r} is none of the ensemble's classes "
            f"{list(classes)}."
        )
    return np.array([index[label] for label in text], dtype=np.int64)


def checked_labels(
    labels: Any,
    classes: int | None,
    *,
    what: str = "y",
    door: str = "",
    columns: str = "the predictions",
) -> np.ndarray:
    """`labels` as int64 class labels `(rows,)` in `[0, classes)` (`classes` None: any >= 0);
    an error naming the first bad row otherwise. `what` names the argument, `door` the
    function (a prefix of the message), `columns` what the classes are the columns of."""
    labels = np.asarray(labels)
    prefix = _prefix(door)
    if labels.dtype.kind == "b" and classes is not None and classes > 2:
        raise EnsembleError(
            f"{prefix}Expected integer class labels in {what}, 0 to {classes - 1} for the {classes} "
            f"columns of {columns}. Received: booleans, which name only classes 0 and 1 (a mask "
            "given for the labels?)."
        )
    if labels.dtype.kind == "O":  # numbers held as objects are numbers; anything else is not
        with contextlib.suppress(TypeError, ValueError):
            labels = labels.astype(np.float64)
    if labels.ndim != 1:
        raise EnsembleError(
            f"{prefix}Expected integer class labels, shape (rows,), in {what}. Received: shape "
            f"{labels.shape} and dtype {labels.dtype}.{_shape_hint(labels, what)}"
        )
    if labels.dtype.kind not in "biuf":
        first = labels[0] if len(labels) else None
        first = first.item() if isinstance(first, np.generic) else first
        raise EnsembleError(
            f"{prefix}Expected integer class labels in {what}, 0 to K - 1 for the K columns of "
            f"{columns}. Received: dtype {labels.dtype} (row 0: {first!r}). Encode them first: "
            f"sklearn.preprocessing.LabelEncoder().fit_transform({what}) numbers the classes "
            "0 to K - 1 in sorted order, which must be the order of the columns; keep the "
            "encoder to name the predicted classes (encoder.classes_). Or name the classes "
            "(load_member(..., classes=[...]) or build_ensemble(..., classes=[...])): an ensemble "
            "whose classes are named takes its labels by name."
        )
    if labels.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            fractional = ~np.isfinite(labels) | (labels != np.round(labels))
        if fractional.any():
            row = int(np.argmax(fractional))
            raise EnsembleError(
                f"{prefix}Expected integer class labels in {what}. Received: dtype {labels.dtype} "
                f"with non-integer values (row {row}: {labels[row].item()!r}): regression targets?"
            )
    labels = labels.astype(np.int64)
    bad = labels < 0 if classes is None else (labels < 0) | (labels >= classes)
    if bad.any():
        row = int(np.argmax(bad))
        outside = np.unique(labels[bad])
        expected = "class labels >= 0" if classes is None else f"class labels in [0, {classes})"
        hint = ""
        if classes is not None and labels.min() >= 1 and labels.max() == classes:
            hint = f" Labels 1..{classes}? Subtract 1: the first column is class 0."
        raise EnsembleError(
            f"{prefix}Expected {expected} in {what}, one per column of {columns}. Received labels "
            f"{outside[:10].tolist()} (labels from {labels.min()} to {labels.max()}): row {row} has "
            f"label {labels[row]}, the first outside.{hint}"
        )
    checked: np.ndarray = labels
    return checked


def sum_tolerance(dtype: Any) -> float:
    """How far a row of probabilities of `dtype` may sum from 1: `SUM_ATOL`, or looser for a
    type whose rounding alone moves a sum further (float16)."""
    dtype = np.dtype(dtype)
    return max(SUM_ATOL, 2 * float(np.finfo(dtype).eps)) if dtype.kind == "f" else SUM_ATOL


def probability_problem(values: Any, tolerance: float = SUM_ATOL) -> str | None:
    """What the first row of `values` `(rows, classes)` that is no probability vector holds:
    a value outside [0, 1] (`PROBABILITY_ATOL`) or a sum other than 1 (`tolerance`); None when
    every row is one. A single column (a binary classifier's) is only held to [0, 1]. Rows are
    judged `_CHUNK_ROWS` at a time, so no float64 copy of a large array is made."""
    values = np.asarray(values)
    values = values.reshape(len(values), -1)
    first: tuple[int, np.ndarray] | None = None
    count = 0
    for start in range(0, len(values), _CHUNK_ROWS):
        chunk = values[start : start + _CHUNK_ROWS].astype(np.float64)
        bad = _bad_probability_rows(chunk, tolerance)
        count += int(bad.sum())
        if first is None and bad.any():
            row = int(np.argmax(bad))
            first = (start + row, chunk[row])
    if first is None:
        return None
    row, value = first
    shown = np.array2string(value[:6], precision=4, separator=", ")[:-1]
    shown += ", ...]" if len(value) > 6 else "]"
    if not np.isfinite(value).all():
        problem = "holds NaN or an infinity"
    elif value.min() < -PROBABILITY_ATOL:
        problem = f"holds {value.min():.4g}, below 0"
    elif value.max() > 1 + PROBABILITY_ATOL:
        problem = f"holds {value.max():.4g}, above 1"
    else:
        problem = f"sums to {value.sum():.6g}"
    return f"row {row} {problem} ({shown}; {count} such row(s) of {len(values)})"


def _bad_probability_rows(values: np.ndarray, tolerance: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        outside = ((values < -PROBABILITY_ATOL) | (values > 1 + PROBABILITY_ATOL)).any(axis=1)
        bad: np.ndarray = outside | ~np.isfinite(values).all(axis=1)
        if values.shape[1] > 1:
            bad |= np.abs(values.sum(axis=1) - 1) > tolerance
    return bad


def check_probabilities(values: Any, what: str, *, hint: str = "") -> None:
    """An error unless every row of `values` `(rows, classes)` is a probability vector (as a
    member's outputs must be), naming the first row that is not."""
    array = np.asarray(values)
    problem = probability_problem(array, sum_tolerance(array.dtype))
    if problem is not None:
        raise EnsembleError(
            f"Expected {what} to be class probabilities: each value in [0, 1] (within "
            f"{PROBABILITY_ATOL:g}), each row summing to 1 (within {sum_tolerance(array.dtype):g}). "
            f"Received: {problem}. Logits or log-probabilities? Apply a softmax (np.exp to "
            f"log-probabilities) first.{hint}"
        )


def _prefix(door: str) -> str:
    return f"{door}: " if door else ""


def _shape_hint(labels: np.ndarray, what: str) -> str:
    if labels.ndim == 2 and labels.shape[1] == 1:
        return f" A column of labels? Pass {what}.ravel()."
    if labels.ndim == 2 and labels.dtype.kind in "biuf" and labels.size:
        one_hot = np.isin(labels, (0, 1)).all() and bool((labels.sum(axis=1) == 1).all())
        if one_hot:
            return f" One-hot rows? Pass {what}.argmax(-1)."
    return ""


def checked_regression_targets(targets: np.ndarray, width: int) -> np.ndarray:
    if targets.dtype.kind not in "iuf":
        raise ValueError(f"Expected numeric regression targets. Received: y of dtype {targets.dtype}")
    matrix = targets[:, None] if targets.ndim == 1 else targets
    if matrix.ndim != 2 or matrix.shape[1] != width:
        accepted = f"(rows,) or (rows, {width})" if width == 1 else f"(rows, {width})"
        raise ValueError(
            f"Expected regression targets of shape {accepted}, one column per "
            f"column of P. Received: y.shape={targets.shape}"
        )
    if non_finite(matrix).any():
        raise ValueError("Expected finite regression targets. Received: NaN or inf in y")
    return matrix.astype(np.float64)
