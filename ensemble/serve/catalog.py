"""`Catalog`: the models a server answers for, by name and version, over one `ModelRegistry`.

A model is one source (an exported ensemble, an `.onnx` file, a member file: version 1) or a
TF Serving base of versions, `base/<n>/` each an export (`ensemble.export_version`, the main
job's `export.versioned=true`) or a member's SavedModel; a base may hold no version yet when
the server starts. A base is read on every request, as TF Serving polls its file system: a
version published while serving is served from its next request on (the newest serves a
request that names none), and a version removed from disk is no longer served and leaves
memory. Each version is its own registry entry, `name@<n>`, loaded on first use and subject
to the registry's LRU; models and versions are only ever those configured, never a path
taken from a request.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import keras

from ensemble.errors import EnsembleError, ModelLoadError
from ensemble.export.saved_model import MANIFEST
from ensemble.export.versions import list_versions
from ensemble.members.checkpoint import resolve_checkpoint
from ensemble.serve.loaded import ModelSignature
from ensemble.serve.registry import ModelRegistry
from ensemble.serve.rest import RestError
from ensemble.types import PathLike

__all__ = ["Catalog"]

_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\-]*")


class Catalog:
    """Named models, each one source or a base of versions, served through `registry`.

    Example:
        catalog = Catalog(ModelRegistry(max_loaded=4))
        catalog.register("digits", "exports/digits")      # a base: exports/digits/<n>/
        catalog.register("mlp", "runs/mlp.keras", output="probabilities")
        catalog.versions("digits")                       # [1, 2, 3]
        key, version = catalog.resolve("digits", None)   # "digits@3", 3
        catalog.registry.predict(key, x)
    """

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._bases: dict[str, tuple[str, str | None]] = {}  # name -> (base, device)
        self._single: set[str] = set()

    def register(
        self, name: str, source: PathLike | keras.Model, *, device: str | None = None, **options: Any
    ) -> None:
        """Serve `source` as model `name`: a base of versions, or anything `ModelRegistry.register`
        takes (then as version 1). Raises `EnsembleError` for a name taken or a bad source."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise EnsembleError(
                f"Expected a model name of letters, digits, '.', '_' and '-', not starting with '_' "
                f"or '-' (it goes into URLs and TensorFlow's name scopes). Received: {name!r}"
            )
        if name in self._single or name in self._bases:
            raise EnsembleError(f"Model {name!r} is already served.")
        base = _base(source)
        if base is None:
            self.registry.register(name, source, device=device, **options)
            self._single.add(name)
            return
        if options:
            raise EnsembleError(
                f"Model {name!r}: a base of exports takes no load options. Received: {sorted(options)}"
            )
        self._bases[name] = (base, device)

    @property
    def names(self) -> list[str]:
        return sorted(self._single | set(self._bases))

    def versions(self, name: str) -> list[int]:
        """The versions of `name` that can be served now, ascending; `RestError` (404) for a name
        not served or a base with no export in it."""
        if name in self._single:
            return [1]
        if name not in self._bases:
            raise RestError(404, f"No model named {name!r} is served. Served: {self.names}")
        base, _ = self._bases[name]
        found = [v for v in list_versions(base) if _servable(os.path.join(base, str(v)))]
        self._unload_removed(name, set(found))
        if not found:
            raise RestError(404, f"Model {name!r}: no version is on disk under {base} yet.")
        return found

    def resolve(self, name: str, version: int | None) -> tuple[str, int]:
        """The registry name that answers `name` at `version` (None: the newest), and that
        version; `RestError` (404) for a model or version not served."""
        versions = self.versions(name)
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise RestError(404, f"Model {name!r} has no version {version}. Versions: {versions}")
        if name in self._single:
            return name, version
        key = f"{name}@{version}"
        base, device = self._bases[name]
        with self._lock:  # two first requests for one version register it once
            # A version whose load failed is registered anew: it may have been read while it
            # was still being written, and is judged again from what is on disk now.
            if key not in self.registry or self.registry.stats(key).last_error is not None:
                self.registry.register(key, os.path.join(base, str(version)), device=device, replace=True)
        return key, version

    def signature(self, name: str, version: int | None) -> tuple[str, int, ModelSignature]:
        """`resolve(name, version)` and the signature of the model it names (loading it). When
        the newest version vanishes from disk as it loads, the next newest answers."""
        key, resolved = self.resolve(name, version)
        try:
            return key, resolved, self.registry.signature(key)
        except ModelLoadError:
            base = self._bases.get(name, ("", None))[0]
            if version is not None or name not in self._bases or _servable(os.path.join(base, str(resolved))):
                raise
        key, resolved = self.resolve(name, None)
        return key, resolved, self.registry.signature(key)

    def paths(self) -> list[str]:
        """The file-system paths this catalog serves from, as configured and resolved, longest
        first: what an error shown to a client names by their last part only."""
        found = {base for base, _ in self._bases.values()}
        for name in self._single:
            source = self.registry.stats(name).source
            if not source.startswith("<in-memory"):
                found.add(source)
        found |= {os.path.realpath(path) for path in found} | {os.path.abspath(path) for path in found}
        return sorted(found, key=len, reverse=True)

    def load_errors(self, name: str) -> dict[int, str | None]:
        """Each version of `name` with the error of its last load (None: loaded, or not tried)."""
        errors = {}
        for version in self.versions(name):
            key = name if name in self._single else f"{name}@{version}"
            errors[version] = self.registry.stats(key).last_error if key in self.registry else None
        return errors

    def _unload_removed(self, name: str, on_disk: set[int]) -> None:
        prefix = f"{name}@"
        for key in self.registry.loaded:
            if key.startswith(prefix) and int(key[len(prefix) :]) not in on_disk:
                self.registry.unload(key)


def _base(source: PathLike | keras.Model) -> str | None:
    """`source` as a base of versions (`<n>/` sub-directories, possibly none yet): a directory
    that is no export, SavedModel or checkpoint itself; else None."""
    if isinstance(source, keras.layers.Layer):
        return None
    path = os.fspath(source)
    if not os.path.isdir(path) or _servable(path) or resolve_checkpoint(path) is not None:
        return None
    return path


def _servable(path: str) -> bool:
    """Whether `path` holds an export or a SavedModel (a member), complete enough to load."""
    return os.path.isfile(os.path.join(path, MANIFEST)) or os.path.isfile(
        os.path.join(path, "saved_model.pb")
    )
