"""The record of a member's training rows (the rows themselves): what the leakage guard checks.
Members this project trains carry one; `record_training_rows` gives one to a member trained by
your own script.

A record is found by what the member is, not by the path it was loaded from: copies, symbolic
and hard links and moved files stay guarded. It is written in two places:

- beside the model's file (links resolved): `<file>.training_rows.npy`, the rows alone (a
  float32 matrix, as earlier versions wrote it; or their sorted uint64 hashes, `row_hashes`,
  from older ones, which the guard matches exactly);
- in a store keyed by the model's content fingerprint (`content_fingerprint`): a folder named
  by `ENSEMBLE_TRAINING_ROWS_DIR`, else `$XDG_CACHE_HOME/ensemble/training_rows` (default
  `~/.cache/ensemble/training_rows`), or the `store` argument. An entry `<fingerprint>.npz`
  holds the rows, the fingerprint and the path recorded.

Beside the record, `<file>.training_rows.json` names the model it was made for (its content
fingerprint) and the record's own sha256: it travels with the files, so a copy of the files with
another model saved over it, or a file replaced on a machine whose store never saw it, is told
apart from the model the record was made for.

`load_member` takes the record beside the file when it was made for the model there, else the
store's record of that model's content. A record beside a file that now holds another model
(replaced after recording) is refused, with a warning naming both. A record made before its
model was saved (as the zoo does), or by an earlier version, is bound to the model the first
time one loads it. A damaged record is an `EnsembleError` naming its file.

The rows are float32 `(rows, features)`, as the ensemble feeds them
(`ensemble.rows.flat_features`: named inputs flattened and joined in name order).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, NamedTuple

import numpy as np

from ensemble.atomic import atomic_path, save_array
from ensemble.errors import EnsembleError
from ensemble.rows import flat_features
from ensemble.types import Data, PathLike

__all__ = [
    "STORE_VARIABLE",
    "Record",
    "find_training_rows",
    "is_hash_record",
    "load_training_rows",
    "read_record",
    "record_training_rows",
    "row_hashes",
    "training_rows_path",
    "training_rows_store",
]

log = logging.getLogger(__name__)

STORE_VARIABLE = "ENSEMBLE_TRAINING_ROWS_DIR"
"""The environment variable naming the store of records keyed by content fingerprint."""
_SUFFIX = ".training_rows.npy"
_HOW = "Record it again with ensemble.record_training_rows(source, x_train)"


class Record(NamedTuple):
    """A record read back: its rows, and for an entry of the store the fingerprint of the model
    it was made for and where it was recorded ("" for a record beside a file)."""

    rows: np.ndarray
    fingerprint: str
    source: str


def row_hashes(x: Data) -> np.ndarray:
    """A 64-bit hash of each row's float32 values (uint64, one per row): exact identity, what
    records of the previous format hold."""
    matrix = np.ascontiguousarray(flat_features(x))
    return np.array(
        [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in matrix],
        dtype="uint64",
    )


def training_rows_path(source: PathLike) -> str:
    """Where the record of a member saved at `source` lives beside it (links resolved)."""
    return os.path.realpath(os.fspath(source)) + _SUFFIX


def training_rows_store(store: PathLike | None = None) -> str:
    """The folder of records keyed by content fingerprint: `store`, else the one
    `ENSEMBLE_TRAINING_ROWS_DIR` names, else the user cache's `ensemble/training_rows`."""
    if store is not None:
        return os.fspath(store)
    named = os.environ.get(STORE_VARIABLE)
    if named:
        return named
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "ensemble", "training_rows")


