"""Atomic writes: a file or directory appears at its path complete, or not at all.

Every writer of this project (member files, training-row records, level-one caches, exports,
TFLite files, figures) writes into a private staging folder beside the target, then renames the
result into place. Readers never see a half-written file, concurrent writers never mix.

A staging folder is named `<prefix><pid>-<random>` and holds `.lock`, which its writer keeps
locked (`flock`) while it writes. A writer killed outright (`kill -9`, power loss) leaves its
folder behind; the next writer to the same place removes it once nobody holds its lock (the
kernel drops the lock with the process), or, where the folder has no lock, once the pid in its
name is gone (or, with no pid, once it is an hour old: the folders of earlier versions).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import cast

import numpy as np

from ensemble.types import PathLike

try:
    import fcntl
except ImportError:  # Windows: no flock; abandoned folders are told by their pid alone
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK",
    "atomic_path",
    "exchange",
    "remove_abandoned",
    "remove_abandoned_writes",
    "remove_entry",
    "save_array",
    "staging_dir",
    "swap_into_place",
]

LOCK = ".lock"
STALE_SECONDS = 3600.0  # the age past which a folder with neither lock nor pid is abandoned
_PID = re.compile(r"([0-9]+)-")


@contextlib.contextmanager
def atomic_path(target: PathLike, *, overwrite: bool = True, what: str = "file") -> Iterator[str]:
    """A fresh path to write `target` at (a file or a directory, same base name, so its
    extension is kept); moved into place when the block completes, removed when it fails.

    An existing `target` is replaced only once the new one is complete, and only with
    `overwrite` (otherwise one that appeared meanwhile is a `FileExistsError` naming `what` was
    being written). A directory is swapped with the new one in one step where the system can
    (Linux), else renamed aside first. Abandoned staging folders of `target` are removed first.
    """
    target = os.path.abspath(os.fspath(target))
    parent, base = os.path.split(target)
    with staging_dir(parent, f".{base}.partial-", target=target) as staging:
        written = os.path.join(staging, base)
        yield written
        if not os.path.lexists(written):
            raise FileNotFoundError(f"Nothing was written for {target}.")
        _move_into_place(written, target, os.path.join(staging, base + ".old"), overwrite, what)


def save_array(path: PathLike, values: np.ndarray) -> None:
    """`np.save` to `path` (which should end in `.npy`) atomically."""
    with atomic_path(path) as staged, open(staged, "wb") as f:
        np.save(f, values)


@contextlib.contextmanager
def staging_dir(parent: str, prefix: str, *, target: str | None = None) -> Iterator[str]:
    """A fresh folder `parent/<prefix><pid>-<random>`, locked while the block runs and removed
    after it; abandoned ones of the same prefix are removed first (see `remove_abandoned`)."""
    remove_abandoned(parent, prefix, target=target)
    staging = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
    lock = _lock(os.path.join(staging, LOCK), wait=True)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def remove_abandoned(parent: str, prefix: str, *, target: str | None = None) -> list[str]:
    """Remove the entries of `parent` named `<prefix>...` that no live writer uses: a folder
    whose `.lock` nobody holds; without a lock, one whose pid is not alive (none in this
    process), or with no pid either, one older than an hour. Returns the paths removed.

    A folder that holds `<basename of target>.old` (a writer killed between renaming `target`
    aside and renaming the new one in, where no one-step swap exists) gives it back first.
    """
    try:
        names = sorted(n for n in os.listdir(parent) if n.startswith(prefix))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in names:
        path = os.path.join(parent, name)
        match = _PID.match(name[len(prefix) :])
        try:
            lock = _lock(os.path.join(path, LOCK), wait=False)
        except BlockingIOError:
            continue  # its writer is alive
        except OSError:  # not a folder
            lock = None
        if lock is None and not _abandoned(path, match):
            continue
        try:
            old = os.path.join(path, os.path.basename(target) + ".old") if target else ""
            if target and os.path.lexists(old) and not os.path.lexists(target):
                os.rename(old, target)
            remove_entry(path)
            removed.append(path)
        finally:
            if lock is not None:
                os.close(lock)
    return removed


_STAGING_NAME = re.compile(r"\.(.+)\.partial-[0-9]+-")


def remove_abandoned_writes(parent: str) -> list[str]:
    """Remove what `atomic_path` writers of any target in `parent` left when killed (their
    `.NAME.partial-<pid>-...` folders, `remove_abandoned`'s rules): for a folder of many
    targets each written once (a cache), where no later write of the same target clears them."""
    try:
        names = os.listdir(parent)
    except (FileNotFoundError, NotADirectoryError):
        return []
    bases = sorted({match[1] for match in map(_STAGING_NAME.match, names) if match})
    return [
        path
        for base in bases
        for path in remove_abandoned(parent, f".{base}.partial-", target=os.path.join(parent, base))
    ]


def exchange(a: str, b: str) -> bool:
    """Swap the entries at `a` and `b` in one step (Linux `renameat2(RENAME_EXCHANGE)`, macOS
    `renamex_np(RENAME_SWAP)`; any mix of file, directory and symlink); False, with nothing
    done, where the system or the filesystem cannot (ENOSYS, EINVAL, EOPNOTSUPP, ENOTSUP)."""
    call = _exchange_call()
    if call is None:
        return False
    if call(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False  # an old kernel, or a filesystem without it (some network ones)
    raise OSError(code, os.strerror(code), a, None, b)


_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def _exchange_call() -> Callable[[bytes, bytes], int] | None:
    """`(a, b) -> 0 or -1 (errno set)`, the system's one-step exchange; None where it has none."""
    if sys.platform.startswith("linux"):
        name, argtypes = (
            "renameat2",
            [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint],
        )
    elif sys.platform == "darwin":
        name, argtypes = "renamex_np", [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
    else:
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), name, None)  # glibc >= 2.28, macOS 10.12
    if function is None:
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    call = cast("Callable[..., int]", function)
    if name == "renamex_np":
        return lambda a, b: call(a, b, 0x2)  # RENAME_SWAP
    return lambda a, b: call(-100, a, -100, b, 0x2)  # AT_FDCWD, RENAME_EXCHANGE


