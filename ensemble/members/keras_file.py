"""Keras files: the native `.keras` format and legacy HDF5, and in-memory models (copied).

Files written by Keras 2 (tf_keras 2.x) have their config translated by
`ensemble.members.keras2` and their weights loaded into the Keras 3 model it
builds: tf_keras' `.keras` weights use the variable paths Keras 3 reads, its
HDF5 weights are read by layer order as Keras 3's HDF5 reader does.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

import h5py
import keras

from ensemble.members.keras2 import Keras2Error, diagnose, is_keras2_version, translate

__all__ = ["copy_model", "read_keras_file"]

log = logging.getLogger(__name__)

_WEIGHTS = "model.weights.h5"


def read_keras_file(
    path: str, fmt: str, *, safe_mode: bool = True, custom_objects: Mapping[str, Any] | None = None
) -> keras.Model:
    """The model in a `.keras` (`fmt="keras"`) or HDF5 (`"h5"`) file, uncompiled; a Keras 2
    (tf_keras) file is translated, and what cannot be is a `Keras2Error` naming file and layer."""
    objects = dict(custom_objects or {})
    if fmt == "keras":
        if os.path.isfile(path) and not zipfile.is_zipfile(path):  # Keras would say "not found"
            raise ValueError(
                f"{path} is not a .keras archive (a zip of config.json and model.weights.h5): "
                "truncated, or another format under a .keras name."
            )
        version, config = _archive_config(path)
        if is_keras2_version(version):
            return _read_keras2_archive(path, version, config, objects, safe_mode)
        return keras.saving.load_model(path, custom_objects=objects, compile=False, safe_mode=safe_mode)
    version, config = _h5_config(path)
    try:
        return keras.saving.load_model(path, custom_objects=objects, compile=False, safe_mode=safe_mode)
    except Exception:
        if not is_keras2_version(version) or config is None:
            raise
        log.info("Keras 3 cannot read Keras %s file %s as it is; translating its config.", version, path)
    return _build_keras2(path, version, config, objects, safe_mode=safe_mode, weights=path)


def _archive_config(path: str) -> tuple[str | None, dict[str, Any] | None]:
    """The Keras version recorded in a `.keras` archive and its model config (None if absent)."""
    if not zipfile.is_zipfile(path):
        return None, None  # Keras 3's own reader names what is wrong with the file
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
        config = json.loads(archive.read("config.json")) if "config.json" in names else None
    return metadata.get("keras_version"), config


def _h5_config(path: str) -> tuple[str | None, dict[str, Any] | None]:
    """The Keras version and model config an HDF5 model file records (None if absent)."""
    try:
        with h5py.File(path, "r") as f:
            version, config = f.attrs.get("keras_version"), f.attrs.get("model_config")
    except OSError:
        return None, None  # Keras 3's own reader names what is wrong with the file
    as_text = [v.decode() if isinstance(v, bytes) else v for v in (version, config)]
    return as_text[0], json.loads(as_text[1]) if isinstance(as_text[1], str) else None


def _read_keras2_archive(
    path: str, version: str, config: dict[str, Any] | None, objects: dict[str, Any], safe_mode: bool
) -> keras.Model:
    if config is None:
        raise Keras2Error(f"Keras {version} file {path!r} has no config.json to build the model from.")
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory(prefix="keras2-") as tmp:
        if _WEIGHTS not in archive.namelist():
            raise Keras2Error(f"Keras {version} file {path!r} has no {_WEIGHTS}.")
        weights = archive.extract(_WEIGHTS, tmp)
        return _build_keras2(path, version, config, objects, safe_mode=safe_mode, weights=weights)


def _build_keras2(
    path: str, version: str, config: dict[str, Any], objects: dict[str, Any], *, safe_mode: bool, weights: str
) -> keras.Model:
    """The Keras 3 model of a Keras 2 `config`, with the weights at `weights`."""
    where = f"Keras {version} (tf_keras) file {path!r}"
    try:
        translated = translate(config, objects)
    except Keras2Error as error:
        raise Keras2Error(f"{where}: {error}") from None
    try:
        model = keras.saving.deserialize_keras_object(translated, custom_objects=objects, safe_mode=safe_mode)
    except Exception as error:  # Named by the layer that fails alone, else Keras' own message.
        raise Keras2Error(
            f"{where}: cannot build its model in Keras 3: {diagnose(translated, error, objects)}"
        ) from error
    if not isinstance(model, keras.Model):
        raise Keras2Error(f"{where}: its config is a {type(model).__name__}, not a model.")
    try:
        model.load_weights(weights)
    except Exception as error:  # Weights that do not fit the translated model.
        raise Keras2Error(f"{where}: its weights do not fit the translated model: {error}") from error
    log.info("Translated Keras %s file %s into a Keras 3 model.", version, os.path.basename(path))
    return model


def _finalize_states(model: keras.Layer) -> None:
    """What Keras does after loading a layer's variables (`load_own_variables`) and
    `set_weights` does not: `finalize_state`, which turns an adapted `Normalization`'s
    variables into the constants its call reads (without it the copy keeps the mean 0 and
    variance 1 it was built with). Every layer, nested models' included."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        finalize = getattr(layer, "finalize_state", None)
        if callable(finalize):
            finalize()
        stack.extend(getattr(layer, "layers", ()))


def copy_model(model: keras.Model) -> keras.Model:
    """A copy with its own variables, so freezing the member never touches the caller's model."""
    try:
        copy: keras.Model = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
        if not copy.built and model.built:
            copy.build_from_config(model.get_build_config())
        copy.set_weights(model.get_weights())
        _finalize_states(copy)
        return copy
    except Exception as error:  # Subclassed models without a config cannot be copied.
        log.warning(
            "Model %r cannot be copied (%s); the member shares its variables and freezes it.",
            model.name,
            error,
        )
        return model
