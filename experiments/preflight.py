"""Fail before the work: the `export` options the main job reaches only after the zoo trained
and the combiner fitted, checked when it starts.

Booleans are true or false (a string such as 'maybe' is truthy in Python and was taken as
true), `keep` an integer >= 1 or null, `tflite` a list of quantizations, the export's place
writable (a versioned base's parent exists), and the extras `onnx` and TFLite's report need
importable. Each error is an `EnsembleError` naming the config key and the value received.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig

from ensemble import EnsembleError
from ensemble.export.saved_model import MANIFEST, check_parent, check_target
from ensemble.export.tflite import QUANTIZATIONS

__all__ = ["BOOLEANS", "EXTRAS", "check_export", "missing_packages"]

BOOLEANS = ("enabled", "overwrite", "versioned", "jit_compile", "verify", "onnx")
# What each export step imports when it runs, and how to install it.
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "onnx": (("tf2onnx", "onnx", "onnxruntime"), 'pip install -e ".[onnx]"'),
    "tflite": (("ai_edge_litert",), "pip install ai-edge-litert"),
}


def check_export(cfg: DictConfig, output_dir: str | None) -> None:
    """Raise `EnsembleError` for an `export` option that would fail once the work is done:
    a wrong type or value, a place the export cannot be written (paths relative to
    `output_dir`, the run directory; None checks no path), or a missing extra."""
    options = cfg.get("export")
    if options is None:
        return
    for key in BOOLEANS:
        if key in options and not isinstance(options[key], bool):
            raise EnsembleError(f"export.{key}: expected true or false. Received: {options[key]!r}")
    if not options.get("enabled", False):
        return
    keep = options.get("keep")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise EnsembleError(f"export.keep: expected an integer >= 1 or null. Received: {keep!r}")
    tflite = _quantizations(options.get("tflite"))
    directory = options.get("dir")
    if not isinstance(directory, str) or not directory:
        raise EnsembleError(f"export.dir: expected a directory path. Received: {directory!r}")
    if output_dir is not None:
        _check_place(os.path.join(output_dir, directory), options)
    for step, wanted in (("onnx", options.get("onnx", False)), ("tflite", bool(tflite))):
        packages, install = EXTRAS[step]
        missing = missing_packages(packages)
        if wanted and missing:
            raise EnsembleError(
                f"export.{step}: needs {', '.join(packages)}; {', '.join(missing)} not installed. "
                f"Install: {install}, or set export.{step}={'false' if step == 'onnx' else '[]'}."
            )


def missing_packages(packages: Sequence[str]) -> list[str]:
    """Those of `packages` that cannot be imported (found without importing them)."""
    missing = []
    for package in packages:
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):  # a broken install, or a module without a spec
            found = False
        if not found:
            missing.append(package)
    return missing


def _quantizations(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple, ListConfig)):
        raise EnsembleError(
            f"export.tflite: expected a list of quantizations from {list(QUANTIZATIONS)} "
            f"(e.g. [none,dynamic]; [] for none). Received: {value!r}"
        )
    unknown = [q for q in value if q not in QUANTIZATIONS]
    if unknown:
        raise EnsembleError(
            f"export.tflite: expected quantizations from {list(QUANTIZATIONS)}. Received: {unknown}"
        )
    return [str(q) for q in value]


def _check_place(path: str, options: DictConfig) -> None:
    """What `export_version` or `export_saved_model` would refuse at `path`, refused now."""
    target = os.path.abspath(path)
    key = f"export.dir={options.dir!r}"
    try:
        if options.get("versioned", False):
            check_parent(target, "Export base")
            if os.path.lexists(target) and not os.path.isdir(target):
                raise EnsembleError(f"Export base {target} is not a directory of versions.")
            if os.path.isfile(os.path.join(target, MANIFEST)):
                raise EnsembleError(f"Export base {target} is an export itself, not a directory of versions.")
            if os.path.isdir(target) and not os.access(target, os.W_OK | os.X_OK):
                raise PermissionError(f"Export base {target}: no permission to write in it.")
        else:
            check_target(target, bool(options.get("overwrite", False)))
    except (OSError, EnsembleError) as error:
        hint = f" Create {os.path.dirname(target)} first." if isinstance(error, FileNotFoundError) else ""
        raise EnsembleError(f"{key}: {error}{hint}") from None
