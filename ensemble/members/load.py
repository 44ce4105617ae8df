"""`load_member`: any saved model format in, one isolated frozen `Member` out."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from ensemble.errors import EnsembleError, MemberError
from ensemble.members.checkpoint import read_checkpoint, resolve_checkpoint
from ensemble.members.checks import check_declared_output, check_finite_weights, final_activation
from ensemble.members.classes import check_member_classes, checked_classes
from ensemble.members.fingerprint import content_fingerprint
from ensemble.members.keras_file import copy_model, read_keras_file
from ensemble.members.member import OUTPUT_KINDS, InputSpec, Member
from ensemble.members.saved_model import SavedModelLayer, is_saved_model_dir
from ensemble.members.training_rows import find_training_rows
from ensemble.types import OutputKind, PathLike

# final_activation is defined with the checks that read it, and read here and by ensemble.train.
__all__ = [
    "DEFAULT_INPUT", "FORMATS", "FORMAT_OPTIONS", "detect_format", "final_activation", "load_member",
    "read_member",
]  # fmt: skip

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("keras", "h5", "saved_model", "checkpoint", "object")
DEFAULT_INPUT = "features"
"""The ensemble input that single-input members read unless told otherwise."""

# The options each format's reader takes: any other is an error naming the member.
FORMAT_OPTIONS: dict[str, tuple[str, ...]] = {
    "keras": ("safe_mode", "custom_objects"),
    "h5": ("safe_mode", "custom_objects"),
    "saved_model": ("tags", "signature", "safe_mode"),
    "checkpoint": ("architecture", "scope", "variable_map", "safe_mode"),
    "object": (),
}


def detect_format(source: PathLike | keras.Model) -> str | None:
    """The format of `source` judged from its type and path, or None if unrecognised."""
    if isinstance(source, keras.layers.Layer):
        return "object"
    path = os.fspath(source)
    checkpoint = _checkpoint_at(path)
    return _detect(path, checkpoint)


def load_member(
    source: PathLike | keras.Model,
    *,
    name: str,
    format: str = "auto",
    output: OutputKind | None = None,
    output_key: str | int | None = None,
    inputs: str | Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    **options: Any,
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
            infer it from a final softmax/sigmoid activation (a sigmoid over k > 1
            columns is then refused by `build_ensemble` unless task="regression").
        output_key: which output of a multi-output model or signature to use.
        inputs: the ensemble input name(s) the member reads, in the order of its
            own inputs. Default: "features" for a single-input member, the
            model's own input names otherwise.
        classes: the label of each class column the member emits, in its order (strings, or
            integers taken as their text; two for a single sigmoid column: the negative class
            first). `build_ensemble` aligns members by label, so runs that encoded the labels
            in different orders combine class by class; None leaves the columns unnamed.
        **options: what the format's reader takes (`FORMAT_OPTIONS`): `safe_mode` (default True;
            opt out only for sources you trust as you would code: `.keras`/`.h5` files and
            architectures run a `Lambda` layer's code, and an architecture's dotted import path
            is imported, only with `safe_mode=False`; a SavedModel, whose graph is code, is
            refused while its signature or its loading would run an op of
            `ensemble.members.untrusted.UNSAFE_OPS`: file-system, checkpoint, debugger or
            Python-calling ops), `custom_objects` (`.keras`/`.h5`); `tags`, `signature` (a
            SavedModel's MetaGraph tags, e.g. `["serve"]` for TF1, and signature key);
            `architecture`, `scope`, `variable_map` (a checkpoint: the model to restore into, as
            a `.keras` file, a Keras config, a builder or its dotted path; the name scope of its
            TF1 variables; explicit `{weight path: checkpoint name}` pairs).

    Returns:
        A `Member` whose outputs equal the source model's, carrying the record of its training
        rows when one is found by its content (`ensemble.members.training_rows`).

    Raises:
        MemberError: naming the member, for a missing or unreadable source, an unknown format
            or misplaced option, an output that cannot be chosen, a declaration its outputs
            contradict (`output="logits"` on probabilities, `"probabilities"` on rows that do
            not sum to one, a sigmoid over k > 1 columns among them), `classes` that are not
            one distinct label per class column, a NaN/infinite weight, or a damaged record.
    """
    member = read_member(source, name=name, format=format, output=output, output_key=output_key,
                         inputs=inputs, classes=classes, **options)  # fmt: skip
    if member.format != "object":  # its record is found by what it is, wherever the file is
        try:
            rows = find_training_rows(str(member.source), content_fingerprint(member), name=name)
        except EnsembleError as error:  # a damaged record: the error names its file
            raise MemberError(name, str(error)) from error
        member.training_rows = rows
    log.info("Loaded member %r from %s (%s)", name, member.source, member.format)
    return member


