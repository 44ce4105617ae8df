"""What the registry holds of a loaded model: its compiled call, input specs and weights, and the
checks of what a request feeds it."""

from __future__ import annotations

import functools
import os
import resource
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ensemble.errors import EnsembleError
from ensemble.export.saved_model import MANIFEST
from ensemble.export.signature import serving_function
from ensemble.export.versions import ExportWatch, export_dir
from ensemble.members.checkpoint import resolve_checkpoint
from ensemble.members.load import load_member
from ensemble.members.saved_model import SavedModelLayer
from ensemble.members.untrusted import check_graph_ops, read_meta_graphs
from ensemble.serve.feeds import lossless_cast
from ensemble.serve.watch import FileWatch, Watch
from ensemble.types import PathLike, Tensor

__all__ = [
    "SINGLE_OUTPUT",
    "Loaded",
    "ModelSignature",
    "check_device",
    "checked_feeds",
    "label",
    "load_exported",
    "load_member_model",
    "model_sizes",
    "pinned",
    "process_rss_bytes",
    "source_kind",
    "tracing_count",
    "variable_devices",
    "variables",
    "weight_sizes",
]


SINGLE_OUTPUT = "output_0"  # the name of a member's one output (as TF Serving names it)


@dataclass(frozen=True)
class ModelSignature:
    """What a loaded model takes and gives, as a server describes it.

    `outputs` names every output of `predict`; a member's one output (which `predict` returns
    as a bare array, not a dict) is named `SINGLE_OUTPUT`. `signatures` maps each signature
    name (`serving_default`, and `prediction` for an export) to the outputs it keeps.
    """

    inputs: dict[str, tf.TensorSpec]
    outputs: dict[str, tf.TensorSpec]
    signatures: dict[str, tuple[str, ...]]
    single_output: bool = False


@dataclass(frozen=True)
class Loaded:
    """What a loaded model needs to serve: the compiled call and its input specs."""

    call: Callable[[Any], Any]
    specs: dict[str, tf.TensorSpec]  # input name -> spec with a None batch dimension
    keep_alive: Any  # the Member, SavedModel root or onnxruntime session behind `call`
    function: Any = None  # the tf.function of a member, for its tracing count
    sizes: tuple[int, int] | None = None  # parameters and bytes, where no variables tell them
    outputs: dict[str, tf.TensorSpec] | None = None  # None: one output, named SINGLE_OUTPUT
    signatures: dict[str, tuple[str, ...]] | None = None  # None: serving_default, every output
    watch: Watch | None = None  # whether the model on disk is still this one (None: in memory)

    @functools.cached_property
    def signature(self) -> ModelSignature:
        if self.outputs is None:
            output = _spec(self.function.get_concrete_function().structured_outputs, SINGLE_OUTPUT)
            outputs, single = {SINGLE_OUTPUT: output}, True
        else:
            outputs, single = self.outputs, False
        signatures = self.signatures or {"serving_default": tuple(outputs)}
        return ModelSignature(dict(self.specs), dict(outputs), dict(signatures), single)


def _spec(tensor: Any, name: str) -> tf.TensorSpec:
    return tf.TensorSpec(tensor.shape, tensor.dtype, name=name)


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


def source_kind(name: str, source: PathLike | keras.Model) -> str:
    if isinstance(source, keras.layers.Layer):
        return "member"
    try:
        path = os.fspath(source)
    except TypeError:
        raise EnsembleError(
            f"Model {name!r}: expected a path or a keras.Model as source. Received: {type(source).__name__}"
        ) from None
    if export_dir(path) is not None:
        return "ensemble"
    if path.lower().endswith(".onnx") and os.path.isfile(path):
        return "onnx"  # an `export_onnx` file, served by onnxruntime (ensemble.serve.onnx_entry)
    if not os.path.exists(path) and resolve_checkpoint(path) is None:
        raise EnsembleError(f"Model {name!r}: source {path!r} does not exist.")
    return "member"


def variable_devices(loaded: Loaded | None) -> tuple[str, ...]:
    if loaded is None:
        return ()
    devices = {getattr(getattr(v, "value", v), "device", "") for v in variables(loaded)}
    return tuple(sorted(d for d in devices if d))


def check_device(name: str, device: str | None) -> str | None:
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


def pinned(call: Callable[[Any], Any], device: str) -> Callable[[Any], Any]:
    def run(feeds: Any) -> Any:
        with tf.device(device):
            return call(feeds)

    return run


def label(source: PathLike | keras.Model) -> str:
    if isinstance(source, keras.layers.Layer):
        return f"<in-memory {source.name}>"
    return os.fspath(source)


