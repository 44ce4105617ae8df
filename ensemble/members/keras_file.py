"""Keras files: the native `.keras` format and legacy HDF5, and in-memory models (copied)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import keras

__all__ = ["copy_model", "read_keras_file"]

log = logging.getLogger(__name__)


def read_keras_file(
    path: str, fmt: str, *, safe_mode: bool = True, custom_objects: Mapping[str, Any] | None = None
) -> keras.Model:
    """The model in a `.keras` (`fmt="keras"`) or HDF5 (`"h5"`) file, uncompiled."""
    objects = dict(custom_objects or {})
    if fmt == "keras":
        return keras.saving.load_model(path, custom_objects=objects, compile=False, safe_mode=safe_mode)
    return keras.saving.load_model(path, custom_objects=objects, compile=False)


def copy_model(model: keras.Model) -> keras.Model:
    """A copy with its own variables, so freezing the member never touches the caller's model."""
    try:
        copy: keras.Model = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
        if not copy.built and model.built:
            copy.build_from_config(model.get_build_config())
        copy.set_weights(model.get_weights())
        return copy
    except Exception as error:  # Subclassed models without a config cannot be copied.
        log.warning(
            "Model %r cannot be copied (%s); the member shares its variables and freezes it.",
            model.name,
            error,
        )
        return model
