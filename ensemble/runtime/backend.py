"""Invariant 5: the Keras backend is TensorFlow; anything else is a clear error at import."""

from __future__ import annotations

import json
import os
import sys

__all__ = ["configured_backend", "require_tensorflow_backend"]


def configured_backend() -> tuple[str, str]:
    """The backend Keras uses or will use, and where that choice comes from.

    Read the way Keras reads it, without importing Keras: another backend may
    fail at import (its framework missing) before it could be asked.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend(), "the imported keras"
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"], "KERAS_BACKEND"
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    config = os.path.join(home, "keras.json")
    try:
        with open(config) as f:
            return str(json.load(f).get("backend", "tensorflow")), config
    except (OSError, ValueError):
        return "tensorflow", "the default"


def require_tensorflow_backend() -> None:
    backend, origin = configured_backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"This library needs the TensorFlow backend of Keras; the configured backend is "
            f"{backend!r} (from {origin}). Set KERAS_BACKEND=tensorflow."
        )