def record_training_rows(
    source: PathLike, x: Data, *, store: PathLike | None = None, **load_options: Any
) -> str:
    """Record which rows trained the member saved at `source`, so the leakage guard refuses to
    fit a combiner on them, or on copies of them within its float tolerance; returns the path
    of the record beside `source` (written atomically, as the store's).

    `x` is what the model was fitted on, as the ensemble feeds it (one array, or named arrays
    keyed by the member's input names). Its values must be finite: the guard compares rows by
    distance. When `source` exists it is loaded (with `load_options`, those of `load_member`,
    e.g. a checkpoint's `architecture`) to take its fingerprint; a record made before the model
    is saved is bound to it when it is first loaded. Recording again replaces the record."""
    where = os.fspath(source)
    rows = np.ascontiguousarray(flat_features(x), dtype="float32")
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if bad.size:
        raise EnsembleError(
            f"Expected finite training rows to record for {where!r}. Received "
            f"non-finite values in {bad.size} row(s), the first at row {int(bad[0])}."
        )
    fingerprint = _fingerprint_of(where, load_options)
    path = training_rows_path(where)
    save_array(path, rows)
    if fingerprint:
        try:
            _write(_stored_path(fingerprint, store), Record(rows, fingerprint, os.path.realpath(where)))
            _note_binding(path, fingerprint)
        except OSError as error:
            log.warning(
                "Cannot write the training-row record of %s into the store %s (%s): copies of it "
                "elsewhere are unguarded. Set %s to a writable folder.",
                where, training_rows_store(store), error, STORE_VARIABLE,
            )  # fmt: skip
    return path


def is_hash_record(record: np.ndarray) -> bool:
    """Whether `record` is of the previous format: sorted uint64 row hashes, matched exactly."""
    return record.ndim == 1 and record.dtype == np.uint64


