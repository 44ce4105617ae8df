"""Translation of Keras 2 (tf_keras 2.x) model configs into ones Keras 3 deserializes.

tf_keras writes `.keras` archives in the same layout as Keras 3 (`config.json`,
`metadata.json`, `model.weights.h5` with the same variable paths), but its
config differs: layers carry `batch_input_shape`, a functional model is class
`Functional` of module `tf_keras.src.engine.functional`, dtype policies are
`Policy` objects, `BatchNormalization` keeps its axis as a list, recurrent
layers carry `time_major`, `Embedding` carries `input_length`. `translate`
rewrites those; what has no Keras 3 counterpart is a `Keras2Error` naming the
layer and field. Legacy HDF5 configs (no `module` keys) take the same fixes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

import keras

__all__ = ["Keras2Error", "diagnose", "is_keras2_version", "translate"]

Config = dict[str, Any]

_MAX_CAUSE = 600  # characters of Keras' own message kept (it may repeat the whole config)

_MODELS = ("Sequential", "Functional", "Model")
_RECURRENT = ("LSTM", "GRU", "SimpleRNN", "RNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
# Layers tf_keras writes for raw TensorFlow calls in a functional model, and others gone in Keras 3.
_NO_COUNTERPART = {
    "TFOpLambda": "a raw TensorFlow op (tf.* call) in the functional graph",
    "SlicingOpLambda": "tensor slicing (x[...]) in the functional graph",
    "InstanceProperty": "a tensor attribute read in the functional graph",
    "InstanceMethod": "a tensor method call in the functional graph",
    "ClassMethod": "a TensorFlow class method call in the functional graph",
    "DenseFeatures": "feature columns",
    "CuDNNLSTM": "the TF1 cuDNN layer",
    "CuDNNGRU": "the TF1 cuDNN layer",
}
# (field, value it may take and be dropped with): tf_keras-only arguments with a neutral value.
_DROPPED: dict[str, tuple[tuple[str, Any], ...]] = {
    "BatchNormalization": (("virtual_batch_size", None), ("adjustment", None), ("fused", None)),
    **{name: (("time_major", False),) for name in _RECURRENT},
}


class Keras2Error(ValueError):
    """A Keras 2 config with something Keras 3 cannot build; names the layer and field."""


def is_keras2_version(version: object) -> TypeGuard[str]:
    """Whether a file's recorded `keras_version` is a Keras 2 (tf_keras 2.x) one."""
    return isinstance(version, str) and version.split(".", 1)[0] == "2"


def translate(config: Mapping[str, Any], custom_objects: Mapping[str, Any] | None = None) -> Config:
    """A Keras 3 config equivalent to the Keras 2 model `config` (which is not changed)."""
    known = dict(custom_objects or {})
    out = copy.deepcopy(dict(config))
    out.pop("compile_config", None)  # members load uncompiled
    if out.get("class_name") not in _MODELS and not _is_custom(out, known):
        raise Keras2Error(
            f"its model is of class {out.get('class_name')!r}, no Sequential or functional model (a "
            "subclassed model has no config to translate); pass its Keras 3 class in custom_objects, "
            "or load the model's SavedModel instead."
        )
    _object(out, "model", known)
    return out


def _object(obj: Config, where: str, known: Mapping[str, Any]) -> None:
    """Fix one serialized layer or model in place; `where` names it for errors."""
    name = obj.get("class_name")
    cfg = obj.get("config")
    if not isinstance(name, str) or not isinstance(cfg, dict):
        return
    label = f"{where} {cfg.get('name', '?')!r} ({name})"
    if name in _MODELS:
        _model(obj, cfg, label, known)
        return
    if name in _NO_COUNTERPART and not _is_custom(obj, known):
        raise Keras2Error(
            f"{label} is {_NO_COUNTERPART[name]}, which has no Keras 3 counterpart; rebuild the model "
            "in Keras 3 with keras.ops / Lambda, or load its SavedModel instead."
        )
    if _is_builtin_name(obj):
        if not hasattr(keras.layers, name):
            if name in known or _is_custom(obj, known):
                return
            raise Keras2Error(
                f"{label}: layer class {name!r} does not exist in Keras 3; pass it in "
                "custom_objects={...} as a Keras 3 class, or load the model's SavedModel instead."
            )
        obj["module"] = "keras.layers"
        obj["registered_name"] = None
    _layer(name, cfg, label, known)


