"""The one serving-function builder: a model's call as a `tf.function` over its named inputs,
with a dynamic batch dimension, traced once for every batch size.

The SavedModel's signatures, `compiled_predict` and the registry's compiled members are all
this function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

__all__ = ["input_specs", "serving_function"]


def input_specs(model: keras.Model) -> list[tf.TensorSpec]:
    """One `TensorSpec` per model input, named after it, its batch dimension None."""
    structure = model.input
    tensors = list(structure.values()) if isinstance(structure, Mapping) else keras.tree.flatten(structure)
    names = list(structure) if isinstance(structure, Mapping) else [tensor.name for tensor in tensors]
    return [tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=n) for t, n in zip(tensors, names, strict=True)]


def serving_function(
    model: Callable[..., Any],
    specs: Sequence[tf.TensorSpec],
    *,
    output: str | None = None,
    jit_compile: bool = False,
) -> Any:
    """`model` in inference mode as a `tf.function` taking one positional tensor per spec.

    A single input reaches the model as one tensor, several as a dict by spec name; `output`
    keeps one key of a dict output (under the same key).
    """
    names = [spec.name for spec in specs]

    def serve(*tensors: Any) -> Any:
        feed = tensors[0] if len(tensors) == 1 else dict(zip(names, tensors, strict=True))
        outputs = model(feed, training=False)
        return outputs if output is None else {output: outputs[output]}

    return tf.function(serve, input_signature=list(specs), jit_compile=jit_compile)
