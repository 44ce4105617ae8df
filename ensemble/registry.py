"""`ModelRegistry`: many named models, loaded on first use, served from many threads.

Each entry is a member source (anything `load_member` takes) or an exported
ensemble (a SavedModel directory holding `assets.extra/manifest.json`). A model
is loaded on its first `predict`, once even when many threads ask together,
and its call is compiled once with a dynamic batch so no batch size retraces.
Past `max_loaded` the least recently used model is dropped.

Locking: one registry lock guards the dicts and the LRU order (held only for
bookkeeping, never while loading or predicting); one lock per entry serialises
its load, so a slow load of one model never blocks predictions of another.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import resource
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ensemble.checkpoint import resolve_checkpoint
from ensemble.errors import EnsembleError, MemberError
from ensemble.export import MANIFEST
from ensemble.loading import load_member
from ensemble.savedmodel import SavedModelLayer
from ensemble.types import PathLike, Tensor

__all__ = ["ModelRegistry", "ModelStats", "process_rss_bytes"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ModelStats:
    """A snapshot of one registered model's resources and use.

    `params` and `weight_bytes` are None until the model has loaded once;
    `traces` is how often its call was traced (1 after a load of a member;
    an exported ensemble's signature is already traced and reports 0).
    """

    name: str
    kind: str
    source: str
    loaded: bool
    params: int | None
    weight_bytes: int | None
    load_seconds: float | None
    loads: int
    failures: int
    calls: int
    traces: int
    model_calls: int = 0  # calls of the model itself: fewer than `calls` when batched
    device: str | None = None  # the device it is pinned to
    variable_devices: tuple[str, ...] = ()  # where its loaded variables are (empty if not loaded)


@dataclass(frozen=True)
class _Loaded:
    """What a loaded model needs to serve: the compiled call and its input specs."""

    call: Callable[[Any], Any]
    specs: dict[str, tf.TensorSpec]  # input name -> spec with a None batch dimension
    keep_alive: Any  # the Member or SavedModel root: its variables back `call`
    function: Any = None  # the tf.function of a member, for its tracing count


class _Batcher:
    """Answers concurrent requests to one model with one call on their concatenated rows.

    The first request of a batch leads: it waits the window, takes every request that
    arrived meanwhile, calls the model once, and hands each request its rows. No thread
    of its own; a request never waits longer than the window plus one call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[dict[str, np.ndarray], Future[Any]]] = []

    def submit(self, call: Callable[[Any], Any], feeds: dict[str, np.ndarray], window: float,
               entry: _Entry) -> Any:
        future: Future[Any] = Future()
        with self._lock:
            self._pending.append((feeds, future))
            leads = len(self._pending) == 1
        if leads:
            time.sleep(window)
            with self._lock:
                batch, self._pending = self._pending, []
            try:
                joined = {k: np.concatenate([f[k] for f, _ in batch]) for k in batch[0][0]}
                outputs = _numpy(call(joined))
                with self._lock:  # another batch's leader may be calling at the same time
                    entry.model_calls += 1
                start = 0
                for request, waiting in batch:
                    rows = len(next(iter(request.values())))
                    waiting.set_result(keras.tree.map_structure(lambda v: v[start:start + rows], outputs))
                    start += rows
            except BaseException as error:
                for _, waiting in batch:
                    if not waiting.done():
                        waiting.set_exception(error)
        return future.result()


def _numpy(outputs: Any) -> Any:
    if isinstance(outputs, Mapping):
        return {key: np.asarray(value) for key, value in outputs.items()}
    return np.asarray(outputs)


