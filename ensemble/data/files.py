"""Datasets from your own files: `.npz` archives and CSV files, split like the bundled ones."""

from __future__ import annotations

import csv
import math
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.preprocessing import LabelEncoder

from ensemble.data.dataset import Dataset, split_dataset
from ensemble.errors import EnsembleError
from ensemble.types import PathLike, Task

__all__ = ["load_csv", "load_npz"]

# Relative paths that are not found from the working directory are tried from here, so that
# the configs' example files load from any directory (Hydra changes it, tests change it).
_REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

# Task inference: integer-valued targets with at most this many distinct values (and fewer
# than half as many as rows) are class labels; anything else numeric is a regression target.
_MAX_INFERRED_CLASSES = 50


def load_npz(
    path: PathLike,
    *,
    x_key: str = "x",
    y_key: str = "y",
    task: Task | None = None,
    name: str | None = None,
    test_size: float = 0.2,
    holdout_size: float = 0.2,
    seed: int = 0,
    ood: Mapping[str, Any] | None = None,
) -> Dataset:
    """Load features `x_key` and targets `y_key` from the `.npz` archive at `path` and split them.

    A relative `path` is looked up from the working directory first, then from the repository
    root (the folder holding the `ensemble` package), so `conf/data/examples/wine.npz` loads
    from anywhere. `task=None` infers the task from the targets (see `load_csv`); `name`
    defaults to the file's stem. The split is that of `load_dataset`, with `source` recorded, and
    `ood` its out-of-distribution rows.
    """
    file = _resolve(path)
    if not zipfile.is_zipfile(file):
        raise EnsembleError(
            f"{file}: expected an .npz archive (a zip of .npy arrays). Received: a file that is not a zip."
        )
    with np.load(file, allow_pickle=False) as archive:
        for key in (x_key, y_key):
            if key not in archive.files:
                raise EnsembleError(
                    f"{file}: no array {key!r}. Expected one of the archive's keys: {archive.files}."
                )
        try:
            x, y = archive[x_key], archive[y_key]
        except ValueError as error:  # object arrays, which only pickle can read
            raise EnsembleError(
                f"{file}: expected plain arrays under {x_key!r} and {y_key!r}. Received: {error}"
            ) from error
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or x.ndim == 0:
        raise EnsembleError(
            f"{file}: features {x_key!r} must be a numeric array of rows. "
            f"Received: dtype {x.dtype}, shape {x.shape}."
        )
    if y.ndim == 0:
        raise EnsembleError(f"{file}: targets {y_key!r} must be an array of rows. Received: a scalar.")
    if len(x) != len(y):
        raise EnsembleError(
            f"{file}: expected as many rows of targets as of features. "
            f"Received: {x_key!r} has {len(x)} rows, {y_key!r} has {len(y)}."
        )
    x = x.reshape(len(x), -1) if x.ndim == 1 else x
    _check_finite_array(file, f"features {x_key!r}", x)
    if np.issubdtype(y.dtype, np.floating):
        _check_finite_array(file, f"targets {y_key!r}", y)
    y, task, class_names = _prepare_targets(y, task, f"{file}: targets {y_key!r}")
    return split_dataset(
        name or file.stem,
        task,
        x,
        y,
        test_size=test_size,
        holdout_size=holdout_size,
        seed=seed,
        source=str(file),
        class_names=class_names,
        ood=ood,
    )


def load_csv(
    path: PathLike,
    *,
    target: str,
    features: Sequence[str] | None = None,
    task: Task | None = None,
    name: str | None = None,
    delimiter: str = ",",
    test_size: float = 0.2,
    holdout_size: float = 0.2,
    seed: int = 0,
    ood: Mapping[str, Any] | None = None,
) -> Dataset:
    """Load a CSV with a header row: column `target` is the target, `features` (default: every
    other column) the numeric features; then split it like `load_dataset`.

    A relative `path` is looked up from the working directory first, then from the repository
    root (the folder holding the `ensemble` package), so `conf/data/examples/iris.csv` loads
    from anywhere. `task=None` infers it: integer-valued targets with at most 50 distinct values,
    and fewer than half as many as rows, are classes, non-numeric ones (names) too, the rest is
    regression. Class labels other than 0..K-1 are encoded (`LabelEncoder`, sorted) and the
    originals kept in `class_names`. `name` defaults to the file's stem.
    """
    file = _resolve(path)
    header, rows, lines = _read_csv(file, delimiter)
    if target not in header:
        raise EnsembleError(f"{file}: no target column {target!r}. Expected one of {header}.")
    if isinstance(features, str):
        features = [features]
    columns = [c for c in header if c != target] if features is None else list(features)
    for column in columns:
        if column not in header:
            raise EnsembleError(f"{file}: no feature column {column!r}. Expected one of {header}.")
    if target in columns:
        raise EnsembleError(f"{file}: the target column {target!r} is also listed in features.")
    if not columns:
        raise EnsembleError(f"{file}: expected at least one feature column besides {target!r}.")

    def values(column: str) -> list[str]:
        return [row[header.index(column)] for row in rows]

    x = np.column_stack([_numeric_column(file, column, values(column), lines) for column in columns])
    y, task, class_names = _prepare_targets(
        _target_column(file, target, values(target), lines), task, f"{file}: target {target!r}"
    )
    return split_dataset(
        name or file.stem,
        task,
        x,
        y,
        test_size=test_size,
        holdout_size=holdout_size,
        seed=seed,
        source=str(file),
        class_names=class_names,
        ood=ood,
    )