def _model(obj: Config, cfg: Config, label: str, known: Mapping[str, Any]) -> None:
    name = obj["class_name"]
    if name == "Functional" or (name == "Model" and "layers" in cfg):
        obj.update(
            module="keras.src.models.functional", class_name="Functional", registered_name="Functional"
        )
    elif name == "Sequential":
        obj.update(module="keras", registered_name=None)
    _dtype(cfg, label)
    layers = cfg.get("layers")
    if not isinstance(layers, list):
        return
    if name == "Sequential":
        _sequential_input(layers)
    else:
        _reindex_nested_sequentials(cfg, layers)
    for layer in layers:
        if isinstance(layer, dict):
            _object(layer, "layer", known)


def _reindex_nested_sequentials(cfg: Config, layers: list[Any]) -> None:
    """Node indices of calls to a nested Sequential one lower: in tf_keras one built on an input
    owns node 0 (its own graph), in Keras 3 a Sequential's first call is node 0."""
    nested = {
        layer["config"].get("name")
        for layer in layers
        if isinstance(layer, dict)
        and layer.get("class_name") == "Sequential"
        and isinstance(layer.get("config"), dict)
        and any(
            isinstance(sub, dict) and sub.get("class_name") == "InputLayer"
            for sub in layer["config"].get("layers", [])[:1]
        )
    }
    if not nested:
        return

    def shift(ref: Any) -> None:
        if isinstance(ref, list) and len(ref) >= 3 and isinstance(ref[0], str) and isinstance(ref[1], int):
            if ref[0] in nested and ref[1] > 0:
                ref[1] -= 1
        elif isinstance(ref, list):
            for item in ref:
                shift(item)

    for layer in layers:
        if isinstance(layer, dict):
            shift(layer.get("inbound_nodes"))
    shift(cfg.get("output_layers"))


def _sequential_input(layers: list[Any]) -> None:
    """A Sequential whose first layer took `input_shape=` gets the InputLayer Keras 3 needs
    (tf_keras writes one itself; configs of older Keras 2 versions may lack it)."""
    first = layers[0] if layers and isinstance(layers[0], dict) else {}
    cfg = first.get("config")
    if first.get("class_name") == "InputLayer" or not isinstance(cfg, dict):
        return
    shape = cfg.get("batch_input_shape")
    if shape is None and isinstance(cfg.get("input_shape"), list):
        shape = [None, *cfg["input_shape"]]
    if shape is None:
        return
    dtype = cfg.get("dtype") if isinstance(cfg.get("dtype"), str) else None
    dtype = "float32" if dtype is None or dtype.startswith("mixed_") else dtype  # policy -> input dtype
    layer = {"batch_shape": shape, "dtype": dtype, "name": f"{cfg.get('name')}_input"}
    layers.insert(
        0, {"module": "keras.layers", "class_name": "InputLayer", "config": layer, "registered_name": None}
    )


def _layer(name: str, cfg: Config, label: str, known: Mapping[str, Any]) -> None:
    shape = cfg.pop("batch_input_shape", None)  # any layer's input_shape=; the InputLayer has it too
    if shape is None and isinstance(cfg.get("input_shape"), list):
        shape = [None, *cfg.pop("input_shape")]
    if name == "InputLayer" and shape is not None:
        cfg["batch_shape"] = shape
    _dtype(cfg, label)
    for field, neutral in _DROPPED.get(name, ()):
        if field in cfg:
            value = cfg.pop(field)
            if value != neutral:
                raise Keras2Error(
                    f"{label}: {field}={value!r} has no Keras 3 counterpart (only {neutral!r})."
                )
    fix = _FIXES.get(name)
    if fix is not None:
        fix(cfg, label)
    for key in ("layer", "backward_layer", "cell"):
        if isinstance(cfg.get(key), dict):
            _object(cfg[key], f"{label}, wrapped layer", known)
    if isinstance(cfg.get("cell"), list):  # StackedRNNCells inside RNN
        for cell in cfg["cell"]:
            _object(cell, f"{label}, cell", known)


