"""Fingerprints of data rows and members: cache keys, and the record the leakage guard checks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from ensemble._inputs import flat_features

__all__ = [
    "data_fingerprint",
    "load_training_rows",
    "member_fingerprint",
    "row_hashes",
    "save_training_rows",
    "training_rows_path",
]


def row_hashes(x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
    """A 64-bit hash of each row's values (uint64, one per row)."""
    matrix = np.ascontiguousarray(flat_features(x))
    return np.array(
        [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
         for row in matrix],
        dtype="uint64",
    )


def data_fingerprint(x: np.ndarray | Mapping[str, np.ndarray]) -> str:
    """A hash of a whole dataset: its shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name, value in (sorted(x.items()) if isinstance(x, Mapping) else [("", x)]):
        array = np.ascontiguousarray(value)
        digest.update(f"{name}|{array.shape}|{array.dtype}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def member_fingerprint(member: Any) -> str:
    """A hash of what a member computes: its identity, its Keras weights, its SavedModel files."""
    digest = hashlib.sha256(
        f"{member.name}|{member.format}|{member.output_kind}|{member.output_key}".encode()
    )
    for weight in member.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    directory = getattr(member.model, "filepath", None)  # a SavedModelLayer's source
    if directory and os.path.isdir(directory):
        for root, _, files in sorted(os.walk(directory)):
            for name in sorted(files):
                with open(os.path.join(root, name), "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


def training_rows_path(source: str) -> str:
    """Where the training-row record of a member saved at `source` lives: beside it."""
    return os.fspath(source).rstrip("/") + ".training_rows.npy"


def save_training_rows(source: str, x: np.ndarray | Mapping[str, np.ndarray]) -> str:
    """Record which rows trained the member saved at `source` (their hashes, sorted)."""
    path = training_rows_path(source)
    save_array(path, np.unique(row_hashes(x)))
    return path


def save_array(path: str, values: np.ndarray) -> None:
    """`np.save` to `path` atomically: written under a unique name beside it (concurrent
    writers never mix), then renamed; a failed write leaves nothing behind."""
    handle, partial = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial",
                                       dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(handle, "wb") as f:
            np.save(f, values)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise


def load_training_rows(source: str) -> np.ndarray | None:
    """The training-row record beside `source`, or None when it has none."""
    path = training_rows_path(source)
    return np.load(path) if os.path.exists(path) else None
