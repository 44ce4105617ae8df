"""`export_saved_model`: the whole ensemble as ONE self-contained SavedModel.

The directory holds every member's weights and the combiner, refers to no
member file, and loads with `tf.saved_model.load` in a process that has
TensorFlow but not this project. Signatures:

- `serving_default`: the ensemble's named input(s), dynamic batch, returning
  the full output dict (`prediction`, `member_predictions`, uncertainty, and
  `prediction_set` (bool) or `interval_low`/`interval_high` when conformal
  outputs were added).
- `prediction`: the same inputs, returning only `prediction`, for clients
  that want the combined probabilities alone.

An ensemble whose classes are named (`load_member(..., classes=...)`, `build_ensemble(...,
classes=...)`) also returns `classes` from `serving_default`: each row's labels, column by
column as `prediction` scores them (TF Serving's classify answer, in one signature).

`assets.extra/` (the SavedModel place for files a library adds beside the
graph) holds `manifest.json` (members, sources, task, width, combiner,
library versions, and an `identity` new at every export, by which a server
tells a replaced export) and, when given, the resolved config as `config.yaml`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import uuid
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ensemble.errors import EnsembleError
from ensemble.export import versions
from ensemble.export.signature import input_specs, serving_function
from ensemble.graph.conformal import conformal_config
from ensemble.graph.view import EnsembleView
from ensemble.types import PathLike

__all__ = [
    "MANIFEST",
    "check_parent",
    "check_target",
    "export_saved_model",
    "export_version",
    "read_manifest",
]

log = logging.getLogger(__name__)

MANIFEST = versions.MANIFEST
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

    `path` is a plain directory. An overwrite writes the new export completely in a staging
    folder beside it, then exchanges the two directories in one step (Linux, macOS), so at
    every moment `path` holds one complete export, and deletes the old one; where no exchange
    exists, the old one is renamed aside first (a moment with no export). An export left as a
    symlink by earlier versions of this code becomes a plain directory the same way (see
    `ensemble.export.versions`). For TF Serving's `base/<version>/` layout use `export_version`.

    Args:
        model: an ensemble built by `build_ensemble`.
        path: the export to write.
        overwrite: replace an existing export at `path` (a directory that is no export, one
            without `assets.extra/manifest.json`, is refused before anything is written).
        config: the resolved config (YAML text or a mapping) to ship beside.
        jit_compile: compile the signatures with XLA. Off by default: a server built
            without XLA cannot run such a signature, its first call pays the compilation,
            and the gain on CPU is modest (see the benchmark). TFLite converts it as usual.

    Returns:
        The absolute path written.
    """
    view = EnsembleView.of(model)
    target = os.path.abspath(os.fspath(path))
    check_target(target, overwrite)

    def write(directory: str) -> None:
        _write(view, directory, config, jit_compile)

    versions.swap_in(target, write, lambda: _check_again(target, overwrite))
    log.info("Exported ensemble %r to %s", model.name, target)
    return target


