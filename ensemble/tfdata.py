"""Rows from a `tf.data.Dataset`: every entry point that takes `(x, y)` arrays also takes a
dataset of batches `(x, y)` (x a tensor or a dict of named inputs), as Keras' `fit` does.

The batches are read once, in order, into arrays, and everything after the door sees exactly
what the same rows given as arrays would give: the checks, the leakage guard, the level-one
cache and the fits. The rows are held in memory as arrays would be (a dataset larger than
memory is refused by NumPy, not streamed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import tensorflow as tf

from ensemble.errors import EnsembleError
from ensemble.types import Data

__all__ = ["Labels", "arrays_of", "is_dataset"]

Labels = Literal["required", "optional", "ignored"]
"""What the door expects of `y`: `required` (the fits, evaluation, conformal, calibration),
`optional` (distillation's hard labels), `ignored` (predictions: a dataset's labels dropped)."""


def is_dataset(x: Any) -> bool:
    return isinstance(x, tf.data.Dataset)


def arrays_of(x: Any, y: Any = None, *, where: str, labels: Labels = "required") -> tuple[Data, Any]:
    """`(x, y)` as arrays: as given unless `x` is a `tf.data.Dataset`, then its batches joined.

    A dataset carries its labels: `y` must be None. Its elements are batches `(x, y)`, or `x`
    alone where labels are not required; x a tensor or a dict of named inputs. A dataset that
    repeats forever, that is not batched, holds no rows, or whose batches disagree in rows,
    names or shapes is refused with the batch named; so are sample weights (`(x, y, w)`),
    which no fit here takes. String labels come back as text. `where` names the caller.
    """
    if not is_dataset(x):
        if y is None and labels == "required":
            raise EnsembleError(
                f"{where}: expected y, the labels of x's rows (or x a tf.data.Dataset of (x, y) "
                "batches). Received: y=None"
            )
        return x, y
    if y is not None:
        raise EnsembleError(
            f"{where}: a tf.data.Dataset carries its own labels, as elements (x, y). Expected "
            f"y=None. Received: y of type {type(y).__name__}"
        )
    if int(x.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise EnsembleError(
            f"{where}: the dataset repeats forever; its rows must end (drop .repeat(), or .take(n) batches)."
        )
    spec = x.element_spec
    paired = isinstance(spec, tuple) and len(spec) == 2
    if isinstance(spec, tuple) and len(spec) == 3:
        raise EnsembleError(f"{where}: elements (x, y, sample_weight): no fit here takes sample weights.")
    if labels == "required" and not paired:
        raise EnsembleError(f"{where}: expected dataset elements (x, y). Received: element_spec={spec}")
    xs: list[Data] = []
    ys: list[np.ndarray] = []
    for index, element in enumerate(x.as_numpy_iterator()):
        batch_x, batch_y = element if paired else (element, None)
        xs.append(_batch(batch_x, batch_y, index, where))
        if batch_y is not None:
            ys.append(np.asarray(batch_y))
    if not xs:
        raise EnsembleError(f"{where}: the dataset holds no rows.")
    rows = _joined(xs, where)
    if labels == "ignored" or not ys:
        return rows, None
    targets = np.concatenate(ys)
    if targets.dtype.kind in "OS":  # tf.string labels arrive as bytes
        targets = np.asarray([t.decode() if isinstance(t, bytes) else t for t in targets.ravel()]).reshape(
            targets.shape
        )
    return rows, targets


def _batch(batch_x: Any, batch_y: Any, index: int, where: str) -> Data:
    """One batch's inputs, checked: batched (a leading row axis), rows agreeing with its labels."""
    parts = dict(batch_x) if isinstance(batch_x, Mapping) else {"": batch_x}
    counts = {}
    for name, value in parts.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise EnsembleError(
                f"{where}: batch {index}, input {name or 'x'!r} is a scalar: the dataset is not "
                "batched. Call .batch(n) on it, as for Keras' fit."
            )
        parts[name] = value
        counts[name or "x"] = len(value)
    if batch_y is not None:
        label = np.asarray(batch_y)
        if label.ndim == 0:
            raise EnsembleError(
                f"{where}: batch {index}, y is a scalar: the dataset is not batched. Call .batch(n) on "
                "it, as for Keras' fit."
            )
        counts["y"] = len(label)
    if len(set(counts.values())) > 1:
        raise EnsembleError(f"{where}: batch {index} disagrees in rows: {counts}")
    return parts if isinstance(batch_x, Mapping) else parts[""]


def _joined(batches: list[Data], where: str) -> Data:
    first = batches[0]
    if not isinstance(first, Mapping):
        try:
            return np.concatenate([np.asarray(batch) for batch in batches])
        except ValueError as error:
            raise EnsembleError(f"{where}: the batches disagree in shape: {error}") from None
    names = sorted(first)
    for index, batch in enumerate(batches):
        if not isinstance(batch, Mapping) or sorted(batch) != names:
            raise EnsembleError(
                f"{where}: batch {index} has inputs {sorted(batch) if isinstance(batch, Mapping) else 'x'}; "
                f"batch 0 has {names}."
            )
    try:
        return {name: np.concatenate([np.asarray(batch[name]) for batch in batches]) for name in names}
    except ValueError as error:
        raise EnsembleError(f"{where}: the batches disagree in shape: {error}") from None