def swap_into_place(written: str, target: str, aside: str) -> bool:
    """Put the directory `written` at `target`, whose existing entry (a directory, or a symlink
    to one) ends at `written`'s name, to be removed by the caller. One step where `exchange`
    can (True); else `target` is renamed to `aside`, then `written` to `target` (False): for
    the moment between the two renames `target` is absent, and a writer killed there leaves
    the old entry at `aside` (`remove_abandoned` gives it back). Nothing at `target`: one rename.
    """
    if not os.path.lexists(target):
        os.rename(written, target)
        return True
    if exchange(written, target):
        return True
    os.rename(target, aside)  # os.replace cannot replace a non-empty directory
    try:
        os.rename(written, target)
    except BaseException:
        os.rename(aside, target)  # put the old one back
        raise
    os.rename(aside, written)  # where the caller removes the old one, as after an exchange
    return False


def _lock(path: str, *, wait: bool) -> int | None:
    """An open descriptor holding `flock(LOCK_EX)` on `path` (created when `wait`); None without
    flock or (not `wait`) without the file; `BlockingIOError` when another holds it."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if wait else 0), 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _abandoned(path: str, pid: re.Match[str] | None) -> bool:
    if pid is None:
        try:
            return time.time() - os.lstat(path).st_mtime > STALE_SECONDS
        except FileNotFoundError:
            return False
    number = int(pid[1])
    if number == os.getpid():
        return False
    try:
        os.kill(number, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False  # alive, as another user
    return False


def remove_entry(path: str) -> None:
    """Remove a folder with what it holds, or a file or symlink; nothing when it is gone."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


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
    swap_into_place(written, target, retired)  # the old one ends at `written`, removed with the staging
