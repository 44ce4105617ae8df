"""What the level-one store keys on, and its entries on disk, each validated before use.

A member's key is `member_fingerprint` (`ensemble.members.fingerprint`, re-exported here): a
hash of what is loaded in memory, never of its files, its configuration and all its weights.

An entry is one `.npz` file: the predictions (float32, `(rows, width)`), their sha256 and the
key they belong to. It is used only when all of these match; anything else (truncated,
garbage, another shape or dtype, unreadable) is reported with a warning naming the file and
recomputed. Entries are written atomically, so no reader sees half of one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings

import numpy as np

from ensemble.atomic import atomic_path
from ensemble.members.fingerprint import member_fingerprint
from ensemble.rows import update_digest

__all__ = ["entry_path", "member_fingerprint", "read_entry", "write_entry"]

log = logging.getLogger(__name__)

_EXTENSION = ".npz"


def entry_path(directory: str, key: str) -> str:
    return os.path.join(directory, key + _EXTENSION)


def read_entry(path: str, key: str, rows: int, width: int | None) -> np.ndarray | None:
    """The predictions stored at `path` for `key`, or None when there are none or they are not
    valid (then a warning names the file and why: the caller recomputes and rewrites them)."""
    if not os.path.lexists(path):
        return None
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a bare array, not this cache's .npz archive")
        with loaded as entry:
            values = np.asarray(entry["values"])
            checksum = str(entry["sha256"])
            stored_key = str(entry["key"])
    except Exception as error:  # Truncated, garbage, not an archive, unreadable: never fatal.
        _invalid(path, f"unreadable ({type(error).__name__}: {error})")
        return None
    expected = (rows, width if width is not None else "any")
    if stored_key != key:
        _invalid(path, f"it holds the entry {stored_key!r}")
    elif values.dtype != np.float32:
        _invalid(path, f"dtype {values.dtype}, expected float32")
    elif values.ndim != 2 or values.shape[0] != rows or width not in (None, values.shape[1]):
        _invalid(path, f"shape {values.shape}, expected {expected}")
    elif _sha256(values) != checksum:
        _invalid(path, "its values do not match their sha256")
    else:
        return values
    return None


def write_entry(path: str, key: str, values: np.ndarray) -> None:
    """Store `values` (float32, 2-D) for `key` at `path`, atomically: the file appears at its
    path complete or not at all, and concurrent writers of one key never mix."""
    values = np.ascontiguousarray(values, dtype="float32")  # one member's (rows, width) at most
    checksum = _sha256(values)
    with atomic_path(path, what="level-one cache entry") as staged, open(staged, "wb") as f:
        np.savez(f, values=values, sha256=np.array(checksum), key=np.array(key))


def _sha256(values: np.ndarray) -> str:
    digest = hashlib.sha256()
    update_digest(digest, values)
    return digest.hexdigest()


def _invalid(path: str, reason: str) -> None:
    message = f"Level-one cache entry {path} is not valid: {reason}. Recomputing it."
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=5)  # the caller of predictions