def read_member(
    source: PathLike | keras.Model, *, name: str, format: str = "auto", output: OutputKind | None = None,
    output_key: str | int | None = None, inputs: str | Sequence[str] | None = None,
    classes: Sequence[str] | None = None, **options: Any,
) -> Member:  # fmt: skip
    """`load_member` without the training-row record (to take a fingerprint when recording one)."""
    _check_name(name)
    fmt, label, checkpoint = _locate(name, source, format)
    misplaced = sorted(set(options) - set(FORMAT_OPTIONS[fmt]))
    if misplaced:
        accepted = ", ".join(FORMAT_OPTIONS[fmt]) or "none"
        raise MemberError(
            name, f"option(s) {misplaced} do not apply to a {fmt!r} source (its options: {accepted})."
        )
    if output is not None and output not in OUTPUT_KINDS:
        raise MemberError(name, f"expected output in {OUTPUT_KINDS} or None. Received: {output!r}")
    labels = None if classes is None else checked_classes(classes, f"Member {name!r}")
    try:
        if fmt == "object":
            model = copy_model(source)
        elif fmt in ("keras", "h5"):
            model = read_keras_file(label, fmt, **options)
        elif fmt == "saved_model":
            key = None if output_key is None else str(output_key)
            model, output_key = SavedModelLayer(label, output_key=key, **options), None  # it picks
        else:
            model = read_checkpoint(
                label if checkpoint is None else checkpoint, copy_model=copy_model, **options
            )
    except MemberError:
        raise
    except Exception as error:  # Any reader's failure becomes one error naming member and path.
        raise MemberError(name, f"cannot load {fmt!r} source {label!r}: {error}") from error
    return _wrap(name, model, fmt, label, output, output_key, inputs, labels)


def _locate(name: str, source: PathLike | keras.Model, format: str) -> tuple[str, str, str | None]:
    """The format, a label for `source` (its path), and its checkpoint prefix when it is one;
    the checkpoint is looked up once, and only when the path is no file or SavedModel."""
    if isinstance(source, keras.layers.Layer):
        fmt = "object" if format == "auto" else format
        if fmt != "object":
            raise MemberError(name, f"an in-memory model is format 'object'. Received: format={format!r}")
        return fmt, "<in-memory>", None
    path = os.fspath(source)
    checkpoint = _checkpoint_at(path)
    if not os.path.exists(path) and checkpoint is None:
        raise MemberError(name, f"source {path!r} does not exist.")
    detected = _detect(path, checkpoint) if format == "auto" else format
    if detected is None:
        raise MemberError(
            name,
            f"cannot tell the format of {path!r} (a file or directory). Expected a "
            ".keras or .h5/.hdf5 file, a SavedModel directory, or a checkpoint; or pass format= "
            f"one of {FORMATS}.",
        )
    if detected not in FORMATS:
        raise MemberError(name, f"expected format 'auto' or one of {FORMATS}. Received: {detected!r}")
    return detected, path, checkpoint


def _checkpoint_at(path: str) -> str | None:
    """The checkpoint prefix at `path`, looked up only when it is no file or SavedModel."""
    return None if os.path.isfile(path) or is_saved_model_dir(path) else resolve_checkpoint(path)


def _detect(path: str, checkpoint: str | None) -> str | None:
    if path.endswith(".keras"):
        return "keras"
    if path.endswith((".h5", ".hdf5")):
        return "h5"
    if is_saved_model_dir(path):
        return "saved_model"
    return "checkpoint" if checkpoint is not None else None


def _wrap(
    name: str,
    model: Any,
    fmt: str,
    label: str,
    output: OutputKind | None,
    output_key: str | int | None,
    inputs: str | Sequence[str] | None,
    classes: tuple[str, ...] | None,
) -> Member:
    """The read model as a `Member`: its inputs named, its output kind declared or inferred,
    its class labels checked against its width."""
    try:
        specs = _input_specs(name, model, inputs)
    except ValueError as error:
        if isinstance(error, MemberError):
            raise
        raise MemberError(
            name, f"cannot tell the shape of its inputs (each needs a known rank): {error}"
        ) from error
    kind = output if output is not None else (None if output_key is not None else _infer_output(model))
    member = Member(
        model,
        inputs=specs,
        output=kind,
        output_key=output_key,
        source=label,
        format=fmt,
        classes=classes,
        name=name,
    )
    # Only a sigmoid is ambiguous (a bounded regression output looks the same); a softmax is not.
    member.output_inferred = output is None and kind is not None and final_activation(model) == "sigmoid"
    _check_output_key(member)
    check_finite_weights(member)
    if output is not None:  # declared; an inferred kind is the activation's own word
        # The last layer emits the chosen output only when the model has one output.
        check_declared_output(member, final_activation(model) if output_key is None else None)
    check_member_classes(member)
    return member


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name or "/" in name:
        raise MemberError(
            str(name), f"expected a member name: a non-empty string without '/'. Received: {name!r}"
        )


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
    return "probabilities" if final_activation(model) in ("softmax", "sigmoid") else None


def _check_output_key(member: Member) -> None:
    """Resolve the output once, symbolically, so a bad `output_key` fails at load time."""
    inputs = [keras.KerasTensor((None, *spec.shape), dtype=spec.dtype) for spec in member.input_specs]
    try:
        member.compute_output_spec(inputs[0] if len(inputs) == 1 else inputs)
    except (KeyError, IndexError, ValueError) as error:
        raise MemberError(member.name, f"cannot choose its output: {error}") from error