def load_member_model(name: str, source: PathLike | keras.Model, options: Mapping[str, Any]) -> Loaded:
    """A member (anything `load_member` takes) with its call compiled once for every batch size."""
    # Stamped before the load reads the files: a replacement during the load is seen next time.
    files = tuple(
        os.fspath(v) for k, v in options.items() if k == "architecture" and isinstance(v, (str, os.PathLike))
    )
    watch = None if isinstance(source, keras.layers.Layer) else FileWatch(os.fspath(source), files)
    member = load_member(source, name=name, **options)
    specs = [
        tf.TensorSpec((None, *spec.shape), tf.as_dtype(spec.dtype), name=spec.name)
        for spec in member.input_specs
    ]
    function = serving_function(member, specs)
    function.get_concrete_function()  # trace now, so a model that cannot run fails its load

    def call(feeds: dict[str, np.ndarray]) -> Tensor:
        return function(*(feeds[spec.name] for spec in specs))

    specs_by_name = {spec.name: spec for spec in specs}
    return Loaded(call=call, specs=specs_by_name, keep_alive=member, function=function, watch=watch)


def load_exported(source: PathLike, attempts: int = 3) -> Loaded:
    """An exported ensemble (`export_dir`): its `serving_default` signature. A load during
    which the export was replaced (its graph and variables may be of two exports) is done
    again, up to `attempts` loads in all. A graph holding `untrusted.UNSAFE_OPS` is refused
    before it loads, as `load_member` refuses it in safe mode."""
    for attempt in range(1, attempts + 1):
        watch = ExportWatch(os.fspath(source))
        if watch.directory is None:
            raise EnsembleError(f"{os.fspath(source)!r} holds no exported ensemble (no {MANIFEST}).")
        # An export is a SavedModel, code: its graph is read before loading runs any of it.
        try:
            check_graph_ops(label(source), read_meta_graphs(watch.directory), None, "serving_default")
        except ValueError as error:
            found = str(error).split(". A SavedModel is code", 1)[0]
            raise EnsembleError(
                f"{found}. The server runs no export whose graph touches files, checkpoints, "
                "debuggers or Python (an ensemble exported by this project holds none)."
            ) from None
        try:
            root = tf.saved_model.load(watch.directory)
        except Exception:
            if attempt < attempts and watch.replaced():
                continue
            raise
        if attempt == attempts or not watch.replaced():
            break
    signature = root.signatures["serving_default"]
    specs = dict(signature.structured_input_signature[1])
    outputs = {key: _spec(value, key) for key, value in signature.structured_outputs.items()}
    signatures = {
        key: tuple(sorted(function.structured_outputs)) for key, function in root.signatures.items()
    }

    def call(feeds: dict[str, np.ndarray]) -> Tensor:
        return signature(**feeds)

    return Loaded(
        call=call,
        specs=specs,
        keep_alive=root,
        function=signature,
        outputs=outputs,
        signatures=signatures,
        watch=watch,
    )


def variables(loaded: Loaded) -> list[Any]:
    member = loaded.keep_alive
    if isinstance(member, keras.layers.Layer):
        # A SavedModel member's variables belong to TensorFlow, not to Keras' weights.
        inner = getattr(member, "model", None)
        return list(member.weights) + (inner.tf_variables if isinstance(inner, SavedModelLayer) else [])
    return [] if loaded.function is None else list(loaded.function.variables)  # None: ONNX


def model_sizes(loaded: Loaded) -> tuple[int, int]:
    """The parameter count and bytes of a loaded model."""
    params, nbytes = loaded.sizes or weight_sizes(variables(loaded))
    inner = getattr(loaded.keep_alive, "model", None)
    if not params and isinstance(inner, SavedModelLayer):  # a TF1 member frozen to constants
        params, nbytes = inner.parameter_count, 4 * inner.parameter_count
    return params, nbytes


def weight_sizes(variables: list[Any]) -> tuple[int, int]:
    """The parameter count and bytes of `variables`, each counted once."""
    unique = {id(v): v for v in variables}.values()
    params = sum(int(np.prod(v.shape)) for v in unique)
    nbytes = sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in unique)
    return params, nbytes


def tracing_count(loaded: Loaded | None) -> int:
    if loaded is None or not hasattr(loaded.function, "experimental_get_tracing_count"):
        return 0
    count: int = loaded.function.experimental_get_tracing_count()
    return count


def checked_feeds(name: str, specs: Mapping[str, tf.TensorSpec], x: Any) -> dict[str, np.ndarray]:
    """`x` as one checked NumPy array per input name, in the specs' dtypes; a cast that would
    change a value (`lossless_cast`) is an `EnsembleError` naming the model, input and row."""
    if isinstance(x, Mapping):
        missing = sorted(set(specs) - set(x))
        if missing:
            raise EnsembleError(f"Model {name!r} expects inputs {sorted(specs)}. Missing: {missing}")
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
        try:
            array = lossless_cast(key, np.asarray(value), spec.dtype.as_numpy_dtype)
        except EnsembleError as error:
            message = str(error)
            raise EnsembleError(f"Model {name!r}: {message[:1].lower()}{message[1:]}") from None
        if not spec.shape.is_compatible_with(array.shape):
            expected = tuple(spec.shape.as_list())
            where = "" if len(specs) == 1 else f" {key!r}"
            raise EnsembleError(
                f"Model {name!r} expects input{where} of shape {expected}. Received: {array.shape}"
            )
        feeds[key] = array
    return feeds