@dataclass
class _Entry:
    name: str
    source: PathLike | keras.Model
    kind: str
    options: dict[str, Any]
    device: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    loaded: _Loaded | None = None  # set and cleared under the registry lock only
    params: int | None = None
    weight_bytes: int | None = None
    load_seconds: float | None = None
    loads: int = 0
    failures: int = 0
    calls: int = 0  # requests answered
    model_calls: int = 0  # calls of the model (fewer than requests when batched)
    batcher: _Batcher = field(default_factory=lambda: _Batcher())


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
        self._entries: dict[str, _Entry] = {}
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
            source: anything `load_member` takes, or an exported ensemble's directory.
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
        kind = _source_kind(name, source)
        if kind == "ensemble" and load_options:
            raise EnsembleError(
                f"Model {name!r}: an exported ensemble takes no load options. "
                f"Received: {sorted(load_options)}"
            )
        entry = _Entry(name=name, source=source, kind=kind, options=dict(load_options),
                       device=_check_device(name, device))
        with self._lock:
            old = self._entries.get(name)
            if old is not None and not replace:
                raise EnsembleError(
                    f"Model {name!r} is already registered; pass replace=True to replace it."
                )
            dropped = old is not None and self._drop(old)
            self._entries[name] = entry
        if dropped:
            gc.collect()
        log.info("Registered %s %r from %s", kind, name, _label(source))

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
            A NumPy array for a member; the output dict of NumPy arrays for an ensemble.

        Raises:
            KeyError: for an unknown name; the message lists the registered names.
            EnsembleError: when the model cannot be loaded (naming it; the next request
                retries), or `x` does not match its inputs (naming the expected shape).
        """
        with self._lock:  # once for a loaded model, and once more to count the call
            entry = self._entry(name)
            loaded = self._touch(entry)
        if loaded is None:
            loaded = self._ensure_loaded(entry)
        feeds = _feeds(name, loaded.specs, x)
        batched = self.batch_window_ms > 0
        with self._lock:
            entry.calls += 1
            if not batched:  # a batch's leader counts the batch's one call
                entry.model_calls += 1
        if batched:
            return entry.batcher.submit(loaded.call, feeds, self.batch_window_ms / 1000, entry)
        return _numpy(loaded.call(feeds))

    def stats(self, name: str) -> ModelStats:
        """A snapshot of the resources and use of model `name`."""
        with self._lock:
            entry = self._entry(name)
            loaded = entry.loaded
            return ModelStats(
                name=entry.name,
                kind=entry.kind,
                source=_label(entry.source),
                loaded=loaded is not None,
                params=entry.params,
                weight_bytes=entry.weight_bytes,
                load_seconds=entry.load_seconds,
                loads=entry.loads,
                failures=entry.failures,
                calls=entry.calls,
                traces=_tracing_count(loaded),
                model_calls=entry.model_calls,
                device=entry.device,
                variable_devices=_variable_devices(loaded),
            )

    def report(self) -> dict[str, Any]:
        """Every model's stats as plain values, and the process' resident memory in bytes."""
        models = {name: asdict(self.stats(name)) for name in self.names}
        return {"rss_bytes": process_rss_bytes(), "loaded": self.loaded, "models": models}

    # -- internals ----------------------------------------------------------------------------

    def _entry(self, name: str) -> _Entry:
        """The entry of `name`; the caller holds the registry lock."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"No model named {name!r} is registered. Registered: {sorted(self._entries)}"
            ) from None

    def _drop(self, entry: _Entry) -> bool:
        """Forget `entry`'s loaded model; the caller holds the registry lock."""
        if entry.loaded is None:
            return False
        entry.loaded = None
        self._lru.pop(entry.name, None)
        log.info("Unloaded model %r", entry.name)
        return True

    def _touch(self, entry: _Entry) -> _Loaded | None:
        """`entry`'s loaded model, now the most recently used; the caller holds the lock."""
        loaded = entry.loaded
        if loaded is not None and entry.name in self._lru:
            self._lru.move_to_end(entry.name)
        return loaded

    def _ensure_loaded(self, entry: _Entry) -> _Loaded:
        with self._lock:
            loaded = self._touch(entry)
        if loaded is not None:
            return loaded
        with entry.lock:  # concurrent first requests wait here for one load
            with self._lock:
                loaded = entry.loaded
            if loaded is None:
                loaded = self._load(entry)
                evicted = self._admit(entry, loaded)
            else:
                evicted = False
        if evicted:
            gc.collect()  # release the evicted models' graphs and variables now
        return loaded

    def _admit(self, entry: _Entry, loaded: _Loaded) -> bool:
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
                evicted |= self._drop(self._entries[oldest])
        return evicted

    def _load(self, entry: _Entry) -> _Loaded:
        start = time.perf_counter()
        try:
            with tf.device(entry.device):
                loaded = _load_ensemble(entry) if entry.kind == "ensemble" else _load_member(entry)
            if entry.device is not None:
                loaded = dataclasses.replace(loaded, call=_pinned(loaded.call, entry.device))
        except Exception as error:
            with self._lock:
                entry.failures += 1
            log.warning("Model %r failed to load: %s", entry.name, error)
            if isinstance(error, MemberError) and error.member == entry.name:
                raise  # load_member's error already names the model
            raise EnsembleError(
                f"Model {entry.name!r}: cannot load {entry.kind} from {_label(entry.source)!r}: {error}"
            ) from error
        seconds = time.perf_counter() - start
        params, nbytes = _weight_sizes(_variables(loaded))
        inner = getattr(loaded.keep_alive, "model", None)
        if not params and isinstance(inner, SavedModelLayer):  # a TF1 member frozen to constants
            params, nbytes = inner.parameter_count, 4 * inner.parameter_count
        with self._lock:
            entry.loads += 1
            entry.load_seconds = seconds
            entry.params, entry.weight_bytes = params, nbytes
        log.info("Loaded model %r in %.2fs (%d parameters)", entry.name, seconds, params)
        return loaded


