"""The record of a member's training rows (the rows themselves, beside its file): what the
leakage guard checks. Members this project trains carry one; `record_training_rows` gives one
to a member trained by your own script.

The record is `<file>.training_rows.npy`: a float32 matrix `(rows, features)` of the training
rows as the ensemble feeds them (`ensemble.rows.flat_features`: named inputs flattened and
joined in name order), 4 bytes per feature per row. Records of the previous format hold
sorted uint64 hashes of each row's float32 bytes instead (`row_hashes`); they are still read,
and the guard matches them exactly (see `ensemble.fitting.guard`).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ensemble.atomic import save_array
from ensemble.errors import EnsembleError
from ensemble.rows import flat_features
from ensemble.types import Data, PathLike

__all__ = [
    "is_hash_record",
    "load_training_rows",
    "record_training_rows",
    "row_hashes",
    "training_rows_path",
]


def row_hashes(x: Data) -> np.ndarray:
    """A 64-bit hash of each row's float32 values (uint64, one per row): exact identity, what
    records of the previous format hold."""
    matrix = np.ascontiguousarray(flat_features(x))
    return np.array(
        [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in matrix],
        dtype="uint64",
    )


def training_rows_path(source: PathLike) -> str:
    """Where the training-row record of a member saved at `source` lives: beside it."""
    return os.fspath(source).rstrip("/") + ".training_rows.npy"


def record_training_rows(source: PathLike, x: Data) -> str:
    """Record which rows trained the member saved at `source` (the rows themselves, float32,
    beside it, written atomically), so the leakage guard refuses to fit a combiner on them,
    or on copies of them within its float tolerance; returns the record's path.

    `x` is what the model was fitted on, as the ensemble feeds it (one array, or named arrays
    keyed by the member's input names). Its values must be finite: the guard compares rows by
    distance. Recording again replaces the record."""
    rows = np.ascontiguousarray(flat_features(x), dtype="float32")
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if bad.size:
        raise EnsembleError(
            f"Expected finite training rows to record for {os.fspath(source)!r}. Received "
            f"non-finite values in {bad.size} row(s), the first at row {int(bad[0])}."
        )
    path = training_rows_path(source)
    save_array(path, rows)
    return path


def is_hash_record(record: np.ndarray) -> bool:
    """Whether `record` is of the previous format: sorted uint64 row hashes, matched exactly."""
    return record.ndim == 1 and record.dtype == np.uint64


def load_training_rows(source: PathLike) -> np.ndarray | None:
    """The training-row record beside `source`, or None when it has none: a float32 matrix
    `(rows, features)`, or, for a record of the previous format, its uint64 row hashes."""
    path = training_rows_path(source)
    if not os.path.exists(path):
        return None
    record: np.ndarray = np.load(path, allow_pickle=False)
    if is_hash_record(record):
        return record
    if record.ndim != 2 or record.dtype != np.float32:
        raise EnsembleError(
            f"Expected a training-row record at {path!r}: a float32 (rows, features) matrix, or "
            f"uint64 row hashes. Received: {record.dtype} of shape {record.shape}. Record it "
            "again with ensemble.record_training_rows(source, x_train)."
        )
    return record
