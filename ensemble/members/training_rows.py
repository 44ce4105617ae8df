"""The record of a member's training rows (hashes of them, beside its file): what the leakage
guard checks. Members this project trains carry one; `record_training_rows` gives one to a
member trained by your own script."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ensemble.atomic import save_array
from ensemble.rows import flat_features
from ensemble.types import Data, PathLike

__all__ = ["load_training_rows", "record_training_rows", "row_hashes", "training_rows_path"]


def row_hashes(x: Data) -> np.ndarray:
    """A 64-bit hash of each row's values (uint64, one per row)."""
    matrix = np.ascontiguousarray(flat_features(x))
    return np.array(
        [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in matrix],
        dtype="uint64",
    )


def training_rows_path(source: PathLike) -> str:
    """Where the training-row record of a member saved at `source` lives: beside it."""
    return os.fspath(source).rstrip("/") + ".training_rows.npy"


def record_training_rows(source: PathLike, x: Data) -> str:
    """Record which rows trained the member saved at `source` (their hashes, sorted, beside
    it), so the leakage guard refuses to fit a combiner on them; returns the record's path.

    `x` is what the model was fitted on, as the ensemble feeds it (one array, or named arrays
    keyed by the member's input names)."""
    path = training_rows_path(source)
    save_array(path, np.unique(row_hashes(x)))
    return path


def load_training_rows(source: PathLike) -> np.ndarray | None:
    """The training-row record beside `source`, or None when it has none."""
    path = training_rows_path(source)
    return np.load(path) if os.path.exists(path) else None
