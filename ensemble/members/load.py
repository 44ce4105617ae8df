"""`load_member`: any saved model format in, one isolated frozen `Member` out."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from ensemble.errors import MemberError
from ensemble.members.checkpoint import (
    Architecture,
    build_architecture,
    resolve_checkpoint,
    restore_checkpoint,
)
from ensemble.members.member import OUTPUT_KINDS, InputSpec, Member
from ensemble.members.saved_model import SavedModelLayer, is_saved_model_dir
from ensemble.members.training_rows import load_training_rows
from ensemble.types import OutputKind, PathLike

__all__ = ["DEFAULT_INPUT", "FORMATS", "detect_format", "load_member"]

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("keras", "h5", "saved_model", "checkpoint", "object")
DEFAULT_INPUT = "features"
"""The ensemble input that single-input members read unless told otherwise."""

# The options that only make sense for some formats, so a misplaced one is an error.
_FORMAT_OPTIONS: dict[str, frozenset[str]] = {
    "keras": frozenset({"safe_mode", "custom_objects"}),
    "h5": frozenset({"custom_objects"}),
    "saved_model": frozenset({"tags", "signature"}),
    "checkpoint": frozenset({"architecture", "scope", "variable_map", "safe_mode"}),
    "object": frozenset(),
}


def detect_format(source: PathLike | keras.Model) -> str | None:
    """The format of `source` judged from its type and path, or None if unrecognised."""
    if isinstance(source, keras.layers.Layer):
        return "object"
    path = os.fspath(source)
    if path.endswith(".keras"):
        return "keras"
    if path.endswith((".h5", ".hdf5")):
        return "h5"
    if is_saved_model_dir(path):
        return "saved_model"
    if resolve_checkpoint(path) is not None:
        return "checkpoint"
    return None


def load_member(
    source: PathLike | keras.Model,
    *,
    name: str,
    format: str = "auto",
    output: OutputKind | None = None,
    output_key: str | int | None = None,
    inputs: str | Sequence[str] | None = None,
    safe_mode: bool = True,
    custom_objects: Mapping[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    signature: str = "serving_default",
    architecture: Architecture | None = None,
    scope: str | None = None,
    variable_map: Mapping[str, str] | None = None,
) -> Member:
    """Load one member model from `source` as a frozen `keras.Model` named `name`.

    Args:
        source: a `.keras` file, an HDF5 `.h5`/`.hdf5` file, a TF1 or TF2
            SavedModel directory, a TensorFlow checkpoint (prefix or directory),
            or an in-memory `keras.Model`.
        name: the member's name inside the ensemble; unique there.
        format: one of `FORMATS`, or "auto" to judge from `source`.
        output: what a classifier emits, "probabilities" or "logits" (turned
            into probabilities inside the member). None for regression, or to
            infer it from a final softmax/sigmoid activation.
        output_key: which output of a multi-output model or signature to use.
        inputs: the ensemble input name(s) the member reads, in the order of its
            own inputs. Default: "features" for a single-input member, the
            model's own input names otherwise.
        safe_mode: Keras' safe_mode for `.keras` files and architectures; opt
            out only for files you trust.
        custom_objects: custom layers and functions for `.keras`/`.h5` files.
        tags, signature: the MetaGraph tags and signature key of a SavedModel
            (a TF1 one may need tags, e.g. `["serve"]`).
        architecture, scope, variable_map: for a checkpoint, the model to
            restore into (a `.keras` file, a Keras config, a builder or its
            dotted path), the name scope its TF1 variables live under, and
            explicit `{weight path: checkpoint name}` pairs.

    Returns:
        A `Member` whose outputs equal the source model's.

    Raises:
        MemberError: naming the member, for a missing or unreadable source, an
            unknown format or misplaced option, or an output that cannot be chosen.
    """
    _check_name(name)
    is_object = isinstance(source, keras.layers.Layer)
    if not is_object and not os.path.exists(os.fspath(source)) and not _checkpoint_exists(source):
        raise MemberError(name, f"source {os.fspath(source)!r} does not exist.")
    fmt = detect_format(source) if format == "auto" else format
    if fmt is None:
        raise MemberError(
            name,
            f"cannot tell the format of {os.fspath(source)!r} (a file or directory). Expected a "
            ".keras or .h5/.hdf5 file, a SavedModel directory, or a checkpoint; or pass format= "
            f"one of {FORMATS}.",
        )
    if fmt not in FORMATS:
        raise MemberError(name, f"expected format 'auto' or one of {FORMATS}. Received: {fmt!r}")
    if output is not None and output not in OUTPUT_KINDS:
        raise MemberError(name, f"expected output in {OUTPUT_KINDS} or None. Received: {output!r}")
    given = {
        "safe_mode": safe_mode is not True,
        "custom_objects": custom_objects is not None,
        "tags": tags is not None,
        "signature": signature != "serving_default",
        "architecture": architecture is not None,
        "scope": scope is not None,
        "variable_map": variable_map is not None,
    }
    misplaced = sorted(opt for opt, set_ in given.items() if set_ and opt not in _FORMAT_OPTIONS[fmt])
    if misplaced:
        raise MemberError(name, f"option(s) {misplaced} do not apply to a {fmt!r} source.")

    label = "<in-memory>" if is_object else os.fspath(source)
    try:
        if fmt == "object":
            model = _copy_model(source)
        elif fmt in ("keras", "h5"):
            model = _load_keras_file(label, fmt, safe_mode, custom_objects)
        elif fmt == "saved_model":
            model = SavedModelLayer(
                label,
                tags=tags,
                signature=signature,
                output_key=None if output_key is None else str(output_key),
            )
            output_key = None  # The layer already picked it.
        else:
            model = _load_checkpoint(label, architecture, scope, variable_map, safe_mode)
    except MemberError:
        raise
    except Exception as error:  # Any reader's failure becomes one error naming member and path.
        raise MemberError(name, f"cannot load {fmt!r} source {label!r}: {error}") from error

    inferred = output is None
    try:
        specs = _input_specs(name, model, inputs)
    except ValueError as error:
        if isinstance(error, MemberError):
            raise
        raise MemberError(
            name, f"cannot tell the shape of its inputs (each needs a known rank): {error}"
        ) from error
    member = Member(
        model,
        inputs=specs,
        output=output if output is not None else (None if output_key is not None else _infer_output(model)),
        output_key=output_key,
        source=label,
        format=fmt,
        name=name,
    )
    # Only a sigmoid is ambiguous (a bounded regression output looks the same); a softmax is not.
    member.output_inferred = (
        inferred and member.output_kind is not None and _final_activation(model) == "sigmoid"
    )
    _check_output_key(member)
    if not is_object:
        member.training_rows = load_training_rows(label)
    log.info("Loaded member %r from %s (%s)", name, label, fmt)
    return member


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name or "/" in name:
        raise MemberError(
            str(name), f"expected a member name: a non-empty string without '/'. Received: {name!r}"
        )


def _checkpoint_exists(source: PathLike) -> bool:
    return resolve_checkpoint(os.fspath(source)) is not None


def _load_keras_file(
    path: str, fmt: str, safe_mode: bool, custom_objects: Mapping[str, Any] | None
) -> keras.Model:
    objects = dict(custom_objects or {})
    if fmt == "keras":
        return keras.saving.load_model(path, custom_objects=objects, compile=False, safe_mode=safe_mode)
    return keras.saving.load_model(path, custom_objects=objects, compile=False)


def _load_checkpoint(
    path: str,
    architecture: Architecture | None,
    scope: str | None,
    variable_map: Mapping[str, str] | None,
    safe_mode: bool,
) -> keras.Model:
    if architecture is None:
        raise ValueError(
            "a checkpoint holds only variables: pass architecture= (a .keras file, a Keras "
            "model config, or a builder) to restore them into."
        )
    prefix = resolve_checkpoint(path)
    if prefix is None:
        raise ValueError(f"no checkpoint found at {path!r}")
    model = build_architecture(architecture, safe_mode=safe_mode)
    if model is architecture:  # the caller's own model: restore into a copy, never into it
        model = _copy_model(model)
    restore_checkpoint(model, prefix, scope=scope, variable_map=variable_map)
    return model


def _copy_model(model: keras.Model) -> keras.Model:
    """A copy with its own variables, so freezing the member never touches the caller's model."""
    try:
        copy: keras.Model = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
        if not copy.built and model.built:
            copy.build_from_config(model.get_build_config())
        copy.set_weights(model.get_weights())
        return copy
    except Exception as error:  # Subclassed models without a config cannot be copied.
        log.warning(
            "Model %r cannot be copied (%s); the member shares its variables and freezes it.",
            model.name,
            error,
        )
        return model


