"""Exports on disk: an unversioned export is a plain directory, replaced by a directory exchange;
a base of versions `base/<n>/` is the layout TF Serving reads.

An unversioned export at `runs/export` is an ordinary directory: `shutil.rmtree`,
`shutil.copytree`, `cp -r` and `tar` handle it as any other. An overwrite writes the new export
in a staging folder beside it (`runs/.export.partial-<pid>-<random>/export`), then exchanges the
two directories in one step, Linux `renameat2(RENAME_EXCHANGE)` or macOS
`renamex_np(RENAME_SWAP)`, and deletes the old tree, now in the staging folder. Every `open`
under `runs/export` finds the old export or the new one, whole; a process that holds files of
the old one open keeps reading them (the old tree is unlinked, never rewritten).

Fallback, where there is no exchange (other systems) or the filesystem refuses it (EINVAL,
ENOSYS, EOPNOTSUPP: some network filesystems): the old directory is renamed aside into the
staging folder, then the new one renamed in. For the moment between these two renames
`runs/export` is absent; a writer killed there leaves the old export aside, and the next writer
to the path renames it back before anything else.

Writers of one path take turns: each holds `flock` on `runs/.export.lock`, removed when it is
done. What a killed writer left (staging folders, `.export.lock`, and the `.export.link-*` or
`.export.versions/` store of exports written as symlinks by earlier versions of this code) is
removed by the next writer; an export that is such a symlink becomes a plain directory at its
next overwrite, by the same exchange.

One load is several opens: `tf.saved_model.load` reads `saved_model.pb`, then `variables/`
(about 0.3 s later for a small ensemble), so a load that spans an overwrite can pair one export's
graph with the next one's variables. `ExportWatch` tells whether the export at a path is still
the one read: the `stamp` of its directory and manifest (inode, mtime, size: two `stat`s), and
when that changed, the manifest's `identity` (new at every export). The registry takes one
before each load and looks again after it (loading again when it changed), and before every
answer.

A version is written in a staging folder inside its base (`.partial-<pid>-<random>`, which no
integer parser takes for a version) and renamed to `<n>` in one step, so a version is complete
or absent. The highest number ever published is recorded in `base/.highest-version` (a file, no
version to TF Serving), so a removed newest version's number is never handed out again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ensemble.atomic import atomic_path, remove_abandoned, remove_entry, staging_dir, swap_into_place

try:
    import fcntl
except ImportError:  # Windows: no flock; writers of one path must not overlap
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "HIGHEST",
    "MANIFEST",
    "ExportWatch",
    "export_dir",
    "highest_published",
    "list_versions",
    "prune",
    "publish",
    "stamp",
    "swap_in",
]

STAGING = ".partial-"
RETIRED = ".retired-"
HIGHEST = ".highest-version"  # the highest version number ever published in a base
MANIFEST = os.path.join("assets.extra", "manifest.json")  # what makes a directory an export
_VERSION = re.compile(r"[0-9]+")


def list_versions(base: str) -> list[int]:
    """The versions under `base`, ascending: its sub-directories named by an integer (as TF
    Serving parses them); staging folders, files and other names are no version."""
    return sorted({number for number, _ in _versions(base)})


def highest_published(base: str) -> int:
    """The highest version ever published in `base` (recorded, or on disk); 0 for none."""
    try:
        with open(os.path.join(base, HIGHEST)) as f:
            recorded = int(f.read().strip() or 0)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        recorded = 0
    return max(recorded, *list_versions(base), 0)


def publish(base: str, write: Callable[[str], None], version: int | None = None) -> int:
    """`write(directory)` a new version in a staging folder inside `base`, then rename it to
    `base/<version>` (None: one past the highest ever published, `highest_published`) in one
    step; returns the version written. Abandoned staging and retired folders go first."""
    remove_abandoned(base, RETIRED)
    with staging_dir(base, STAGING) as staging:
        written = os.path.join(staging, "export")
        write(written)
        with _locked(base):  # writers of one base choose and record numbers in turn
            highest = highest_published(base)
            number = version if version is not None else highest + 1
            while True:
                try:
                    os.rename(written, os.path.join(base, str(number)))  # fails onto a non-empty one
                    break
                except OSError as error:
                    taken = error.errno in (errno.EEXIST, errno.ENOTEMPTY)
                    if taken and version is not None:
                        raise FileExistsError(f"Version {number} of {base} already exists.") from None
                    if not taken:
                        raise
                    number += 1  # made meanwhile by a writer that is not this code
            if number > highest:
                with atomic_path(os.path.join(base, HIGHEST)) as staged, open(staged, "w") as f:
                    f.write(f"{number}\n")
    return number


def prune(base: str, keep: int, *, spare: int | None = None) -> list[int]:
    """Remove the versions of `base` beyond the newest `keep` (never `spare`): each is renamed
    aside in one step (so no reader lists a half-removed version), then deleted."""
    versions = _versions(base)
    gone = [(n, name) for n, name in versions[: max(0, len(versions) - keep)] if n != spare]
    for _, name in gone:
        retired = os.path.join(base, f"{RETIRED}{os.getpid()}-{secrets.token_hex(4)}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(os.path.join(base, name), retired)
            shutil.rmtree(retired, ignore_errors=True)
    return [n for n, _ in gone]


def stamp(directory: str, manifest: str) -> tuple[int, ...] | None:
    """What changes when the export at `directory` is replaced, republished or rewritten: the
    device, inode and mtime of the directory and of its `manifest`, and the manifest's size;
    then (`GRAPH`) the inode, mtime and size of its graph and variable index (zeros for one
    missing), which a graph written over in place, its manifest kept, changes. None when the
    directory or manifest is missing. Four `stat` calls: cheap enough before every answer."""
    try:
        folder, file = os.stat(directory), os.stat(os.path.join(directory, manifest))
    except (FileNotFoundError, NotADirectoryError):
        return None
    graph: list[int] = []
    for part in _GRAPH_FILES:
        try:
            found = os.stat(os.path.join(directory, part))
            graph += [found.st_ino, found.st_mtime_ns, found.st_size]
        except (FileNotFoundError, NotADirectoryError):
            graph += [0, 0, 0]
    return (
        folder.st_dev,
        folder.st_ino,
        folder.st_mtime_ns,
        file.st_ino,
        file.st_mtime_ns,
        file.st_size,
        *graph,
    )


_GRAPH_FILES = ("saved_model.pb", os.path.join("variables", "variables.index"))
GRAPH = slice(6, None)
"""The part of a `stamp` that is the graph's and variables' files."""


def export_dir(path: str) -> str | None:
    """The export directory `path` names, its symlinks resolved: an export, or the highest
    version of a TF Serving base `path/<n>/`; None when it names no export."""
    if os.path.isfile(os.path.join(path, MANIFEST)):
        return os.path.realpath(path)
    versions = list_versions(path) if os.path.isdir(path) else []
    for version in reversed(versions):
        candidate = os.path.join(path, str(version))
        if os.path.isfile(os.path.join(candidate, MANIFEST)):
            return os.path.realpath(candidate)
    return None


@dataclass
class ExportWatch:
    """Whether the export at `source` (`export_dir`: a TF Serving base's newest version) is
    still the one read when this was made: the directory and manifest `stamp` (two `stat`s)
    first, and when those changed, the manifest's `identity` (new at every export)."""

    source: str
    directory: str | None = field(init=False)
    stamp: tuple[int, ...] | None = field(init=False)
    identity: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.directory, self.stamp = self._now()
        self.identity = _identity(self.directory)

    def _now(self) -> tuple[str | None, tuple[int, ...] | None]:
        directory = export_dir(self.source)
        return directory, None if directory is None else stamp(directory, MANIFEST)

    def replaced(self) -> bool:
        """True when the export there now is another one (or none)."""
        directory, now = self._now()
        if now is not None and (directory, now) == (self.directory, self.stamp):
            return False
        identity = _identity(directory)
        if now is None or identity is None or identity != self.identity:
            return True
        if self.stamp is None or now[GRAPH] != self.stamp[GRAPH]:  # its graph written over
            return True
        self.directory, self.stamp = directory, now  # touched, or renamed: the same export
        return False


def _identity(directory: str | None) -> str | None:
    if directory is None:
        return None
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            identity = json.load(f).get("identity")
    except (OSError, ValueError, AttributeError):  # gone, half-read or not an object
        return None
    return identity if isinstance(identity, str) else None


def swap_in(target: str, write: Callable[[str], None], check: Callable[[], None]) -> None:
    """`write(directory)` the new export in a staging folder beside `target`, call `check()`
    (which may refuse), then put it at `target` (`_point`); the old tree and any debris go
    after. Writers of one `target` take turns (a lock beside it)."""
    parent, name = os.path.split(target)
    with _locked(os.path.join(parent, f".{name}.lock"), remove=True):
        _clean(target)
        with staging_dir(parent, f".{name}.partial-", target=target) as staging:
            written = os.path.join(staging, name)
            write(written)
            check()
            _point(written, target, os.path.join(staging, f"{name}.old"))
        _clean(target)


def _versions(base: str) -> list[tuple[int, str]]:
    try:
        with os.scandir(base) as entries:
            found = [(int(e.name), e.name) for e in entries if _VERSION.fullmatch(e.name) and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(found)


def _point(written: str, target: str, aside: str) -> None:
    """The new export in place of the old (an export, an empty directory, a symlink of earlier
    versions of this code, or nothing), in one step where the system can."""
    if os.path.isdir(target) and not os.path.islink(target) and not os.listdir(target):
        os.rmdir(target)  # an empty directory is no export to keep
    swap_into_place(written, target, aside)


def _clean(target: str) -> None:
    """Under the lock: what killed writers (of this code, or of earlier versions of it that
    made `target` a symlink into `.NAME.versions/`) left beside `target`."""
    parent, name = os.path.split(target)
    store = os.path.join(parent, f".{name}.versions")
    legacy = os.path.join(store, f"{RETIRED}legacy")
    if os.path.isdir(legacy) and not os.path.lexists(target):
        os.rename(legacy, target)  # an earlier writer was killed while `target` was aside
    remove_abandoned(parent, f".{name}.partial-", target=target)  # gives a `.old` back first
    for leftover in os.listdir(parent):
        if leftover.startswith(f".{name}.link-"):
            remove_entry(os.path.join(parent, leftover))
    if os.path.isdir(store) and not os.path.islink(target):
        shutil.rmtree(store, ignore_errors=True)  # `target` no longer points into it


@contextlib.contextmanager
def _locked(path: str, *, remove: bool = False) -> Iterator[None]:
    """Hold `flock` on `path` (a directory, or a lock file made here and, with `remove`, removed
    when released). A writer that waited for a lock file removed meanwhile takes a new one."""
    if fcntl is None:
        yield
        return
    while True:
        fd = os.open(path, os.O_RDONLY if os.path.isdir(path) else os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        os.close(fd)
