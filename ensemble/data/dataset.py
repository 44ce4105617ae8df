"""A dataset split reproducibly into train (members), holdout (combiner) and test rows;
scikit-learn's bundled copies by name (nothing is downloaded)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn import datasets
from sklearn.model_selection import train_test_split

from ensemble.data.ood import ood_rows
from ensemble.errors import EnsembleError
from ensemble.types import Task

__all__ = ["SKLEARN_DATASETS", "Dataset", "load_dataset", "split_dataset"]

SKLEARN_DATASETS: dict[str, tuple[Any, Task]] = {
    "digits": (datasets.load_digits, "classification"),
    "wine": (datasets.load_wine, "classification"),
    "breast_cancer": (datasets.load_breast_cancer, "classification"),
    "diabetes": (datasets.load_diabetes, "regression"),
}


@dataclass
class Dataset:
    """Features and targets split into train (members), holdout (combiner) and test rows."""

    name: str
    task: Task
    x_train: np.ndarray
    y_train: np.ndarray
    x_holdout: np.ndarray
    y_holdout: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int | None
    split: dict[str, Any] = field(default_factory=dict)
    # The label of each class 0..K-1 (classification): the names the source gives them (iris'
    # species, scikit-learn's `target_names`), else the integers' text.
    class_names: list[str] | None = None
    # The out-of-distribution rows `data.ood` names (one per test row, `ensemble.data.ood`), and
    # that spec; None when the config names none.
    x_ood: np.ndarray | None = None
    ood: dict[str, Any] | None = None


def load_dataset(
    name: str,
    *,
    test_size: float = 0.2,
    holdout_size: float = 0.2,
    seed: int = 0,
    ood: Mapping[str, Any] | None = None,
) -> Dataset:
    """Load scikit-learn's bundled `name` and split it, stratified for classification; `ood`
    (`{kind, seed}`, see `ensemble.data.ood`) adds out-of-distribution rows."""
    if name not in SKLEARN_DATASETS:
        raise EnsembleError(f"Unknown dataset {name!r}. Expected one of {sorted(SKLEARN_DATASETS)}.")
    loader, task = SKLEARN_DATASETS[name]
    bunch = loader()
    x, y = bunch.data, bunch.target.astype("int64" if task == "classification" else "float32")
    names = [str(label) for label in bunch.target_names] if task == "classification" else None
    return split_dataset(
        name,
        task,
        x,
        y,
        test_size=test_size,
        holdout_size=holdout_size,
        seed=seed,
        source=None,
        class_names=names,
        ood=ood,
    )


def split_dataset(
    name: str,
    task: Task,
    x: np.ndarray,
    y: np.ndarray,
    *,
    test_size: float,
    holdout_size: float,
    seed: int,
    source: str | None,
    class_names: list[str] | None = None,
    ood: Mapping[str, Any] | None = None,
) -> Dataset:
    """Split rows into train, holdout and test (stratified for classification), seeded; with
    `ood`, the out-of-distribution rows it names, built from the test rows."""
    if not (test_size > 0 and holdout_size > 0 and test_size + holdout_size < 1):
        raise EnsembleError(
            "Expected test_size > 0, holdout_size > 0 and test_size + holdout_size < 1. "
            f"Received: test_size={test_size}, holdout_size={holdout_size}."
        )
    where = source or name
    if len(x) < 3:
        raise EnsembleError(f"{where}: expected at least 3 rows, one per split. Received: {len(x)}.")
    if task == "classification":
        labels, counts = np.unique(y, return_counts=True)
        if counts.min() < 3:
            rare = int(labels[counts.argmin()])
            label = class_names[rare] if class_names else rare
            raise EnsembleError(
                f"{where}: class {label!r} has {counts.min()} row(s); a stratified train/holdout/test "
                "split needs at least 3 rows of every class."
            )
    x = x.astype("float32")
    try:
        x_rest, x_test, y_rest, y_test = train_test_split(
            x,
            y,
            test_size=test_size,
            random_state=seed,
            stratify=y if task == "classification" else None,
        )
        x_train, x_holdout, y_train, y_holdout = train_test_split(
            x_rest,
            y_rest,
            test_size=holdout_size / (1 - test_size),
            random_state=seed,
            stratify=y_rest if task == "classification" else None,
        )
    except ValueError as error:
        raise EnsembleError(
            f"{where}: {len(x)} rows are too few for test_size={test_size}, "
            f"holdout_size={holdout_size}: {error}"
        ) from error
    classes = len(np.unique(y)) if task == "classification" else None
    if classes is not None and class_names is None:
        class_names = [str(label) for label in range(classes)]
    split: dict[str, Any] = {
        "seed": seed,
        "test_size": test_size,
        "holdout_size": holdout_size,
        "rows": {"train": len(x_train), "holdout": len(x_holdout), "test": len(x_test)},
    }
    if source is not None:
        split["source"] = source
    spec = None if ood is None else {str(k): v for k, v in ood.items()}
    x_ood = None if spec is None else ood_rows(spec, x_test, x_train)
    return Dataset(
        name,
        task,
        x_train,
        y_train,
        x_holdout,
        y_holdout,
        x_test,
        y_test,
        classes,
        split,
        class_names,
        x_ood,
        spec,
    )