def _batch_norm(cfg: Config, label: str) -> None:
    axis = cfg.get("axis")
    if isinstance(axis, list):
        if len(axis) != 1:
            raise Keras2Error(f"{label}: axis={axis!r} (several axes) has no Keras 3 counterpart.")
        cfg["axis"] = int(axis[0])
    if cfg.get("renorm"):
        raise Keras2Error(f"{label}: renorm=True is not supported by Keras 3's BatchNormalization here.")


def _embedding(cfg: Config, label: str) -> None:
    cfg.pop("input_length", None)  # Keras 3 takes the length from the input


def _lambda(cfg: Config, label: str) -> None:
    """tf_keras' `(code, defaults, closure)` triples become Keras 3's `__lambda__` objects
    (still refused unless `safe_mode=False`); a named function becomes a function object."""
    for field in ("function", "output_shape"):
        kind = cfg.pop(f"{field}_type" if field == "output_shape" else "function_type", None)
        module = cfg.pop(f"{field}_module" if field == "output_shape" else "module", None)
        value = cfg.get(field)
        if kind == "lambda" and isinstance(value, list) and len(value) == 3:
            code, defaults, closure = value
            cfg[field] = {
                "class_name": "__lambda__",
                "config": {"code": code, "defaults": defaults, "closure": closure},
            }
        elif kind == "function" and isinstance(value, str):
            cfg[field] = {
                "module": module,
                "class_name": "function",
                "config": value,
                "registered_name": value,
            }
        elif kind not in (None, "raw"):
            raise Keras2Error(f"{label}: {field} of kind {kind!r} cannot be translated.")
    if cfg.get("output_shape") is None:
        cfg.pop("output_shape", None)


_FIXES: dict[str, Callable[[Config, str], None]] = {
    "BatchNormalization": _batch_norm,
    "Embedding": _embedding,
    "Lambda": _lambda,
}


def _dtype(cfg: Config, label: str) -> None:
    """A `Policy` object becomes its name (`"float32"`, `"mixed_float16"`), as Keras 3 takes it."""
    dtype = cfg.get("dtype")
    if isinstance(dtype, dict):
        inner = dtype.get("config")
        policy = inner.get("name") if isinstance(inner, dict) else None
        if dtype.get("class_name") not in ("Policy", "DTypePolicy") or not isinstance(policy, str):
            raise Keras2Error(f"{label}: dtype={dtype!r} is no dtype policy Keras 3 knows.")
        cfg["dtype"] = policy


def _is_builtin_name(obj: Config) -> bool:
    """Whether the object names a built-in Keras (2 or 3) class rather than a user's own."""
    module = obj.get("module")
    if obj.get("registered_name") not in (None, obj.get("class_name")):
        return False
    return module is None or module == "keras" or str(module).startswith(("keras.", "tf_keras"))


def _is_custom(obj: Config, known: Mapping[str, Any]) -> bool:
    registered = obj.get("registered_name")
    if isinstance(registered, str) and (
        registered in known or keras.saving.get_registered_object(registered) is not None
    ):
        return True
    return obj.get("class_name") in known


def diagnose(
    config: Mapping[str, Any], error: Exception, custom_objects: Mapping[str, Any] | None = None
) -> str:
    """Why Keras 3 cannot build the translated `config` (it raised `error`): the first layer
    that fails on its own and its error, else Keras' error, shortened."""
    return _failing_layer(config, dict(custom_objects or {})) or _short(error)


def _failing_layer(config: Mapping[str, Any], objects: dict[str, Any]) -> str | None:
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict):
            continue
        if layer.get("class_name") in _MODELS:
            found = _failing_layer(layer, objects)
            if found is not None:
                return found
            continue
        try:
            keras.saving.deserialize_keras_object(layer, custom_objects=objects)
        except Exception as error:  # Any failure of one layer is what the user needs to read.
            return f"layer {layer.get('config', {}).get('name', '?')!r} ({layer.get('class_name')}): {_short(error)}"
    return None


def _short(error: Exception) -> str:
    """Keras' message without the config it may repeat in full."""
    return str(error).rsplit("Exception encountered: ", 1)[-1].strip()[:_MAX_CAUSE]
