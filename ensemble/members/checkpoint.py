"""Restore a TensorFlow checkpoint (TF1 `Saver` or TF2 object-based) into a Keras architecture."""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Union

import keras
import numpy as np
import tensorflow as tf

from ensemble.members.keras_file import read_keras_file
from ensemble.types import PathLike

__all__ = [
    "Architecture",
    "build_architecture",
    "read_checkpoint",
    "resolve_checkpoint",
    "restore_checkpoint",
]

log = logging.getLogger(__name__)

Architecture = Union[str, "PathLike", Mapping[str, Any], Callable[[], keras.Model], keras.Model]
"""A `.keras`/`.h5`/`.json` file, a Keras model config, a builder (or the name Keras registered it
under; its dotted import path only with `safe_mode=False`), or a model."""

_OBJECT_KEY_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# Bookkeeping a TF1 Saver or a TF2 Checkpoint writes beside the model's variables.
_NOT_MODEL = ("global_step", "save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH", "optimizer")
# An architecture string ending so is a file: read, never imported (a config is data).
_FILES = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".json": "json"}
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*[.:][A-Za-z_]\w*")


def resolve_checkpoint(path: str) -> str | None:
    """The checkpoint prefix at `path` (a prefix, or a directory with a `checkpoint` file)."""
    if tf.io.gfile.isdir(path):
        latest: str | None = tf.train.latest_checkpoint(path)
        return latest
    if tf.io.gfile.exists(path + ".index"):
        return path
    return None


def read_checkpoint(
    prefix: str,
    *,
    copy_model: Callable[[keras.Model], keras.Model],
    architecture: Architecture | None = None,
    scope: str | None = None,
    variable_map: Mapping[str, str] | None = None,
    safe_mode: bool = True,
) -> keras.Model:
    """`architecture` built and restored from the checkpoint at `prefix` (resolved by the
    caller); the caller's own model is never restored into: a copy is (`copy_model`)."""
    if architecture is None:
        raise ValueError(
            "a checkpoint holds only variables: pass architecture= (a .keras, .h5 or .json file, "
            "a Keras model config, or a builder) to restore them into."
        )
    model = build_architecture(architecture, safe_mode=safe_mode)
    if model is architecture:
        model = copy_model(model)
    restore_checkpoint(model, prefix, scope=scope, variable_map=variable_map)
    return model


def build_architecture(architecture: Architecture, *, safe_mode: bool = True) -> keras.Model:
    """A freshly built (randomly initialised) model from any accepted architecture form.

    A string is a file path or a registered name, and runs no code of its own: a builder named
    by its import path (`"pkg.module.build"`) is imported only with `safe_mode=False`, since
    importing a module runs it. A callable passed as such is the caller's own code, and called."""
    if isinstance(architecture, keras.Model):
        return architecture
    if isinstance(architecture, Mapping):
        model = keras.saving.deserialize_keras_object(dict(architecture), safe_mode=safe_mode)
    elif callable(architecture):
        model = architecture()
    else:
        model = _from_string(os.fspath(architecture), safe_mode)
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected the architecture to give a keras.Model. Received: {model!r}")
    return model


def restore_checkpoint(
    model: keras.Model,
    prefix: str,
    *,
    scope: str | None = None,
    variable_map: Mapping[str, str] | None = None,
) -> None:
    """Assign every weight of `model` from the checkpoint at `prefix`, or raise naming the first
    weight that cannot be matched."""
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    if any(key.endswith(_OBJECT_KEY_SUFFIX) for key in shapes):
        _restore_object_based(model, prefix, shapes)
    else:
        _restore_by_name(model, prefix, reader, shapes, scope or "", dict(variable_map or {}))


