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
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ensemble.atomic import atomic_path
from ensemble.errors import EnsembleError
from ensemble.export.signature import input_specs, serving_function
from ensemble.graph.view import EnsembleView
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
    view = EnsembleView.of(model)
    target = os.path.abspath(os.fspath(path))
    _check_target(target, overwrite)
    with atomic_path(target, overwrite=overwrite, what="export") as staging:
        _write(view, staging, config, jit_compile)
    log.info("Exported ensemble %r to %s", model.name, target)
    return target


def read_manifest(path: PathLike) -> dict[str, Any]:
    """The manifest of an export, read as plain JSON."""
    with open(os.path.join(os.fspath(path), MANIFEST)) as f:
        result: dict[str, Any] = json.load(f)
    return result


def _check_target(target: str, overwrite: bool) -> None:
    if os.path.isfile(target):
        raise EnsembleError(f"Export path {target} is a file; expected a directory to write.")
    if os.path.isdir(target) and os.listdir(target) and not overwrite:
        raise FileExistsError(
            f"Export path {target} already exists and is not empty; pass overwrite=True to replace it."
        )
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"Export path {target}: its parent directory does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"Export path {target}: no permission to write in {parent}.")


def _write(
    view: EnsembleView, directory: str, config: str | Mapping[str, Any] | None, jit_compile: bool
) -> None:
    model = view.model
    specs = input_specs(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint also becomes `serving_default`.
    for endpoint, output in (("serve", None), ("prediction", "prediction")):
        archive.add_endpoint(endpoint, serving_function(model, specs, output=output, jit_compile=jit_compile))
    archive.write_out(directory, verbose=False)

    os.makedirs(os.path.join(directory, "assets.extra"), exist_ok=True)
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(_manifest(view, specs), f, indent=2)
    if config is not None:
        if not isinstance(config, str):  # a mapping, possibly an OmegaConf DictConfig
            from omegaconf import OmegaConf

            plain = OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)
            config = json.dumps(plain, indent=2, default=repr)
        with open(os.path.join(directory, CONFIG), "w") as f:
            f.write(config)


def _manifest(view: EnsembleView, specs: list[tf.TensorSpec]) -> dict[str, Any]:
    model, combiner = view.model, view.combiner
    return {
        "format": "keras-ensemble/1",
        "task": view.task,
        "width": view.width,
        "inputs": {s.name: {"shape": list(s.shape), "dtype": s.dtype.name} for s in specs},
        "outputs": sorted(model.output),
        "signatures": {"serving_default": sorted(model.output), "prediction": ["prediction"]},
        "members": [
            {"name": m.name, "source": m.source, "format": m.format, "output": m.output_kind}
            for m in view.members
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
