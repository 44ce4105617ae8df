"""Atomic writes: a file or directory appears at its path complete, or not at all.

Every writer of this project (member files, training-row records, level-one caches, exports,
TFLite files, figures) writes into a private staging folder beside the target, then renames the
result into place. Readers never see a half-written file, concurrent writers never mix, and a
failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np

from ensemble.types import PathLike

__all__ = ["atomic_path", "save_array"]


@contextlib.contextmanager
def atomic_path(target: PathLike, *, overwrite: bool = True, what: str = "file") -> Iterator[str]:
    """A fresh path to write `target` at (a file or a directory, same base name, so its
    extension is kept); moved into place when the block completes, removed when it fails.

    An existing `target` is replaced only once the new one is complete, and only with
    `overwrite` (otherwise one that appeared meanwhile is a `FileExistsError` naming `what` was
    being written); an existing directory is first renamed aside, then removed.
    """
    target = os.path.abspath(os.fspath(target))
    parent, base = os.path.split(target)
    staging = tempfile.mkdtemp(prefix=f".{base}.partial-", dir=parent)
    try:
        written = os.path.join(staging, base)
        yield written
        if not os.path.lexists(written):
            raise FileNotFoundError(f"Nothing was written for {target}.")
        _move_into_place(written, target, os.path.join(staging, base + ".old"), overwrite, what)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(written: str, target: str, retired: str, overwrite: bool, what: str) -> None:
    if os.path.isdir(target) and not os.listdir(target) and os.path.isdir(written):
        os.rmdir(target)  # an empty directory is no export to keep
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(
            f"{target} was created while this {what} was written; pass overwrite=True to replace it."
        )
    if not os.path.isdir(target):
        os.replace(written, target)  # atomic for a file, or onto a missing path
        return
    os.rename(target, retired)  # os.replace cannot replace a non-empty directory
    try:
        os.rename(written, target)
    except BaseException:
        os.rename(retired, target)  # put the old one back
        raise


def save_array(path: PathLike, values: np.ndarray) -> None:
    """`np.save` to `path` (which should end in `.npy`) atomically."""
    with atomic_path(path) as staged, open(staged, "wb") as f:
        np.save(f, values)
