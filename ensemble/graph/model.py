"""`EnsembleModel`: the functional model `build_ensemble` returns, defined on every batch size."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ensemble.rows import row_count

__all__ = ["EnsembleModel"]


@keras.saving.register_keras_serializable(package="ensemble")
class EnsembleModel(keras.Model):
    """A functional `keras.Model` whose `predict` also answers a batch of no rows.

    Keras' `predict` runs no step on an empty dataset and has nothing to return; an ensemble
    serving a filtered request must answer it with empty outputs of the right shapes.
    """

    def predict(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(x, (np.ndarray, tf.Tensor, dict, list, tuple)) and _rows(x) == 0:
            outputs = self(x, training=False)
            return keras.tree.map_structure(lambda t: keras.ops.convert_to_numpy(t), outputs)
        return super().predict(x, *args, **kwargs)


def _rows(x: Any) -> int | None:
    try:
        return row_count(x if not isinstance(x, (list, tuple)) else x[0])
    except (TypeError, ValueError, KeyError, IndexError):
        return None