def read_record(path: str) -> Record:
    """The record in the file `path`; an `EnsembleError` naming it when it is damaged."""
    try:
        with open(path, "rb") as f:
            loaded = np.load(f, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                missing = sorted({"rows", "fingerprint", "source"} - set(loaded.files))
                if missing:
                    raise ValueError(f"an archive without {missing}")
                record = Record(loaded["rows"], str(loaded["fingerprint"]), str(loaded["source"]))
            else:  # a bare matrix or row hashes: a record of an earlier version
                record = Record(loaded, "", "")
    except FileNotFoundError:
        raise
    except Exception as error:  # Truncated, garbage, object arrays: never numpy's bare words.
        raise EnsembleError(
            f"The training-row record {path!r} is damaged: {type(error).__name__}: {error}. {_HOW}, "
            "or delete the file (its member is then unguarded)."
        ) from error
    rows = record.rows
    if not is_hash_record(rows) and (rows.ndim != 2 or rows.dtype != np.float32):
        problem = f"{rows.dtype} of shape {rows.shape}"
    elif not is_hash_record(rows) and not np.isfinite(rows).all():
        problem = "non-finite values"
    else:
        return record
    raise EnsembleError(
        f"Expected a training-row record at {path!r}: a float32 (rows, features) matrix of finite "
        f"values, or uint64 row hashes. Received: {problem}. {_HOW}."
    )


def load_training_rows(source: PathLike) -> np.ndarray | None:
    """The rows of the record beside `source`, or None when it has none: a float32 matrix
    `(rows, features)`, or, for a record of the previous format, its uint64 row hashes."""
    path = training_rows_path(source)
    return read_record(path).rows if os.path.exists(path) else None


def find_training_rows(
    source: PathLike, fingerprint: str, *, name: str, store: PathLike | None = None
) -> np.ndarray | None:
    """The rows of the record of member `name`, loaded from `source` with content
    `fingerprint`: the one beside `source` unless it was made for another model, else the
    store's; None when it has none (a record beside it made for another model is then named in
    a warning with `source`). A record beside it bound to no model yields to the store's record
    of this content: a record changed without `record_training_rows` never weakens the guard."""
    beside, stored = training_rows_path(source), _stored_path(fingerprint, store)
    record = read_record(beside) if os.path.exists(beside) else None
    owner = "" if record is None else _bound_to(beside)
    if record is not None and not owner and os.path.exists(stored):
        entry = read_record(stored)
        if entry.fingerprint == fingerprint:  # this very model's, bound when it was recorded
            log.warning(
                "Member %r: the training-row record %s is not the one bound to this model (content "
                "%s...; changed since, or copied from elsewhere): the store's record of it (%d rows) "
                "is used. Record again (record_training_rows) if its training rows changed.",
                name, beside, fingerprint[:12], len(entry.rows),
            )  # fmt: skip
            return entry.rows
    if record is not None and owner in ("", fingerprint):
        try:  # bound to this model: copies of it, and a replacement of it, are told apart
            if not owner:  # made before its model, or by an earlier version: bound now
                log.warning(
                    "Member %r: the training-row record %s names no model (recorded before the "
                    "model was saved, or by an earlier version): it is taken as the record of "
                    "the model now at %s (content %s...) and bound to it. Record after saving "
                    "to bind a record to its model when it is made.",
                    name, beside, os.fspath(source), fingerprint[:12],
                )  # fmt: skip
                _note_binding(beside, fingerprint)
            if not os.path.exists(stored):
                _write(stored, Record(record.rows, fingerprint, beside))
        except OSError as error:
            log.warning("Cannot store the training-row record %s for copies of it: %s", beside, error)
        return record.rows
    if os.path.exists(stored):
        entry = read_record(stored)
        if entry.fingerprint != fingerprint:
            raise EnsembleError(f"The training-row record {stored!r} is not this model's. {_HOW}.")
        return entry.rows
    if record is not None:
        log.warning(
            "Member %r: the training-row record %s was made for another model (content %s...), "
            "not the one now at %s (content %s...): it is not used, and the leakage guard cannot "
            "check this member. %s.",
            name, beside, owner[:12], os.fspath(source), fingerprint[:12], _HOW,
        )  # fmt: skip
    return None


def _fingerprint_of(source: str, load_options: dict[str, Any]) -> str:
    """The content fingerprint of the model at `source`, or "" when there is none yet (or it
    cannot be loaded without options the caller did not give)."""
    from ensemble.members.fingerprint import content_fingerprint
    from ensemble.members.load import read_member  # load_member reads records: import late

    try:
        member = read_member(source, name="recorded", **load_options)
    except EnsembleError as error:
        if load_options:
            raise
        if os.path.exists(source):
            log.info("The record for %s is bound to its model when it is first loaded: %s", source, error)
        return ""
    return content_fingerprint(member)


def _stored_path(fingerprint: str, store: PathLike | None) -> str:
    return os.path.join(training_rows_store(store), fingerprint + ".npz")


def _write(path: str, record: Record) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_path(path, what="training-row record") as staged, open(staged, "wb") as f:
        np.savez(
            f, rows=record.rows, fingerprint=np.array(record.fingerprint), source=np.array(record.source)
        )


def _binding_path(beside: str) -> str:
    """The note beside a record naming the model it was made for: `<file>.training_rows.json`.
    It travels with the record (a copy of the files copies it) and holds the record's own
    content hash, so recording again (or another record copied over it) unbinds it."""
    return beside[: -len(".npy")] + ".json"


def _identity(path: str) -> str:
    """Which record `path` holds: the sha256 of its bytes (a copy keeps it, a new record not)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _note_binding(beside: str, fingerprint: str) -> None:
    note = {"fingerprint": fingerprint, "record_sha256": _identity(beside)}
    with atomic_path(_binding_path(beside), what="training-row binding") as staged, open(staged, "w") as f:
        json.dump(note, f)


def _bound_to(beside: str) -> str:
    """The fingerprint of the model the record `beside` was made for (or bound to at its first
    load), while it is the same record; "" when it never was, or was recorded again since."""
    try:
        with open(_binding_path(beside)) as f:
            note = json.load(f)
        same = note["record_sha256"] == _identity(beside)
        return str(note["fingerprint"]) if same else ""
    except (OSError, ValueError, KeyError, TypeError):  # no note, or an unreadable one: unbound
        return ""
