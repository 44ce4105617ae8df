"""`export_saved_model`: the whole ensemble as ONE self-contained SavedModel.

The directory holds every member's weights and the combiner, refers to no
member file, and loads with `tf.saved_model.load` in a process that has
TensorFlow but not this project. Signatures:

- `serving_default`: the ensemble's named input(s), dynamic batch, returning
  the full output dict (`prediction`, `member_predictions`, uncertainty).
- `prediction`: the same inputs, returning only `prediction`, for clients
  that want the combined probabilities alone.

`assets.extra/` (the SavedModel place for files a library adds beside the
graph) holds `manifest.json` (members, sources, task, width, combiner,
library versions) and, when given, the resolved config as `config.yaml`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ensemble.build import ensemble_combiner, ensemble_members, ensemble_task
from ensemble.errors import EnsembleError
from ensemble.types import PathLike

__all__ = ["MANIFEST", "export_saved_model", "read_manifest"]

log = logging.getLogger(__name__)

MANIFEST = os.path.join("assets.extra", "manifest.json")
CONFIG = os.path.join("assets.extra", "config.yaml")


def export_saved_model(
    model: keras.Model,
    path: PathLike,
    *,
    overwrite: bool = False,
    config: str | Mapping[str, Any] | None = None,
    jit_compile: bool = False,
) -> str:
    """Write `model` (from `build_ensemble`) as one SavedModel directory at `path`.

    Nothing is written at `path` until the export is complete: it is written
    beside `path` and renamed into place, and a failure leaves no debris. An
    existing `path` that is not an empty directory is an error unless
    `overwrite=True`, and is replaced only once the new export is complete.

    Args:
        model: an ensemble built by `build_ensemble`.
        path: the directory to write.
        overwrite: replace an existing export at `path`.
        config: the resolved config (YAML text or a mapping) to ship beside.
        jit_compile: compile the signatures with XLA. Off by default: a server built
            without XLA cannot run such a signature, its first call pays the compilation,
            and the gain on CPU is modest (see the benchmark). TFLite converts it as usual.

    Returns:
        The absolute path written.
    """
    _check_ensemble(model)
    target = os.path.abspath(os.fspath(path))
    _check_target(target, overwrite)
    parent = os.path.dirname(target)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.partial-", dir=parent)
    try:
        _write(model, staging, config, jit_compile)
        _move_into_place(staging, target, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("Exported ensemble %r to %s", model.name, target)
    return target


def read_manifest(path: PathLike) -> dict[str, Any]:
    """The manifest of an export, read as plain JSON."""
    with open(os.path.join(os.fspath(path), MANIFEST)) as f:
        result: dict[str, Any] = json.load(f)
    return result


def _check_ensemble(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise EnsembleError(
            f"Expected an ensemble built by build_ensemble. Received: {type(model).__name__}"
        )
    output = getattr(model, "output", None) if model.built else None
    if not isinstance(output, Mapping) or "prediction" not in output or not ensemble_members(model):
        raise EnsembleError(
            f"Model {model.name!r} is not an ensemble built by build_ensemble (expected a built "
            "functional model with Member layers and a dict output with 'prediction')."
        )


def _check_target(target: str, overwrite: bool) -> None:
    if os.path.isfile(target):
        raise EnsembleError(f"Export path {target} is a file; expected a directory to write.")
    if os.path.isdir(target) and os.listdir(target) and not overwrite:
        raise FileExistsError(
            f"Export path {target} already exists and is not empty; pass overwrite=True to "
            "replace it."
        )
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"Export path {target}: its parent directory does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"Export path {target}: no permission to write in {parent}.")


def _write(
    model: keras.Model, directory: str, config: str | Mapping[str, Any] | None, jit_compile: bool
) -> None:
    inputs = keras.tree.flatten(model.input)
    names = [tensor.name for tensor in inputs]
    specs = [
        tf.TensorSpec(tensor.shape, tensor.dtype, name=name)
        for tensor, name in zip(inputs, names, strict=True)
    ]

    def feed(tensors: tuple[Any, ...]) -> Any:
        return tensors[0] if len(tensors) == 1 else dict(zip(names, tensors, strict=True))

    def serve(*tensors: Any) -> Any:
        return model(feed(tensors), training=False)

    def prediction(*tensors: Any) -> Any:
        return {"prediction": model(feed(tensors), training=False)["prediction"]}

    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint also becomes `serving_default`.
    endpoints: dict[str, Callable[..., Any]] = {"serve": serve, "prediction": prediction}
    for endpoint, function in endpoints.items():
        traced = tf.function(function, input_signature=specs, jit_compile=jit_compile)
        archive.add_endpoint(endpoint, traced)
    archive.write_out(directory, verbose=False)

    os.makedirs(os.path.join(directory, "assets.extra"), exist_ok=True)
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(_manifest(model, names, specs), f, indent=2)
    if config is not None:
        if not isinstance(config, str):  # a mapping, possibly an OmegaConf DictConfig
            from omegaconf import OmegaConf

            plain = OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)
            config = json.dumps(plain, indent=2, default=repr)
        with open(os.path.join(directory, CONFIG), "w") as f:
            f.write(config)


def _manifest(model: keras.Model, names: list[str], specs: list[Any]) -> dict[str, Any]:
    combiner = ensemble_combiner(model)
    return {
        "format": "keras-ensemble/1",
        "task": ensemble_task(model),
        "width": int(model.output["prediction"].shape[-1]),
        "inputs": {n: {"shape": list(s.shape), "dtype": s.dtype.name} for n, s in zip(names, specs)},
        "outputs": sorted(model.output),
        "signatures": {"serving_default": sorted(model.output), "prediction": ["prediction"]},
        "members": [
            {"name": m.name, "source": m.source, "format": m.format, "output": m.output_kind}
            for m in ensemble_members(model)
        ],
        "combiner": {"class": type(combiner).__name__, "config": _plain(combiner.get_config())},
        "versions": {
            "keras-ensemble": _version("keras-ensemble"),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }


def _plain(config: Mapping[str, Any]) -> Any:
    """The config as JSON values (dtype policies and nested objects become their repr)."""
    return json.loads(json.dumps(config, default=repr))


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _move_into_place(staging: str, target: str, overwrite: bool) -> None:
    """Rename the finished export to `target`, replacing an old one only after it is complete
    (and only with `overwrite`: something may have appeared there while this one was written)."""
    if os.path.isdir(target) and not os.listdir(target):
        os.rmdir(target)
    if not os.path.exists(target):
        os.rename(staging, target)
        return
    if not overwrite:
        raise FileExistsError(
            f"Export path {target} was created while this export was written; pass "
            "overwrite=True to replace it."
        )
    retired = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=os.path.dirname(target))
    os.rmdir(retired)
    os.rename(target, retired)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(retired, target)  # put the old export back
        raise
    shutil.rmtree(retired, ignore_errors=True)
