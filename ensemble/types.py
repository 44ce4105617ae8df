"""Type aliases that keep annotations free of backend imports (as keras-rs does)."""

from __future__ import annotations

import os
from typing import Any, Literal, Union

Tensor = Any
"""A backend tensor (a `tf.Tensor` here) or a NumPy array."""

PathLike = Union[str, "os.PathLike[str]"]

Task = Literal["classification", "regression"]
OutputKind = Literal["probabilities", "logits"]
