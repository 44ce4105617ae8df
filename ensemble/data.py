"""Bundled datasets (scikit-learn's copies, nothing downloaded) split reproducibly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn import datasets
from sklearn.model_selection import train_test_split

from ensemble.errors import EnsembleError
from ensemble.types import Task

__all__ = ["Dataset", "SKLEARN_DATASETS", "load_dataset"]

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


def load_dataset(
    name: str, *, test_size: float = 0.2, holdout_size: float = 0.2, seed: int = 0
) -> Dataset:
    """Load scikit-learn's bundled `name` and split it, stratified for classification."""
    if name not in SKLEARN_DATASETS:
        raise EnsembleError(
            f"Unknown dataset {name!r}. Expected one of {sorted(SKLEARN_DATASETS)}."
        )
    loader, task = SKLEARN_DATASETS[name]
    x, y = loader(return_X_y=True)
    x = x.astype("float32")
    y = y.astype("int64" if task == "classification" else "float32")
    stratify = y if task == "classification" else None
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=stratify
    )
    stratify = y_rest if task == "classification" else None
    x_train, x_holdout, y_train, y_holdout = train_test_split(
        x_rest, y_rest, test_size=holdout_size / (1 - test_size), random_state=seed,
        stratify=stratify,
    )
    classes = int(y.max()) + 1 if task == "classification" else None
    split = {"seed": seed, "test_size": test_size, "holdout_size": holdout_size,
             "rows": {"train": len(x_train), "holdout": len(x_holdout), "test": len(x_test)}}
    return Dataset(name, task, x_train, y_train, x_holdout, y_holdout, x_test, y_test, classes, split)
