"""Type aliases that keep annotations free of backend imports (as keras-rs does), and the task
names. The combiner layers sit below this package, so the task names and the tensor alias are
defined once there (`combiners.base`) and only re-exported here."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal, Union

import numpy as np

from combiners.base import CLASSIFICATION, MULTILABEL, REGRESSION, TASKS, Task, Tensor

__all__ = [
    "CLASSIFICATION",
    "MULTILABEL",
    "REGRESSION",
    "TASKS",
    "Data",
    "OutputKind",
    "PathLike",
    "Task",
    "Tensor",
]

PathLike = Union[str, "os.PathLike[str]"]

OutputKind = Literal["probabilities", "logits"]

Data = np.ndarray | Mapping[str, np.ndarray]
"""Rows for a model: one array, or named arrays with the same number of rows."""
