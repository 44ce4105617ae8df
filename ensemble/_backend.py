"""Invariant 5: the Keras backend is TensorFlow; anything else is a clear error at import."""

from __future__ import annotations

import os

__all__ = ["require_tensorflow_backend"]


def require_tensorflow_backend() -> None:
    # keras reads KERAS_BACKEND (or ~/.keras/keras.json) once, at its first import.
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        origin = "KERAS_BACKEND" if os.environ.get("KERAS_BACKEND") else "~/.keras/keras.json"
        raise RuntimeError(
            f"This library needs the TensorFlow backend of Keras; the configured backend is "
            f"{backend!r} (from {origin}). Set KERAS_BACKEND=tensorflow."
        )
