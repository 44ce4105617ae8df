"""A registered model's bookkeeping, and the snapshot of it that `ModelRegistry.stats` gives."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf

from ensemble.serve.batcher import Batcher
from ensemble.serve.feeds import finite_rows
from ensemble.serve.loaded import (
    Loaded,
    label,
    load_exported,
    load_member_model,
    pinned,
    tracing_count,
    variable_devices,
)
from ensemble.serve.onnx_entry import load_onnx
from ensemble.types import PathLike

__all__ = ["Entry", "ModelStats"]


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
    evictions: int = 0  # times it was dropped to keep within `max_loaded`
    last_error: str | None = None  # why its last load failed; None after a load that worked


@dataclass
class Entry:
    """One registered model: where it comes from, what of it is loaded, and its counters."""

    name: str
    source: PathLike | keras.Model
    kind: str
    options: dict[str, Any]
    device: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    loaded: Loaded | None = None  # set and cleared under the registry lock only
    params: int | None = None
    weight_bytes: int | None = None
    load_seconds: float | None = None
    loads: int = 0
    failures: int = 0
    calls: int = 0  # requests answered
    model_calls: int = 0  # calls of the model (fewer than requests when batched)
    evictions: int = 0
    last_error: str | None = None
    batcher: Batcher = field(default_factory=lambda: Batcher())

    def open(self) -> Loaded:
        """Load the model from its source, placed on its device (no bookkeeping); its call
        answers NumPy with the non-finite-row rule (`finite_rows`), whatever the kind: a
        member served alone has no `NonFiniteRows` layer of its own."""
        with tf.device(self.device):
            if self.kind == "onnx":  # placed by its session's providers, not tf.device
                loaded = load_onnx(self.source, self.device)
            elif self.kind == "ensemble":
                loaded = load_exported(self.source)
            else:
                loaded = load_member_model(self.name, self.source, self.options)
        call = loaded.call
        if self.device is not None and self.kind != "onnx":
            call = pinned(call, self.device)
        return dataclasses.replace(loaded, call=finite_rows(call))

    def snapshot(self) -> ModelStats:
        """Its stats now; the caller holds the registry lock."""
        loaded = self.loaded
        return ModelStats(
            name=self.name,
            kind=self.kind,
            source=label(self.source),
            loaded=loaded is not None,
            params=self.params,
            weight_bytes=self.weight_bytes,
            load_seconds=self.load_seconds,
            loads=self.loads,
            failures=self.failures,
            calls=self.calls,
            traces=tracing_count(loaded),
            model_calls=self.model_calls,
            device=self.device,
            variable_devices=variable_devices(loaded),
            evictions=self.evictions,
            last_error=self.last_error,
        )
