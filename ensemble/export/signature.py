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

__all__ = ["class_labels", "input_specs", "serving_function"]


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
    classes: Sequence[str] | None = None,
) -> Any:
    """`model` in inference mode as a `tf.function` taking one positional tensor per spec.

    A single input reaches the model as one tensor, several as a dict by spec name; `output`
    keeps one key of a dict output (under the same key). `classes` (labels, with the full
    output dict) adds a `classes` output: each row's labels, as TF Serving's classify answers
    them beside their scores, outside any XLA compilation (XLA has no strings).
    """
    names = [spec.name for spec in specs]

    def serve(*tensors: Any) -> Any:
        feed = tensors[0] if len(tensors) == 1 else dict(zip(names, tensors, strict=True))
        outputs = model(feed, training=False)
        return outputs if output is None else {output: outputs[output]}

    function = tf.function(serve, input_signature=list(specs), jit_compile=jit_compile)
    if classes is None or output is not None:
        return function
    labels = tf.constant([str(label) for label in classes])

    def labelled(*tensors: Any) -> Any:
        outputs = dict(function(*tensors))
        return {**outputs, "classes": class_labels(labels, outputs["prediction"])}

    return tf.function(labelled, input_signature=list(specs))


def class_labels(labels: Any, prediction: Any) -> Any:
    """`labels` (a string vector, one per class) repeated for every row (and position) of
    `prediction`; `tf.tile`, which TFLite's builtins and tf2onnx both take for strings."""
    rank = len(prediction.shape)
    row = tf.reshape(labels, [1] * (rank - 1) + [-1])
    return tf.tile(row, tf.concat([tf.shape(prediction)[:-1], [1]], axis=0))
