"""How a model with named inputs accepts them: a dict by name, a list in order, or one tensor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ensemble.types import Tensor

__all__ = ["input_values"]


def input_values(inputs: Tensor, names: Sequence[str]) -> list[Tensor]:
    """`inputs` as a list in the order of `names`."""
    if isinstance(inputs, Mapping):
        return [inputs[name] for name in names]
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    return [inputs]
