"""`build_ensemble`: members and a combiner wired into ONE functional `keras.Model`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from combiners.base import CLASSIFICATION, MULTILABEL, REGRESSION, TASKS, Combiner
from combiners.calibration import Calibration
from ensemble.errors import EnsembleError
from ensemble.graph.layers import (
    ClassificationUncertainty,
    FlatFeatures,
    MemberStack,
    MultilabelUncertainty,
    NonFiniteRows,
    RegressionSpread,
    ResidualScale,
)
from ensemble.graph.member_outputs import member_pieces
from ensemble.graph.model import EnsembleModel
from ensemble.graph.multilabel import multilabel_members
from ensemble.members.checks import check_class_outputs
from ensemble.members.classes import aligned_members
from ensemble.members.load import load_member
from ensemble.members.member import InputSpec, Member
from ensemble.types import Task

__all__ = ["as_members", "build_ensemble"]

log = logging.getLogger(__name__)

# Names of the graph's own layers; a member may not take one.
_RESERVED = ("member_predictions", "calibration", "uncertainty", "std", "features_flat", "non_finite_rows")


def build_ensemble(
    members: Sequence[Member | keras.Model] | Mapping[str, Member | keras.Model],
    combiner: Combiner,
    *,
    task: Task | None = None,
    fuse: bool | None = None,
    classes: Sequence[str] | None = None,
    name: str = "ensemble",
) -> keras.Model:
    """Wire `members` and `combiner` into one functional model.

    Args:
        members: `Member`s (from `load_member`), or plain Keras models, as a list
            or a `{name: model}` mapping (plain models are wrapped by
            `load_member(model, name=...)`).
        combiner: a `combiners.Combiner` layer.
        task: "classification", "regression" or "multilabel" (k independent probabilities
            per row, `ensemble.graph.multilabel`; never inferred); inferred from the members'
            declared outputs when None, and checked against them when given.
        fuse: compute members of one architecture (chains of `Dense` layers of the same
            widths on the same input, see `ensemble.graph.fused`) as one batched computation.
            True fuses every such group; False or None (the default: the benchmark finds no
            TensorFlow path where fusing pays at every batch size) computes members one by
            one. Which members were fused is logged and in the export's manifest.
        name: the model's name.

    Returns:
        A `keras.Model` whose inputs are the union of the members' named inputs
        (one tensor when there is one, else a dict) and whose output is a dict:
        `prediction` and `member_predictions` and, for classification,
        `entropy`, `mutual_information`, `disagreement` (for multilabel, means over labels
        of binary scores: `MultilabelUncertainty`); for regression, `std` (the
        members' spread, or the combiner's `residual_std` where it has one: gradient
        boosting's held-out RMS residual, the same for every row). A
        classifier's combined probabilities pass a `combiners.Calibration` layer named
        `calibration`, the identity until a fit sets a temperature. A row
        with a NaN or infinite input or member prediction is NaN in every output (the
        other rows are unaffected); a batch of no rows gives empty outputs.
    """
    member_list = as_members(members)
    if not isinstance(combiner, Combiner):
        raise EnsembleError(f"Expected combiner to be a combiners.Combiner layer. Received: {combiner!r}")
    task, member_list = _resolve_task(member_list, task)
    member_list = aligned_members(member_list, classes, task)
    original, combiner = combiner, _configured_copy(combiner, task)

    inputs = _ensemble_inputs(member_list)
    for member in member_list:
        if member.name in inputs or member.name == combiner.name:
            what = "an input" if member.name in inputs else "the combiner layer"
            raise EnsembleError(
                f"Member {member.name!r} has the name of {what} of the ensemble; load it under "
                "another name (load_member(..., name=...))."
            )
    specs = [member.compute_output_spec({n: inputs[n] for n in member.input_names}) for member in member_list]
    _check_widths(member_list, specs, combiner)
    pieces, sizes, order = member_pieces(member_list, inputs, fuse)
    member_predictions = MemberStack(sizes, order, name="member_predictions")(pieces)
    if combiner.needs_features:
        features = FlatFeatures(name="features_flat")([inputs[k] for k in sorted(inputs)])
        prediction = combiner(member_predictions, features)
    else:
        prediction = combiner(member_predictions)

    if task == CLASSIFICATION:
        # Post-hoc calibration of the combined probabilities: the identity (no computation)
        # until a fit sets it (`ensemble.fit(..., calibration="temperature")`).
        prediction = Calibration(name="calibration")(prediction)
    outputs: dict[str, Any] = {"prediction": prediction, "member_predictions": member_predictions}
    if task == CLASSIFICATION:
        uncertainty = ClassificationUncertainty(combiner.member_weights, name="uncertainty")
        outputs.update(uncertainty(member_predictions, prediction))
    elif task == MULTILABEL:
        weights = getattr(combiner, "label_weights", None) or combiner.member_weights
        outputs.update(MultilabelUncertainty(weights, name="uncertainty")(member_predictions, prediction))
    else:
        scale = getattr(combiner, "residual_std", None)  # residual learners: a held-out RMS
        spread = RegressionSpread(name="std") if scale is None else ResidualScale(scale, name="std")
        outputs["std"] = spread(prediction if scale is not None else member_predictions)
    checked = [inputs[k] for k in sorted(inputs)] + [member_predictions]
    outputs = NonFiniteRows(name="non_finite_rows")(outputs, checked)
    _copy_state(original, combiner)
    model_inputs = next(iter(inputs.values())) if len(inputs) == 1 else inputs
    return EnsembleModel(inputs=model_inputs, outputs=outputs, name=name)


def _configured_copy(combiner: Combiner, task: Task) -> Combiner:
    """A copy of `combiner` configured for `task`: the caller's layer is left as it was (a
    combiner given to two ensembles, or kept to build another, never changes under them)."""
    kind = type(combiner).__name__
    if task not in combiner.supported_tasks:
        raise EnsembleError(
            f"{kind} {combiner.name!r} cannot combine a {task} task: it supports "
            f"{' and '.join(combiner.supported_tasks)} only."
        )
    if combiner.task is not None and combiner.task != task:
        raise EnsembleError(
            f"{kind} {combiner.name!r} is configured for a {combiner.task} task. Received: a {task} ensemble."
        )
    config = {**combiner.get_config(), "task": task}
    try:
        copy: Combiner = type(combiner).from_config(config)
    # Keras' Layer.get_config raises NotImplementedError for constructor arguments it cannot
    # serialize; from_config, TypeError/ValueError for a config that does not fit the class.
    except (TypeError, ValueError, NotImplementedError) as error:
        raise EnsembleError(
            f"{kind} {combiner.name!r} cannot be copied from its config ({error}): the ensemble "
            "holds its own copy, so a combiner must round-trip through get_config()/from_config() "
            "(every constructor argument in get_config, custom layers registered serializable)."
        ) from error
    if combiner.member_weights is not None and copy.member_weights != combiner.member_weights:
        copy.set_member_weights(combiner.member_weights)  # set after construction, not in its config
    return copy


def _copy_state(original: Combiner, copy: Combiner) -> None:
    """Carry weights the caller's combiner already has (built, or a trained meta-model) into
    the copy the ensemble holds."""
    meta_model = getattr(original, "meta_model", None)
    if original.built:
        copy.set_weights(original.get_weights())
    elif isinstance(meta_model, keras.layers.Layer) and meta_model.built and meta_model.weights:
        copy_meta = getattr(copy, "meta_model_", None)
        if copy_meta is not None:
            copy_meta.set_weights(meta_model.get_weights())


def as_members(members: Any) -> list[Member]:
    """`members` (a list, or a name->model mapping) as `Member`s, plain Keras models wrapped;
    an error for an empty collection, a name listed under another, repeated or reserved names."""
    if isinstance(members, Mapping):
        items = list(members.items())
    elif isinstance(members, Sequence) and not isinstance(members, str):
        items = [(getattr(m, "name", None), m) for m in members]
    else:
        raise EnsembleError(
            f"Expected members as a list or a name->model mapping. Received: {type(members).__name__}"
        )
    if not items:
        raise EnsembleError("Expected at least one member. Received: an empty collection.")
    result = []
    for key, model in items:
        if isinstance(model, Member):
            if key != model.name:
                raise EnsembleError(
                    f"Member {model.name!r} is listed under the name {key!r}; load it with "
                    f"name={key!r} or list it under its own name."
                )
            result.append(model)
        elif isinstance(model, keras.Model):
            result.append(load_member(model, name=str(key)))
        else:
            raise EnsembleError(
                f"Member {key!r}: expected a Member or keras.Model. Received: {type(model).__name__}"
            )
    names = [m.name for m in result]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise EnsembleError(f"Member names must be unique. Repeated: {duplicates}")
    reserved = sorted(set(names) & set(_RESERVED))
    if reserved:
        raise EnsembleError(f"Member name(s) {reserved} are reserved for the ensemble's own layers.")
    return result


def _resolve_task(members: list[Member], task: str | None) -> tuple[Task, list[Member]]:
    """The task, and the members as the ensemble holds them (under task='regression', a
    member whose class output was only inferred from a final sigmoid is re-wrapped as a
    regressor: the caller's member is left as it was)."""
    if task is not None and task not in TASKS:
        raise EnsembleError(f"Expected task in {TASKS} or None. Received: task={task!r}")
    if task == MULTILABEL:
        return task, multilabel_members(members)
    if task == REGRESSION:
        members = [_as_regressor(member) if member.output_inferred else member for member in members]
    classifiers = [m.name for m in members if m.output_kind is not None]
    if task == REGRESSION and classifiers:
        raise EnsembleError(
            f"task='regression', but member(s) {classifiers} declare class outputs "
            "(output='probabilities' or 'logits')."
        )
    task_inferred = task is None
    if task is None:
        if len(classifiers) != len(members):
            undeclared = [m.name for m in members if m.output_kind is None]
            raise EnsembleError(
                f"Cannot infer the task: member(s) {undeclared} declare no output kind. Pass "
                "task='classification' or 'regression' to build_ensemble, or load classifiers "
                "with output='probabilities' or 'logits'."
            )
        task = CLASSIFICATION
    if task == CLASSIFICATION:
        for member in members:
            # Declared kinds were checked at load; an inferred one is only its final sigmoid's
            # word, which over k > 1 columns is k multi-label scores, no class probabilities.
            if member.output_kind is None or member.output_inferred:
                check_class_outputs(member, task_inferred=task_inferred)
    return task, members


def _as_regressor(member: Member) -> Member:
    """`member` without its inferred class output (a final sigmoid may be a bounded regressor)."""
    log.info("Member %r: task='regression' overrides its inferred class output.", member.name)
    return member.copy(output=None)


def _ensemble_inputs(members: list[Member]) -> dict[str, Any]:
    """One `keras.Input` per distinct input name; members reading a name must agree on it."""
    specs: dict[str, tuple[InputSpec, str]] = {}
    for member in members:
        for spec in member.input_specs:
            if spec.name not in specs:
                specs[spec.name] = (spec, member.name)
                continue
            seen, owner = specs[spec.name]
            merged = _merge_shapes(seen.shape, spec.shape)
            if merged is None or seen.dtype != spec.dtype:
                raise EnsembleError(
                    f"Members {owner!r} and {member.name!r} both read input {spec.name!r} but "
                    f"expect {seen.dtype}{list(seen.shape)} and {spec.dtype}{list(spec.shape)}. "
                    "Give one of them another input name with load_member(..., inputs=...)."
                )
            specs[spec.name] = (InputSpec(spec.name, merged, spec.dtype), owner)
    return {
        name: keras.Input(shape=spec.shape, dtype=spec.dtype, name=name) for name, (spec, _) in specs.items()
    }


def _merge_shapes(a: tuple[int | None, ...], b: tuple[int | None, ...]) -> tuple[int | None, ...] | None:
    if len(a) != len(b):
        return None
    merged = []
    for x, y in zip(a, b, strict=True):
        if x is not None and y is not None and x != y:
            return None
        merged.append(x if x is not None else y)
    return tuple(merged)


def _check_widths(members: list[Member], predictions: list[Any], combiner: Combiner) -> None:
    widths = {m.name: p.shape[-1] for m, p in zip(members, predictions, strict=True)}
    if len(set(widths.values())) > 1:
        raise EnsembleError(
            f"Members' outputs differ in width: {widths}. Every member must predict the "
            "same classes (or targets) in the same order."
        )
    shapes = {m.name: tuple(p.shape[1:]) for m, p in zip(members, predictions, strict=True)}
    if len(set(shapes.values())) > 1:
        raise EnsembleError(
            f"Members' outputs differ in shape: {shapes}. Members combine position by position, "
            "so every member must predict the same axes."
        )
    positions = next(iter(shapes.values()))[:-1]
    if positions and not combiner.combines_positions:
        raise EnsembleError(
            f"{type(combiner).__name__} {combiner.name!r} combines (batch, width) predictions; the "
            f"members predict per position, shape (batch, {', '.join(map(str, positions))}, width): "
            f"{sorted(shapes)}. Combine them with MeanCombiner or VoteCombiner."
        )
