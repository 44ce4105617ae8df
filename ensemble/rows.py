"""How data reaches a model: one array, a dict of named arrays, or a list in input order."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.types import Data, Tensor

__all__ = ["data_fingerprint", "flat_features", "input_values", "row_count"]


def input_values(inputs: Tensor, names: Sequence[str]) -> list[Tensor]:
    """`inputs` as a list in the order of `names`."""
    if isinstance(inputs, Mapping):
        return [inputs[name] for name in names]
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    return [inputs]


def row_count(x: Data) -> int:
    """The rows of `x`; named inputs must agree on it."""
    if not isinstance(x, Mapping):
        return len(x)
    if not x:
        raise EnsembleError("Expected at least one named input. Received: x={}")
    rows = {name: len(values) for name, values in x.items()}
    if len(set(rows.values())) > 1:
        raise EnsembleError(f"Expected every named input to have the same rows. Received: rows={rows}")
    return next(iter(rows.values()))


def flat_features(x: Data) -> np.ndarray:
    """Each row as one float32 vector: named inputs flattened and joined in name order.

    What the passthrough combiner sees (`FlatFeatures`), and what row hashes are taken of.
    """
    parts = [x[k] for k in sorted(x)] if isinstance(x, Mapping) else [x]
    rows = row_count(x)
    return np.concatenate([np.asarray(p, dtype="float32").reshape(rows, -1) for p in parts], axis=1)


def data_fingerprint(x: Data) -> str:
    """A hash of a whole dataset: its shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name, value in sorted(x.items()) if isinstance(x, Mapping) else [("", x)]:
        array = np.ascontiguousarray(value)
        digest.update(f"{name}|{array.shape}|{array.dtype}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
