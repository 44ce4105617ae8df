"""Whether a served model's files on disk are still the ones loaded (invariant 8): the registry
asks before every answer and loads again when they are not.

An exported ensemble is watched by its manifest's identity (`ensemble.export.versions.ExportWatch`).
A member file, a member's SavedModel directory, a checkpoint or an `.onnx` file carries no
identity, so `FileWatch` compares what `os.stat` says of the files a load reads (device, inode,
modification time, size): a file replaced by `os.replace`, rewritten in place or deleted is a
change; one only opened is not. The cost is a few `stat` calls per answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["FileWatch", "Watch", "file_stamp"]

# What a load reads inside a directory or beside a checkpoint prefix: a SavedModel's graph and
# its variables' index, a TF checkpoint's index (and `checkpoint` file naming the newest).
_INSIDE = ("saved_model.pb", os.path.join("variables", "variables.index"), "checkpoint")
_BESIDE = (".index",)


class Watch(Protocol):
    """What the registry asks of a loaded model's source before answering."""

    def replaced(self) -> bool:
        """True when the model on disk now is not the one loaded (or is gone)."""
        ...


def file_stamp(path: str) -> tuple[tuple[int, ...], ...]:
    """The (device, inode, mtime_ns, size) of each file a load of `path` reads that exists now
    (the path itself, what a SavedModel directory or checkpoint prefix holds); empty when none
    does."""
    candidates = [
        path,
        *(os.path.join(path, name) for name in _INSIDE),
        *(path + suffix for suffix in _BESIDE),
    ]
    stamps = []
    for candidate in candidates:
        try:
            info = os.stat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            continue
        stamps.append((info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(stamps)


@dataclass
class FileWatch:
    """Whether the files at `path` (a member source or an `.onnx` file) and at `also` (what the
    load reads besides, e.g. a checkpoint's `architecture` file) are those stamped when this was
    made, which is before the load reads them: a replacement during the load is seen at the next
    answer."""

    path: str
    also: tuple[str, ...] = ()
    stamp: tuple[tuple[tuple[int, ...], ...], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.stamp = self._now()

    def _now(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        return tuple(file_stamp(path) for path in (self.path, *self.also))

    def replaced(self) -> bool:
        now = self._now()
        return not now[0] or now != self.stamp
