"""Exports on disk, in versions: `base/<n>/` as TF Serving reads them, and an unversioned path
that is a symlink to the newest version of a hidden store beside it, swapped in one step.

Layout of an unversioned export at `runs/export`:

    runs/export -> .export.versions/3      (a relative symlink)
    runs/.export.versions/3/               (the SavedModel)

A version is written in a staging folder inside its base (`.partial-<pid>-<random>`, which no
integer parser takes for a version) and renamed to `<n>` in one step, so a version is complete
or absent. An overwrite publishes the next version in the store, then replaces the symlink with
`os.replace` (one `rename(2)`): every `open` under `runs/export` at any instant resolves to one
complete version, and a writer killed at any point leaves the old or the new one there.

One load is several opens: `tf.saved_model.load` reads `saved_model.pb`, then (about 0.3 s
later for a small ensemble) `variables/`, each through the path, so a load that spans a swap
can pair the graph of one version with the variables of the next and fail. A reader that must
never fail resolves the link once, `tf.saved_model.load(os.path.realpath(path))`, as TF Serving
resolves `base/<n>`; for such readers the replaced version stays in the store until the next
export to the path is in place (then it, and whatever a killed writer left, is removed).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator

from ensemble.atomic import exchange, remove_abandoned, remove_entry, staging_dir

try:
    import fcntl
except ImportError:  # Windows: no store of versions, the path is a plain directory
    fcntl = None  # type: ignore[assignment]

__all__ = ["LINKS", "current_version", "list_versions", "prune", "publish", "store_of", "swap_in"]

STAGING = ".partial-"
RETIRED = ".retired-"
LINKS = os.name == "posix" and fcntl is not None  # where the unversioned path is a symlink
_VERSION = re.compile(r"[0-9]+")


def list_versions(base: str) -> list[int]:
    """The versions under `base`, ascending: its sub-directories named by an integer (as TF
    Serving parses them); staging folders, files and other names are no version."""
    return sorted({number for number, _ in _versions(base)})


def publish(base: str, write: Callable[[str], None], version: int | None = None) -> int:
    """`write(directory)` a new version in a staging folder inside `base`, then rename it to
    `base/<version>` (None: one past the highest) in one step; returns the version written.
    Abandoned staging and retired folders of `base` are removed first."""
    remove_abandoned(base, RETIRED)
    with staging_dir(base, STAGING) as staging:
        written = os.path.join(staging, "export")
        write(written)
        while True:
            number = version if version is not None else max(list_versions(base), default=0) + 1
            try:
                os.rename(written, os.path.join(base, str(number)))  # fails onto a non-empty one
                return number
            except OSError as error:
                taken = error.errno in (errno.EEXIST, errno.ENOTEMPTY)
                if taken and version is not None:
                    raise FileExistsError(f"Version {number} of {base} already exists.") from None
                if not taken:
                    raise  # else another writer took this number meanwhile: take the next


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


def store_of(target: str) -> str:
    """The hidden store of versions of the unversioned export at `target`."""
    parent, name = os.path.split(target)
    return os.path.join(parent, f".{name}.versions")


def current_version(target: str) -> int | None:
    """The version of the store that `target` points at; None when it is not such a symlink."""
    if not os.path.islink(target):
        return None
    pointed = os.path.normpath(os.path.join(os.path.dirname(target), os.readlink(target)))
    folder, name = os.path.split(pointed)
    return int(name) if folder == store_of(target) and _VERSION.fullmatch(name) else None


def swap_in(target: str, write: Callable[[str], None], check: Callable[[], None]) -> int:
    """Publish `write`'s export in the store of `target`, call `check()` (which may refuse),
    then point `target` at it in one step; the replaced export and any debris go after.
    Writers of one `target` take turns (a lock on its store)."""
    store = store_of(target)
    with _locked(store):
        replaced = current_version(target)
        older = [n for n in list_versions(store) if replaced is not None and n < replaced]
        _clean(target, store, spare=max(older, default=None))  # the one it replaced stays too
        number = publish(store, write)
        try:
            check()
            _point(target, store, number)
        finally:
            _clean(target, store, spare=replaced)  # ours when refused; the replaced one stays
    return number


def _versions(base: str) -> list[tuple[int, str]]:
    try:
        with os.scandir(base) as entries:
            found = [(int(e.name), e.name) for e in entries if _VERSION.fullmatch(e.name) and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(found)


def _point(target: str, store: str, number: int) -> None:
    parent, name = os.path.split(target)
    link = os.path.join(parent, f".{name}.link-{os.getpid()}-{secrets.token_hex(4)}")
    os.symlink(os.path.join(os.path.basename(store), str(number)), link, target_is_directory=True)
    if not os.path.isdir(target) or os.path.islink(target):
        os.replace(link, target)  # onto a symlink or nothing: one rename(2)
        return
    # A real directory (an export of an earlier version of this code, or an empty one).
    if not exchange(link, target):  # where no one-step swap exists, a moment with no export
        os.rename(target, os.path.join(store, f"{RETIRED}legacy"))
        os.replace(link, target)
    shutil.rmtree(link, ignore_errors=True)  # the old directory now sits at `link`'s name


def _clean(target: str, store: str, *, spare: int | None) -> None:
    """Under the store's lock: everything in the store but the version `target` points at (and
    `spare`), and the symlinks (or swapped-out directories) a killed writer left beside it."""
    legacy = os.path.join(store, f"{RETIRED}legacy")
    if os.path.isdir(legacy) and not os.path.lexists(target):
        os.rename(legacy, target)  # a writer was killed in the moment below: give it back
    current = current_version(target)
    with os.scandir(store) as entries:
        for entry in entries:
            if entry.name not in (str(current), str(spare)):
                remove_entry(entry.path)
    parent, name = os.path.split(target)
    for leftover in os.listdir(parent):
        if leftover.startswith(f".{name}.link-"):
            remove_entry(os.path.join(parent, leftover))
    remove_abandoned(parent, f".{name}.partial-")  # staging folders of earlier versions of this code


@contextlib.contextmanager
def _locked(store: str) -> Iterator[None]:
    """Hold `flock` on the store directory itself (no lock file); remove the store when it is
    left empty. A writer that waited for a store removed meanwhile makes it again."""
    while True:
        os.makedirs(store, exist_ok=True)
        fd = os.open(store, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(store)):
                break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(store)  # only when empty
        os.close(fd)