def _resolve(path: PathLike) -> Path:
    """`path` itself if absolute; else from the working directory, or from the repository root."""
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [Path.cwd() / given, _REPOSITORY_ROOT / given]
    candidates = list(dict.fromkeys(candidates))  # once, when the working directory is the root
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise EnsembleError(f"Data file {str(path)!r} not found. Expected a file at: {looked}.")


def _read_csv(file: Path, delimiter: str) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the rows (stripped fields) and each row's line number; blank lines skipped."""
    with open(file, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = [name.strip() for name in next(reader, [])]
        if not header:
            raise EnsembleError(f"{file}: expected a header row of column names. Received: an empty file.")
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise EnsembleError(f"{file}: expected unique column names. Received repeats: {repeated}.")
        rows, lines = [], []
        for row in reader:
            if not any(value.strip() for value in row):
                continue
            if len(row) != len(header):
                raise EnsembleError(
                    f"{file}, line {reader.line_num}: expected {len(header)} fields, as in the "
                    f"header. Received: {len(row)}."
                )
            rows.append([value.strip() for value in row])
            lines.append(reader.line_num)
    return header, rows, lines


def _numeric_column(file: Path, column: str, values: list[str], lines: list[int]) -> np.ndarray:
    numbers = []
    for value, line in zip(values, lines, strict=True):
        try:
            numbers.append(float(value))
        except ValueError:
            raise EnsembleError(
                f"{file}: feature column {column!r} must be numeric. Received: {value!r} on line {line}."
            ) from None
        _check_finite_cell(file, f"feature column {column!r}", numbers[-1], value, line)
    return np.array(numbers, dtype="float64")


def _check_finite_cell(file: Path, what: str, number: float, value: str, line: int) -> None:
    if not math.isfinite(number):
        raise EnsembleError(
            f"{file}: {what} holds {value!r} on line {line}. Expected a finite number: drop or "
            "impute the row before training on it."
        )


def _check_finite_array(file: Path, what: str, values: np.ndarray) -> None:
    if values.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(values.reshape(len(values), -1))
    if bad.any():
        rows, columns = np.nonzero(bad)
        raise EnsembleError(
            f"{file}: {what} holds {int(bad.sum())} NaN or infinite value(s), first at row "
            f"{int(rows[0])}, column {int(columns[0])} (of the row flattened). Expected finite "
            "numbers: drop or impute those rows before training on them."
        )


def _target_column(file: Path, column: str, values: list[str], lines: list[int]) -> np.ndarray:
    """Numbers if every value is one, else the values as strings (class names)."""
    for value, line in zip(values, lines, strict=True):
        if not value:
            raise EnsembleError(f"{file}: target {column!r} is empty on line {line}. Expected a value.")
    try:
        numbers = [float(value) for value in values]
    except ValueError:
        return np.array(values, dtype=str)
    for number, value, line in zip(numbers, values, lines, strict=True):
        _check_finite_cell(file, f"target {column!r}", number, value, line)
    return np.array(numbers, dtype="float64")


def _prepare_targets(
    y: np.ndarray, task: Task | None, where: str
) -> tuple[np.ndarray, Task, list[str] | None]:
    """Targets as the library wants them (int64 labels 0..K-1, or float32), the task, class names."""
    if task not in (None, "classification", "regression"):
        raise EnsembleError(f"Expected task 'classification', 'regression' or None. Received: task={task!r}.")
    if y.dtype == bool:
        y = y.astype("int64")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    numeric = bool(np.issubdtype(y.dtype, np.number))
    if task is None:
        task = "classification" if not numeric or (y.ndim == 1 and _looks_like_labels(y)) else "regression"
    if task == "regression":
        if not numeric:
            raise EnsembleError(
                f"{where}: task='regression' needs numeric targets. Received: {y[:3].tolist()}..."
            )
        return y.astype("float32"), task, None
    if y.ndim != 1:
        raise EnsembleError(f"{where}: classification needs one label per row. Received: shape {y.shape}.")
    if numeric and bool(np.all(y == np.round(y))):
        y = y.astype("int64")
        if np.array_equal(np.unique(y), np.arange(len(np.unique(y)))):
            return y, task, None
    encoder = LabelEncoder().fit(y)
    labels = np.asarray(encoder.transform(y), dtype="int64")
    return labels, task, [str(label) for label in encoder.classes_.tolist()]


def _looks_like_labels(y: np.ndarray) -> bool:
    """Integer-valued, with few distinct values: at most 50, and fewer than half the rows."""
    if not bool(np.all(np.isfinite(y))) or not bool(np.all(y == np.round(y))):
        return False
    distinct = len(np.unique(y))
    return distinct <= _MAX_INFERRED_CLASSES and distinct < len(y) / 2
