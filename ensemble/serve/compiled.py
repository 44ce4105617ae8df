"""A fast predict path for ensembles that are never exported.

Keras' `model.predict` sets up a data adapter, a progress bar and callbacks
on every call (tens of milliseconds), and calling the model eagerly runs op
by op. `compiled_predict(model)` traces the fused graph once, with a dynamic
batch dimension (so no batch size retraces it), optionally with XLA, and
returns a function that takes arrays and returns the output dict as NumPy.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ensemble.errors import EnsembleError
from ensemble.export.signature import input_specs, serving_function
from ensemble.serve.feeds import lossless_cast, nan_rows

__all__ = ["compiled_predict"]

_CACHE: weakref.WeakKeyDictionary[keras.Model, dict[bool, Callable[..., Any]]] = weakref.WeakKeyDictionary()


def compiled_predict(
    model: keras.Model, *, jit_compile: bool = False
) -> Callable[[Any], dict[str, np.ndarray]]:
    """`predict(x) -> {output: array}` for `model`, traced once and cached per model.

    Args:
        model: an ensemble from `build_ensemble` (any functional Keras model works).
        jit_compile: compile with XLA.

    Returns:
        A function taking what the model takes (an array, or a dict of arrays
        by input name) and returning NumPy arrays. Its `.function` is the
        underlying `tf.function` (`experimental_get_tracing_count()` shows it
        traced once). An input of the wrong shape raises `EnsembleError`
        naming it, before anything runs, as is a value the input's dtype would change (1.7 or
        2**33 + 1 into an int32 input, `feeds.lossless_cast`). A row with a NaN or infinite float input or
        output is NaN in every float output, as in an ensemble's graph.
    """
    per_model = _CACHE.setdefault(model, {})
    if jit_compile not in per_model:
        per_model[jit_compile] = _build(model, jit_compile)
    return per_model[jit_compile]


def _build(model: keras.Model, jit_compile: bool) -> Callable[[Any], dict[str, np.ndarray]]:
    specs = input_specs(model)
    function = serving_function(model, specs, jit_compile=jit_compile)
    # Called as its one concrete function: the tf.function's own call binds its arguments to
    # the signature again on every call (about 100 us a call on a 2-core machine, more than a
    # small ensemble's whole batch-1 compute).
    concrete = function.get_concrete_function()
    names = [spec.name for spec in specs]
    named = isinstance(model.input, Mapping)

    def predict(x: Any) -> dict[str, np.ndarray]:
        values = [x[n] for n in names] if named else [x]
        args = [  # as the registry feeds them: a cast that would change a value is an error
            tf.convert_to_tensor(lossless_cast(s.name, np.asarray(v), s.dtype.as_numpy_dtype), dtype=s.dtype)
            for v, s in zip(values, specs, strict=True)
        ]
        for tensor, spec in zip(args, specs, strict=True):
            # The concrete function checks no shape: a wrong one would fail deep in the graph,
            # or broadcast into an answer.
            if not spec.shape.is_compatible_with(tensor.shape):
                raise EnsembleError(
                    f"Input '{spec.name}': expected rows of shape {_rows(spec.shape)}, got an array "
                    f"of shape {tuple(tensor.shape)}."
                )
        outputs = {key: value.numpy() for key, value in concrete(*args).items()}
        guarded: dict[str, np.ndarray] = nan_rows(dict(zip(names, args, strict=True)), outputs)
        return guarded  # the non-finite-row rule, for a model without NonFiniteRows

    predict.function = function  # type: ignore[attr-defined]
    return predict


def _rows(shape: tf.TensorShape) -> str:
    """`(batch, 8)` for a spec's shape `(None, 8)`."""
    return "(" + ", ".join(["batch", *(str(d) for d in shape[1:])]) + ")"