def _input_specs(name: str, model: Any, inputs: str | Sequence[str] | None) -> list[InputSpec]:
    if isinstance(model, SavedModelLayer):
        own = [(key, spec.shape[1:], spec.dtype.name) for key, spec in model.input_specs.items()]
        keyed = True
    else:
        try:
            structure = model.input  # keeps a dict of named inputs as a dict
        except (AttributeError, ValueError):
            structure = getattr(model, "inputs", None)  # a Sequential knows only this
        if structure is None:
            raise MemberError(
                name,
                f"cannot tell the inputs of model {model.name!r} (a subclassed model that was "
                "never called). Wrap it in a functional model with keras.Input.",
            )
        flat = keras.tree.flatten(structure)
        keyed = isinstance(structure, Mapping)
        keys = list(structure) if keyed else [t.name for t in flat]
        own = [(key, tuple(t.shape[1:]), str(t.dtype)) for key, t in zip(keys, flat, strict=True)]
    if inputs is None:
        names = [DEFAULT_INPUT] if len(own) == 1 else [key for key, _, _ in own]
    else:
        names = [inputs] if isinstance(inputs, str) else list(inputs)
    if len(names) != len(own):
        raise MemberError(
            name,
            f"expected {len(own)} input name(s), one per model input {[k for k, _, _ in own]}. "
            f"Received: inputs={inputs!r}",
        )
    return [
        InputSpec(
            input_name,
            tuple(int(d) if d is not None else None for d in shape),
            dtype,
            key=key if keyed else None,
        )
        for input_name, (key, shape, dtype) in zip(names, own, strict=True)
    ]


def _infer_output(model: Any) -> OutputKind | None:
    """'probabilities' when the model's one output visibly ends in softmax or sigmoid, else
    unknown (a multi-output model's last layer need not be the output used)."""
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1:
        return None
    return "probabilities" if _final_activation(model) in ("softmax", "sigmoid") else None


def _final_activation(model: Any) -> str | None:
    layers = getattr(model, "layers", None)
    if not layers:
        return None
    if type(layers[-1]).__name__ == "Softmax":
        return "softmax"
    name: str | None = getattr(getattr(layers[-1], "activation", None), "__name__", None)
    return name


def _check_output_key(member: Member) -> None:
    """Resolve the output once, symbolically, so a bad `output_key` fails at load time."""
    inputs = [keras.KerasTensor((None, *spec.shape), dtype=spec.dtype) for spec in member.input_specs]
    try:
        member.compute_output_spec(inputs[0] if len(inputs) == 1 else inputs)
    except (KeyError, IndexError, ValueError) as error:
        raise MemberError(member.name, f"cannot choose its output: {error}") from error