def _restore_by_name(
    model: keras.Model,
    prefix: str,
    reader: Any,
    shapes: Mapping[str, list[int]],
    scope: str,
    variable_map: dict[str, str],
) -> None:
    values = []
    for weight, relative in _relative_paths(model):
        key = variable_map.get(relative) or variable_map.get(weight.path)
        key = key or (f"{scope.rstrip('/')}/{relative}" if scope else relative)
        if key not in shapes:
            nearby = sorted(k for k in shapes if k.startswith(scope) and not _bookkeeping(k))
            raise KeyError(
                f"Checkpoint {prefix} has no variable {key!r} for weight {relative!r} of the "
                f"architecture. Its variables{f' under {scope!r}' if scope else ''}: "
                f"{nearby[:20]}. Set scope= or variable_map={{{relative!r}: <name>}}."
            )
        if tuple(shapes[key]) != tuple(weight.shape):
            raise ValueError(
                f"Checkpoint variable {key!r} in {prefix} has shape {tuple(shapes[key])}, but "
                f"weight {relative!r} of the architecture expects {tuple(weight.shape)}."
            )
        values.append((weight, reader.get_tensor(key), key))
    for weight, value, _ in values:
        weight.assign(np.asarray(value, dtype=weight.dtype))
    used = {key for _, _, key in values}
    unused = sorted(k for k in shapes if k.startswith(scope) and k not in used and not _bookkeeping(k))
    if unused:
        log.info(
            "Checkpoint %s: %d variables not used by the architecture: %s", prefix, len(unused), unused[:10]
        )


def _restore_object_based(model: keras.Model, prefix: str, shapes: Mapping[str, Any]) -> None:
    roots = sorted(
        {key.split("/", 1)[0] for key in shapes if key.endswith(_OBJECT_KEY_SUFFIX)} - set(_NOT_MODEL)
    )
    if len(roots) != 1:
        raise ValueError(
            f"Object-based checkpoint {prefix} holds {len(roots)} root objects {roots}; "
            "expected exactly one model."
        )
    status = tf.train.Checkpoint(**{roots[0]: model}).read(prefix)
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise ValueError(
            f"Object-based checkpoint {prefix} does not match the architecture: {error}"
        ) from None


def _relative_paths(model: keras.Model) -> list[tuple[Any, str]]:
    """Each weight with its path inside the model (the model's own name stripped)."""
    head = f"{model.name}/"
    return [(w, w.path[len(head) :] if w.path.startswith(head) else w.path) for w in model.weights]


def _bookkeeping(key: str) -> bool:
    return any(part in key for part in _NOT_MODEL) or key.rsplit("/", 1)[-1].startswith("Adam")


def _from_string(text: str, safe_mode: bool) -> Any:
    """The model a file path, a registered builder's name or (unsafe) an import path gives."""
    kind = _FILES.get(os.path.splitext(text)[1].lower())
    if kind is not None:  # a file, whether or not it exists: never an import
        if not os.path.isfile(text):
            raise FileNotFoundError(f"architecture file {text!r} does not exist.")
        if kind != "json":
            return read_keras_file(text, kind, safe_mode=safe_mode)
        with open(text, encoding="utf-8") as f:
            return keras.saving.deserialize_keras_object(json.load(f), safe_mode=safe_mode)
    # Builders already registered by code that ran (`keras.saving.register_keras_serializable`).
    registered = keras.saving.get_registered_object(text)
    if registered is not None:
        return registered()
    if not _DOTTED.fullmatch(text):
        raise ValueError(
            "Expected the architecture as a .keras, .h5 or .json file, a Keras config, a builder "
            "or its name registered with keras.saving.register_keras_serializable ('package>name'), "
            f"or a model. Received: architecture={text!r}"
        )
    if safe_mode:
        raise ValueError(
            f"architecture={text!r} names a builder by its import path, and importing a module runs "
            "its code, which safe_mode=True forbids. Pass the builder itself, register it with "
            "keras.saving.register_keras_serializable and pass its 'package>name', or, if you trust "
            "that module, load with safe_mode=False."
        )
    return _import(text)()


def _import(dotted: str) -> Callable[[], keras.Model]:
    module, _, attr = dotted.replace(":", ".").rpartition(".")
    builder = getattr(importlib.import_module(module), attr)
    if not callable(builder):
        raise TypeError(f"Architecture builder {dotted!r} is not callable.")
    return builder  # type: ignore[no-any-return]
