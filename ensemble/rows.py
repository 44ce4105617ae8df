"""How data reaches a model: one array, a dict of named arrays, or a list in input order."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError
from ensemble.types import Data, Tensor

__all__ = [
    "as_numpy",
    "data_fingerprint",
    "flat_features",
    "in_batches",
    "input_values",
    "row_count",
    "take_rows",
    "update_digest",
]

# Bytes hashed at a time from an array that is not C-contiguous (one such chunk is copied).
_CHUNK_BYTES = 1 << 24


def as_numpy(outputs: Any) -> Any:
    """A model's output as NumPy: one array, or a dict of arrays by output name."""
    if isinstance(outputs, Mapping):
        return {key: np.asarray(value) for key, value in outputs.items()}
    return np.asarray(outputs)


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


def take_rows(x: Data, rows: np.ndarray) -> Data:
    """`rows` (indices or a mask) of `x`: one array, or arrays by input name."""
    if isinstance(x, Mapping):
        return {name: np.asarray(values)[rows] for name, values in x.items()}
    taken: np.ndarray = np.asarray(x)[rows]
    return taken


def flat_features(x: Data) -> np.ndarray:
    """Each row as one float32 vector: named inputs flattened and joined in name order.

    What the passthrough combiner sees (`FlatFeatures`), and what row hashes are taken of.
    """
    parts = [x[k] for k in sorted(x)] if isinstance(x, Mapping) else [x]
    rows = row_count(x)
    return np.concatenate([np.asarray(p, dtype="float32").reshape(rows, -1) for p in parts], axis=1)


def in_batches(
    run: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    feeds: Mapping[str, np.ndarray],
    batch_size: int,
) -> dict[str, np.ndarray]:
    """`run` on `feeds` (arrays by input name) `batch_size` rows at a time, its outputs joined
    by name; a feed of no rows runs once, for empty outputs of the right shapes."""
    rows = len(next(iter(feeds.values())))
    chunks = [
        run({name: np.ascontiguousarray(value[i : i + batch_size]) for name, value in feeds.items()})
        for i in range(0, max(rows, 1), batch_size)
    ]
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}


def data_fingerprint(x: Data) -> str:
    """A hash of a whole dataset: its shapes, dtypes and values (their bytes in C order).

    Nothing of the size of `x` is copied: a C-contiguous array's buffer is hashed in place,
    any other array a chunk of rows at a time (`update_digest`).
    """
    digest = hashlib.sha256()
    for name, value in sorted(x.items()) if isinstance(x, Mapping) else [("", x)]:
        array = np.asarray(value)
        if array.ndim == 0:  # as np.ascontiguousarray gives it, which these keys were made with
            array = array.reshape(1)
        digest.update(f"{name}|{array.shape}|{array.dtype}|".encode())
        update_digest(digest, array)
    return digest.hexdigest()


def update_digest(digest: Any, array: np.ndarray) -> None:
    """Feed `digest` the bytes `array.tobytes()` would give, without making them: a
    C-contiguous array's own buffer, or else contiguous copies of a few rows at a time."""
    if array.dtype.hasobject:  # no buffer of values to hash: as before, what tobytes gives
        digest.update(array.tobytes())
    elif array.flags.c_contiguous:
        digest.update(array.reshape(-1).view(np.uint8))
    else:
        rows = max(1, _CHUNK_BYTES // max(1, array[0].nbytes))
        for start in range(0, len(array), rows):
            digest.update(np.ascontiguousarray(array[start : start + rows]).reshape(-1).view(np.uint8))