def process_rss_bytes() -> int:
    """The resident memory of this process now (VmRSS), or its peak where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _source_kind(name: str, source: PathLike | keras.Model) -> str:
    if isinstance(source, keras.layers.Layer):
        return "member"
    try:
        path = os.fspath(source)
    except TypeError:
        raise EnsembleError(
            f"Model {name!r}: expected a path or a keras.Model as source. "
            f"Received: {type(source).__name__}"
        ) from None
    if os.path.isfile(os.path.join(path, MANIFEST)):
        return "ensemble"
    if not os.path.exists(path) and resolve_checkpoint(path) is None:
        raise EnsembleError(f"Model {name!r}: source {path!r} does not exist.")
    return "member"


def _variable_devices(loaded: _Loaded | None) -> tuple[str, ...]:
    if loaded is None:
        return ()
    devices = {getattr(getattr(v, "value", v), "device", "") for v in _variables(loaded)}
    return tuple(sorted(d for d in devices if d))


def _check_device(name: str, device: str | None) -> str | None:
    """`device` if this process has it (as a logical device), else an error listing those it has."""
    if device is None:
        return None
    try:
        spec = tf.DeviceSpec.from_string(device)
    except ValueError:
        spec = None
    available = [tf.DeviceSpec.from_string(d.name) for d in tf.config.list_logical_devices()]
    if spec is None or not any(
        d.device_type == (spec.device_type or "").upper() and d.device_index == (spec.device_index or 0)
        for d in available
    ):
        raise EnsembleError(
            f"Model {name!r}: device {device!r} is not one of this process's devices "
            f"{[d.to_string() for d in available]}."
        )
    return device


def _pinned(call: Callable[[Any], Any], device: str) -> Callable[[Any], Any]:
    def run(feeds: Any) -> Any:
        with tf.device(device):
            return call(feeds)

    return run


def _label(source: PathLike | keras.Model) -> str:
    if isinstance(source, keras.layers.Layer):
        return f"<in-memory {source.name}>"
    return os.fspath(source)


def _load_member(entry: _Entry) -> _Loaded:
    member = load_member(entry.source, name=entry.name, **entry.options)
    specs = {
        spec.name: tf.TensorSpec((None, *spec.shape), tf.as_dtype(spec.dtype), name=spec.name)
        for spec in member.input_specs
    }
    if len(specs) == 1:
        (only,) = specs.values()
        signature: list[Any] = [only]
    else:
        signature = [specs]

    def serve(inputs: Tensor) -> Tensor:
        return member(inputs, training=False)

    # One trace per model: a None batch dimension covers every batch size.
    function = tf.function(serve, input_signature=signature)
    function.get_concrete_function()  # trace now, so a model that cannot run fails its load

    def call(feeds: dict[str, np.ndarray]) -> Tensor:
        return function(feeds if len(feeds) > 1 else next(iter(feeds.values())))

    return _Loaded(call=call, specs=specs, keep_alive=member, function=function)


def _load_ensemble(entry: _Entry) -> _Loaded:
    root = tf.saved_model.load(os.fspath(entry.source))
    signature = root.signatures["serving_default"]
    specs = dict(signature.structured_input_signature[1])

    def call(feeds: dict[str, np.ndarray]) -> Tensor:
        return signature(**feeds)

    return _Loaded(call=call, specs=specs, keep_alive=root, function=signature)


def _variables(loaded: _Loaded) -> list[Any]:
    member = loaded.keep_alive
    if isinstance(member, keras.layers.Layer):
        # A SavedModel member's variables belong to TensorFlow, not to Keras' weights.
        inner = getattr(member, "model", None)
        return list(member.weights) + (inner.tf_variables if isinstance(inner, SavedModelLayer) else [])
    return list(loaded.function.variables)


def _weight_sizes(variables: list[Any]) -> tuple[int, int]:
    """The parameter count and bytes of `variables`, each counted once."""
    unique = {id(v): v for v in variables}.values()
    params = sum(int(np.prod(v.shape)) for v in unique)
    nbytes = sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in unique)
    return params, nbytes


def _tracing_count(loaded: _Loaded | None) -> int:
    if loaded is None or not hasattr(loaded.function, "experimental_get_tracing_count"):
        return 0
    count: int = loaded.function.experimental_get_tracing_count()
    return count


def _feeds(name: str, specs: Mapping[str, tf.TensorSpec], x: Any) -> dict[str, np.ndarray]:
    """`x` as one checked NumPy array per input name, in the specs' dtypes."""
    if isinstance(x, Mapping):
        missing = sorted(set(specs) - set(x))
        if missing:
            raise EnsembleError(
                f"Model {name!r} expects inputs {sorted(specs)}. Missing: {missing}"
            )
        values = {key: x[key] for key in specs}
    elif len(specs) == 1:
        values = {next(iter(specs)): x}
    else:
        raise EnsembleError(
            f"Model {name!r} has several inputs: pass a dict with keys {sorted(specs)}. "
            f"Received: {type(x).__name__}"
        )
    feeds = {}
    for key, value in values.items():
        spec = specs[key]
        array = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
        if not spec.shape.is_compatible_with(array.shape):
            expected = tuple(spec.shape.as_list())
            where = "" if len(specs) == 1 else f" {key!r}"
            raise EnsembleError(
                f"Model {name!r} expects input{where} of shape {expected}. "
                f"Received: {array.shape}"
            )
        feeds[key] = array
    return feeds
