"""`ModelRegistry`: many named models, loaded on first use, served from many threads.

Each entry is a member source (anything `load_member` takes), an exported ensemble (a SavedModel
directory holding `assets.extra/manifest.json`) or an `.onnx` file (`export_onnx`, served by
onnxruntime: the onnx extra). A model is loaded on its first `predict`, once even when many
threads ask together, and its call is compiled once with a dynamic batch so no batch size
retraces. Past `max_loaded` the least recently used model is dropped.

An export is served as it is on disk now: before every answer two `stat`s (and the manifest's
identity, when they changed) tell an export replaced or a version published again, which is
loaded again first (the request waits; an export gone is the load's `ModelLoadError`).

Locking: one registry lock guards the dicts and the LRU order (held only for
bookkeeping, never while loading or predicting); one lock per entry serialises
its load, so a slow load of one model never blocks predictions of another.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import keras

from ensemble.errors import EnsembleError, MemberError, ModelLoadError
from ensemble.rows import as_numpy
from ensemble.serve.entry import Entry, ModelStats
from ensemble.serve.loaded import (
    Loaded,
    ModelSignature,
    check_device,
    checked_feeds,
    label,
    model_sizes,
    process_rss_bytes,
    source_kind,
)
from ensemble.types import PathLike, Tensor

__all__ = ["ModelRegistry", "ModelSignature", "ModelStats", "process_rss_bytes"]

log = logging.getLogger(__name__)


class ModelRegistry:
    """Named models loaded lazily, least recently used dropped past `max_loaded`.

    Args:
        max_loaded: how many models may be in memory at once; None for no limit.
        batch_window_ms: when above 0, concurrent requests to one model that arrive within
            this window are answered by one call on their concatenated rows (off by default).

    Example:
        registry = ModelRegistry(max_loaded=2)
        registry.register("mlp", "runs/mlp.keras")
        registry.register("zoo", "runs/export")  # an exported ensemble
        registry.predict("mlp", x)  # a NumPy array
        registry.predict("zoo", x)["prediction"]
    """

    def __init__(self, max_loaded: int | None = None, *, batch_window_ms: float = 0.0) -> None:
        if max_loaded is not None and (
            isinstance(max_loaded, bool) or not isinstance(max_loaded, int) or max_loaded < 1
        ):
            raise EnsembleError(
                f"Expected max_loaded to be an integer of at least 1, or None. "
                f"Received: max_loaded={max_loaded!r}"
            )
        if batch_window_ms < 0:
            raise EnsembleError(f"Expected batch_window_ms >= 0. Received: {batch_window_ms}")
        self.max_loaded = max_loaded
        self.batch_window_ms = float(batch_window_ms)
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # loaded names, most recent last

    # -- registration -------------------------------------------------------------------------

    def register(
        self,
        name: str,
        source: PathLike | keras.Model,
        *,
        replace: bool = False,
        device: str | None = None,
        **load_options: Any,
    ) -> None:
        """Record model `name` at `source` without loading it.

        Args:
            name: the model's name in the registry.
            source: anything `load_member` takes, an exported ensemble's directory, or an
                `.onnx` file from `export_onnx`.
            replace: replace a model already registered as `name` (and drop it from memory).
            device: pin the model (its variables and its calls) to a device, e.g. "/CPU:0",
                "/GPU:1"; None lets TensorFlow place it.
            **load_options: passed to `load_member` (members only).

        Raises:
            EnsembleError: for a bad name, a name already taken without `replace=True`,
                a source that does not exist, or options given for an exported ensemble.
        """
        if not isinstance(name, str) or not name:
            raise EnsembleError(f"Expected a model name: a non-empty string. Received: {name!r}")
        kind = source_kind(name, source)
        if kind != "member" and load_options:
            raise EnsembleError(
                f"Model {name!r}: an exported ensemble takes no load options. "
                f"Received: {sorted(load_options)}"
            )
        entry = Entry(
            name=name, source=source, kind=kind, options=dict(load_options), device=check_device(name, device)
        )
        with self._lock:
            old = self._entries.get(name)
            if old is not None and not replace:
                raise EnsembleError(f"Model {name!r} is already registered; pass replace=True to replace it.")
            dropped = old is not None and self._drop(old)
            self._entries[name] = entry
        if dropped:
            gc.collect()
        log.info("Registered %s %r from %s", kind, name, label(source))

    def unload(self, name: str) -> None:
        """Drop model `name` from memory (it stays registered and reloads on its next use)."""
        with self._lock:
            entry = self._entry(name)
            self._drop(entry)
        gc.collect()

    @property
    def names(self) -> list[str]:
        """The registered names, in the order they were registered."""
        with self._lock:
            return list(self._entries)

    @property
    def loaded(self) -> list[str]:
        """The names of the models in memory, least recently used first."""
        with self._lock:
            return list(self._lru)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    # -- serving ------------------------------------------------------------------------------

    def predict(self, name: str, x: Tensor | Mapping[str, Tensor]) -> Any:
        """The output of model `name` for `x`, loading it first if it is not in memory.

        Args:
            name: a registered name.
            x: one array (a single-input model) or a dict of arrays by input name.

        Returns:
            A NumPy array for a member; the output dict of NumPy arrays for an ensemble. A row
                with a NaN or infinite float input or output is NaN in every float output.

        Raises:
            KeyError: for an unknown name; the message lists the registered names.
            ModelLoadError: when the model cannot be loaded (naming it; the next request
                retries).
            EnsembleError: when `x` does not match its inputs (naming the expected shape), or a
                cast would change a value (`feeds.lossless_cast`: naming the input and row).
        """
        with self._lock:  # once for a loaded model, and once more to count the call
            entry = self._entry(name)
        loaded = self._current(entry)
        feeds = checked_feeds(name, loaded.specs, x)
        batched = self.batch_window_ms > 0
        with self._lock:
            entry.calls += 1
            if not batched:  # a batch's leader counts the batch's one call
                entry.model_calls += 1
        if batched:
            return entry.batcher.submit(
                loaded.call, feeds, self.batch_window_ms / 1000, lambda: self._count_model_call(entry)
            )
        return as_numpy(loaded.call(feeds))

    def signature(self, name: str) -> ModelSignature:
        """What model `name` takes and gives (its inputs, outputs and signatures), loading it
        first if it is not in memory. Raises as `predict` does."""
        with self._lock:
            entry = self._entry(name)
        return self._current(entry).signature

    def stats(self, name: str) -> ModelStats:
        """A snapshot of the resources and use of model `name`."""
        with self._lock:
            entry = self._entry(name)
            return entry.snapshot()

    def report(self) -> dict[str, Any]:
        """Every model's stats as plain values, and the process' resident memory in bytes."""
        models = {name: asdict(self.stats(name)) for name in self.names}
        return {"rss_bytes": process_rss_bytes(), "loaded": self.loaded, "models": models}

    # -- internals ----------------------------------------------------------------------------

    def _count_model_call(self, entry: Entry) -> None:
        with self._lock:  # another batch's leader may be calling at the same time
            entry.model_calls += 1

    def _entry(self, name: str) -> Entry:
        """The entry of `name`; the caller holds the registry lock."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"No model named {name!r} is registered. Registered: {sorted(self._entries)}"
            ) from None

    def _drop(self, entry: Entry) -> bool:
        """Forget `entry`'s loaded model; the caller holds the registry lock."""
        if entry.loaded is None:
            return False
        entry.loaded = None
        self._lru.pop(entry.name, None)
        log.info("Unloaded model %r", entry.name)
        return True

    def _touch(self, entry: Entry) -> Loaded | None:
        """`entry`'s loaded model, now the most recently used; the caller holds the lock."""
        loaded = entry.loaded
        if loaded is not None and entry.name in self._lru:
            self._lru.move_to_end(entry.name)
        return loaded

    def _current(self, entry: Entry) -> Loaded:
        """`entry`'s model, loaded when not in memory, or again when it is an export replaced on
        disk since (`ExportWatch`): the request waits for that load."""
        with self._lock:
            loaded = self._touch(entry)
        if loaded is not None and loaded.watch is not None and loaded.watch.replaced():
            log.info("Model %r: its export was replaced on disk; loading it again", entry.name)
            with self._lock:
                evicted = entry.loaded is loaded and self._drop(entry)  # once, by the first to see it
        elif loaded is not None:
            return loaded
        else:
            evicted = False
        with entry.lock:  # concurrent first requests wait here for one load
            with self._lock:
                loaded = entry.loaded
            if loaded is None:
                loaded = self._load(entry)
                evicted |= self._admit(entry, loaded)
        if evicted:
            gc.collect()  # release the evicted models' graphs and variables now
        return loaded

    def _admit(self, entry: Entry, loaded: Loaded) -> bool:
        """Record `entry` as loaded and evict past `max_loaded`; True if any was evicted."""
        evicted = False
        with self._lock:
            if self._entries.get(entry.name) is not entry:
                return False  # replaced while it loaded: serve this request, keep nothing
            entry.loaded = loaded
            self._lru[entry.name] = None
            self._lru.move_to_end(entry.name)
            while self.max_loaded is not None and len(self._lru) > self.max_loaded:
                oldest = next(iter(self._lru))
                log.info("Evicting model %r (max_loaded=%d)", oldest, self.max_loaded)
                self._entries[oldest].evictions += 1
                evicted |= self._drop(self._entries[oldest])
        return evicted

    def _load(self, entry: Entry) -> Loaded:
        start = time.perf_counter()
        try:
            loaded = entry.open()
        except Exception as error:
            if isinstance(error, MemberError) and error.member == entry.name:
                message = str(error)  # load_member's error already names the model
            else:
                message = (
                    f"Model {entry.name!r}: cannot load {entry.kind} from {label(entry.source)!r}: {error}"
                )
            with self._lock:
                entry.failures += 1
                entry.last_error = message
            log.warning("Model %r failed to load: %s", entry.name, error)
            raise ModelLoadError(entry.name, message) from error
        seconds = time.perf_counter() - start
        params, nbytes = model_sizes(loaded)
        with self._lock:
            entry.loads += 1
            entry.last_error = None
            entry.load_seconds = seconds
            entry.params, entry.weight_bytes = params, nbytes
        log.info("Loaded model %r in %.2fs (%d parameters)", entry.name, seconds, params)
        return loaded