def export_version(
    model: keras.Model,
    base: PathLike,
    *,
    version: int | None = None,
    keep: int | None = None,
    config: str | Mapping[str, Any] | None = None,
    jit_compile: bool = False,
) -> str:
    """Write `model` as a new version `base/<version>/`, the layout TF Serving watches (it
    serves the highest integer). The version is written in a staging folder inside `base`
    (`.partial-<pid>-...`, no integer) and renamed into place in one step; no other version
    is touched, so readers of them are unaffected.

    Args:
        model: an ensemble built by `build_ensemble`.
        base: the directory of versions (made when missing; its parent must exist).
        version: the version to write; None for one past the highest ever published there
            (a removed newest version's number is not used again). An existing version is an
            error; a removed one may be written again.
        keep: once the new version is in place, remove all but the newest `keep` versions
            (never the one just written); None keeps them all.
        config, jit_compile: as for `export_saved_model`.

    Returns:
        The absolute path of the version written, `base/<version>`.
    """
    view = EnsembleView.of(model)
    base = os.path.abspath(os.fspath(base))
    for name, value, least in (("version", version, 0), ("keep", keep, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise EnsembleError(f"Expected {name} to be an integer >= {least} or None. Received: {value!r}")
    check_parent(base, "Export base")
    if os.path.lexists(base) and not os.path.isdir(base):
        raise EnsembleError(f"Export base {base} is not a directory; expected a directory of versions.")
    if os.path.isfile(os.path.join(base, MANIFEST)):
        raise EnsembleError(f"Export base {base} is an export itself, not a directory of versions.")
    if version is not None and version in versions.list_versions(base):
        raise FileExistsError(f"Version {version} of {base} already exists; versions are never replaced.")
    os.makedirs(base, exist_ok=True)
    number = versions.publish(base, lambda directory: _write(view, directory, config, jit_compile), version)
    if keep is not None:
        versions.prune(base, keep, spare=number)
    log.info("Exported ensemble %r as version %d of %s", model.name, number, base)
    return os.path.join(base, str(number))


def read_manifest(path: PathLike) -> dict[str, Any]:
    """The manifest of an export, read as plain JSON."""
    with open(os.path.join(os.fspath(path), MANIFEST)) as f:
        result: dict[str, Any] = json.load(f)
    return result


def check_target(target: str, overwrite: bool) -> None:
    """An error unless an export may be written at `target` (its parent checked too); also what
    a job checks before any work (`experiments.preflight`)."""
    if os.path.isfile(target):
        raise EnsembleError(f"Export path {target} is a file; expected a directory to write.")
    if os.path.isdir(target) and os.listdir(target) and not overwrite:
        raise FileExistsError(
            f"Export path {target} already exists and is not empty; pass overwrite=True to replace it."
        )
    if os.path.lexists(target) and not os.path.exists(target) and not overwrite:
        raise FileExistsError(f"Export path {target} is a broken symlink; pass overwrite=True to replace it.")
    check_parent(target, "Export path")
    _check_is_export(target)


def _check_again(target: str, overwrite: bool) -> None:
    """Just before the swap: what appeared at `target` while the export was written."""
    if not overwrite and os.path.lexists(target) and not (os.path.isdir(target) and not os.listdir(target)):
        raise FileExistsError(
            f"{target} was created while this export was written; pass overwrite=True to replace it."
        )
    if os.path.isfile(target):
        raise EnsembleError(f"Export path {target} became a file while the export was written.")
    _check_is_export(target)


def _check_is_export(target: str) -> None:
    """Only an earlier export (one with a manifest) or an empty directory may be replaced."""
    if os.path.isdir(target) and os.listdir(target) and not os.path.isfile(os.path.join(target, MANIFEST)):
        hint = " (it holds versions: add one with export_version)" if versions.list_versions(target) else ""
        raise EnsembleError(
            f"Export path {target} holds no export (no {MANIFEST}){hint}; overwrite=True replaces "
            "only an earlier export. Remove it yourself or choose another path."
        )


def check_parent(target: str, what: str) -> None:
    """An error unless `target`'s parent directory exists and may be written in."""
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{what} {target}: its parent directory does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {target}: no permission to write in {parent}.")


def _write(
    view: EnsembleView, directory: str, config: str | Mapping[str, Any] | None, jit_compile: bool
) -> None:
    model = view.model
    specs = input_specs(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint also becomes `serving_default`.
    for endpoint, output in (("serve", None), ("prediction", "prediction")):
        function = serving_function(
            model, specs, output=output, jit_compile=jit_compile, classes=view.classes
        )
        archive.add_endpoint(endpoint, function)
    archive.write_out(directory, verbose=False)

    os.makedirs(os.path.join(directory, "assets.extra"), exist_ok=True)
    with open(os.path.join(directory, MANIFEST), "w") as f:
        # This export's identity, new at every export (an ONNX file made from the model has
        # none): how a server tells an export replaced on disk (`versions.ExportWatch`).
        json.dump({**_manifest(view, specs), "identity": uuid.uuid4().hex}, f, indent=2)
    if config is not None:
        if not isinstance(config, str):  # a mapping, possibly an OmegaConf DictConfig
            from omegaconf import OmegaConf

            plain = OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)
            config = json.dumps(plain, indent=2, default=repr)
        with open(os.path.join(directory, CONFIG), "w") as f:
            f.write(config)


def _manifest(view: EnsembleView, specs: list[tf.TensorSpec]) -> dict[str, Any]:
    model, combiner = view.model, view.combiner
    outputs = sorted([*model.output, *(["classes"] if view.classes is not None else [])])
    return {
        "format": "keras-ensemble/1",
        "task": view.task,
        "width": view.width,
        # The label of each prediction column (the `classes` output), or None: unnamed.
        "classes": None if view.classes is None else list(view.classes),
        "inputs": {s.name: {"shape": list(s.shape), "dtype": s.dtype.name} for s in specs},
        "outputs": outputs,
        "signatures": {"serving_default": outputs, "prediction": ["prediction"]},
        "members": [
            {
                "name": m.name,
                "source": m.source,
                "format": m.format,
                "output": m.output_kind,
                # Which source column each prediction column is, when aligned by label.
                "columns": None if m.columns is None else list(m.columns),
            }
            for m in view.members
        ],
        # Members computed as one batched computation (build_ensemble(..., fuse=True)), by group.
        "fused": view.fused,
        "combiner": {"class": type(combiner).__name__, "config": _plain(combiner.get_config())},
        # Split-conformal outputs (ensemble.add_conformal): method, alpha, threshold; else None.
        "conformal": conformal_config(model),
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
