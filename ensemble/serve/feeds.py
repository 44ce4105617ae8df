"""What every serving path does to a request's values and to the model's answer: casts that lose
nothing (a fractional or out-of-range value is refused, naming the input and the first bad row),
and the non-finite-row rule of an ensemble's graph (`ensemble.graph.layers.NonFiniteRows`) for
the models that do not carry it, a member served alone: a row with a NaN or infinity in any
float input or float output is NaN in every float output; the other rows are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.rows import as_numpy

__all__ = ["bool_row", "finite_rows", "first_row", "lossless_cast", "nan_rows"]


def lossless_cast(key: str, array: np.ndarray, dtype: Any) -> np.ndarray:
    """`array` in `dtype`, or an `EnsembleError` naming input `key` and the first row whose
    value the cast would change: a fractional or non-finite value into an integer input, one
    outside the integer's range, a finite float too large for a float input, a number other
    than 0 and 1 into a bool input."""
    target = np.dtype(dtype)
    kind = array.dtype.kind
    if target.kind == "O":  # strings: TensorFlow converts them as they are
        return array
    if kind in "OSUV" and target.kind in "biuf":
        text = "strings" if kind in "SU" else "nulls, objects or mixed values"
        raise EnsembleError(f"Input {key!r} takes {target.name} numbers. Received: {text}")
    if kind == "c":
        raise EnsembleError(f"Input {key!r} takes {target.name} numbers. Received: complex values")
    if target.kind in "iu" and kind == "f":
        fraction = ~np.isfinite(array) | (array != np.trunc(array))
        _refuse(key, array, fraction, f"is not an integer, which {target.name} takes")
        low, high = (-(2.0 ** (target.itemsize * 8 - 1)), 2.0 ** (target.itemsize * 8 - 1))
        if target.kind == "u":
            low, high = 0.0, 2.0 ** (target.itemsize * 8)
        _refuse(key, array, (array < low) | (array >= high), f"is outside {target.name}'s range")
    elif target.kind in "iu" and kind in "iu" and array.size:
        info = np.iinfo(target)
        _refuse(key, array, (array < info.min) | (array > info.max), f"is outside {target.name}'s range")
    elif target.kind == "b" and kind != "b":
        _refuse(key, array, (array != 0) & (array != 1), "is not a boolean (0 or 1)")
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below
        cast = array.astype(target, copy=False)
    if target.kind == "f" and kind == "f":
        _refuse(key, array, np.isfinite(array) & ~np.isfinite(cast), f"is too large for {target.name}")
    return cast


def _refuse(key: str, array: np.ndarray, bad: np.ndarray, why: str) -> None:
    if np.any(bad):
        where = tuple(np.argwhere(np.atleast_1d(bad))[0])
        value = np.atleast_1d(array)[where].item()
        raise EnsembleError(f"Input {key!r}, row {where[0]}: {value!r} {why}.")


def first_row(mask: np.ndarray) -> int:
    """The first row (index along the first axis) where `mask` holds."""
    return int(np.argwhere(np.atleast_1d(mask))[0][0])


def bool_row(value: Any) -> int | None:
    """The first row of a parsed JSON value (nested lists) holding a `true` or `false`; None
    when it holds none (NumPy would read them as 1 and 0 among numbers)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, list):
        for i, row in enumerate(value):
            if _has_bool(row):
                return i
    return None


def _has_bool(value: Any) -> bool:
    if isinstance(value, list):
        return any(map(_has_bool, value))
    return isinstance(value, bool)


def finite_rows(call: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`call` (feeds by name -> outputs) with `nan_rows` applied to its answer, as NumPy."""

    def guarded(feeds: Mapping[str, np.ndarray]) -> Any:
        return nan_rows(feeds, as_numpy(call(feeds)))

    return guarded


def nan_rows(feeds: Mapping[str, Any], outputs: Any) -> Any:
    """`outputs` (one array or a dict of arrays) with every float output NaN on each row where
    a float feed or a float output holds a NaN or infinity; unchanged when no row does."""
    arrays = [np.asarray(value) for value in feeds.values()]
    if not arrays or arrays[0].ndim == 0:
        return outputs
    rows = len(arrays[0])
    named = isinstance(outputs, Mapping)
    values = list(outputs.values()) if named else [outputs]
    bad = None
    for array in arrays + values:
        if _per_row(array, rows):
            finite = np.isfinite(array).all(axis=tuple(range(1, array.ndim)))
            bad = ~finite if bad is None else bad | ~finite
    if bad is None or not bad.any():
        return outputs

    def poisoned(array: np.ndarray) -> np.ndarray:
        if not _per_row(array, rows):
            return array
        array = array.copy()
        array[bad] = np.nan
        return array

    if named:
        return {key: poisoned(value) for key, value in outputs.items()}
    return poisoned(outputs)


def _per_row(array: np.ndarray, rows: int) -> bool:
    """A float array with one entry per row."""
    return array.dtype.kind == "f" and array.ndim >= 1 and len(array) == rows
