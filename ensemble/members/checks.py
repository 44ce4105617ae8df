"""A member's declarations checked against the model: what it says it emits, what it holds.

A declaration that contradicts the model is bad input, named before anything runs on it:
`output="logits"` on a model that already ends in a softmax (the ensemble would apply a second
one: a 0.95 answer becomes 0.56); `output="probabilities"` on rows that do not sum to one; a
member used as a classifier whose rows are no probabilities, a sigmoid over k > 1 columns
among them (k independent multi-label scores, not one distribution over k classes: only a
single sigmoid column is a classifier, a binary one); a NaN or infinite weight. The outputs
are judged on a few probe rows drawn from the member's own input specs (standard normal
features, zero token ids), so no data of the user's is needed.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from ensemble.errors import MemberError
from ensemble.members.member import Member
from ensemble.members.saved_model import SavedModelLayer

__all__ = [
    "check_class_outputs",
    "check_declared_output",
    "check_finite_weights",
    "check_multilabel_outputs",
    "final_activation",
    "probe_inputs",
]

log = logging.getLogger(__name__)

PROBE_ROWS = 8
_UNKNOWN_DIM = 4  # the size probe rows take along an axis the model leaves open
_SUM_TOLERANCE = 1e-3  # float16 members sum to one this loosely


def probe_inputs(member: Member, rows: int = PROBE_ROWS, seed: int = 0) -> list[np.ndarray] | None:
    """Rows the member can read, one array per input spec; None when an input is no number."""
    rng = np.random.default_rng(seed)
    values = []
    for spec in member.input_specs:
        shape = (rows, *(_UNKNOWN_DIM if d is None else d for d in spec.shape))
        dtype = np.dtype(spec.dtype) if spec.dtype != "string" else None
        if dtype is None or dtype.kind not in "fiub":
            return None
        values.append(rng.normal(size=shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype))
    return values


def _probe(member: Member, *, source: bool) -> np.ndarray | None:
    """The member's output on probe rows (the source model's own output when `source`), as
    float64 `(rows, width)`; None when the member cannot be probed (it then fails, named, where
    it is first called)."""
    inputs = probe_inputs(member)
    if inputs is None:
        return None
    feed = inputs[0] if len(inputs) == 1 else inputs
    try:
        output = member.source_output(feed) if source else member(feed)
    except Exception as error:  # An input the probe guessed wrong (an open axis, a range).
        log.debug("Member %r could not be probed (%s): its declaration is not checked.", member.name, error)
        return None
    values = np.asarray(output, dtype="float64")
    values = values.reshape(len(values), -1) if values.ndim < 2 else values
    finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
    return values[finite] if finite.any() else None


def _row_sums(values: np.ndarray) -> tuple[bool, str]:
    """Whether each row is a probability vector, and its sums for a message."""
    sums = values.sum(axis=-1)
    ok = bool(np.all(values >= -_SUM_TOLERANCE) and np.allclose(sums, 1.0, atol=_SUM_TOLERANCE))
    return ok, f"row sums {np.round(sums.ravel()[:4], 4).tolist()}, min {values.min():.4g}"


def final_activation(model: Any) -> str | None:
    """The activation of the layer a model ends in (a `Softmax` layer counts as "softmax")."""
    layers = getattr(model, "layers", None)
    if not layers:
        return None
    if type(layers[-1]).__name__ == "Softmax":
        return "softmax"
    name: str | None = getattr(getattr(layers[-1], "activation", None), "__name__", None)
    return name


# What the ensemble's own squashing would do to probabilities declared as logits.
_SQUASH = {
    "softmax": "softmax would flatten them",
    "sigmoid": "squashing would flatten them: a sigmoid per label under task='multilabel', a "
    "softmax under classification",
}


def check_declared_output(member: Member, activation: str | None) -> None:
    """`member`'s declared output kind against its source model's outputs. `activation` is
    that of the layer emitting the chosen output (None when unknown: the probe decides)."""
    declared = member.output_kind
    if declared is None:
        return
    if declared == "logits" and activation in ("softmax", "sigmoid"):
        raise MemberError(
            member.name,
            f"output='logits', but its model ends in a {activation}: its outputs are "
            f"probabilities already (a second {_SQUASH[activation]}). Load it with "
            "output='probabilities' (or leave output unset).",
        )
    # A softmax's rows sum to one. A sigmoid's do only as one column (a binary classifier);
    # over k > 1 columns they are k independent scores, so the probe judges them.
    settled = (declared == "probabilities" and activation == "softmax") or (
        declared == "logits" and activation == "linear"
    )
    values = None if settled else _probe(member, source=True)  # a probe costs a forward pass
    if values is None:
        return
    if values.shape[-1] == 1:
        if declared == "probabilities" and not np.all((values >= 0) & (values <= 1)):
            raise MemberError(
                member.name,
                "output='probabilities', but its single output column leaves [0, 1] (min "
                f"{values.min():.4g}, max {values.max():.4g}): a logit? Load it with output='logits'.",
            )
        return
    probabilities, sums = _row_sums(values)
    if declared == "logits" and probabilities:
        raise MemberError(
            member.name,
            f"output='logits', but its rows are probabilities already ({sums} on probe rows): "
            "a second softmax (or a multilabel ensemble's sigmoid) would flatten them. Load it "
            "with output='probabilities'.",
        )
    if declared == "probabilities" and not probabilities:
        if _multilabel(values, activation):
            raise _multilabel_error(member, values, activation, "output='probabilities', but", declared=True)
        raise MemberError(
            member.name,
            f"output='probabilities', but its rows are no probabilities ({sums} on probe rows). "
            "Load it with output='logits' if it emits logits, or without output for regression.",
        )


def check_class_outputs(member: Member, *, task_inferred: bool = False) -> None:
    """`member`'s predictions must be class probabilities: the ensemble is a classifier, by
    `task="classification"` or, when `task_inferred`, because every member has a class output."""
    values = _probe(member, source=False)
    if values is None:
        return
    probabilities, sums = _row_sums(values)
    if probabilities:
        return
    activation = final_activation(member.model) if member.output_key is None else None
    if _multilabel(values, activation):
        lead = (
            "used as a classifier (the task inferred from the members' class outputs),"
            if task_inferred
            else "under task='classification',"
        )
        raise _multilabel_error(member, values, activation, lead, declared=False)
    raise MemberError(
        member.name,
        f"under task='classification' its predictions must be class probabilities, but its "
        f"rows are not ({sums} on probe rows): a regression model, or logits (load it with "
        "output='logits').",
    )


def _multilabel(values: np.ndarray, activation: str | None) -> bool:
    """Whether rows that are no probabilities look like independent sigmoids over k > 1
    columns: the model ends in a sigmoid or, its activation unknown, every value is in [0, 1]."""
    if values.shape[-1] < 2:
        return False
    in_unit_range = bool(np.all((values >= 0) & (values <= 1)))
    return activation == "sigmoid" or (activation is None and in_unit_range)


def _multilabel_error(
    member: Member, values: np.ndarray, activation: str | None, lead: str, *, declared: bool
) -> MemberError:
    """Why k sigmoids are no classifier, and what to load instead; `lead` says how it is used."""
    width = values.shape[-1]
    shape = ", ".join(["batch", *map(str, values.shape[1:])])
    sums = values.sum(axis=-1)
    seen = (
        f"ends in a sigmoid over {width} columns"
        if activation == "sigmoid"
        else f"lies in [0, 1] over {width} columns, as independent sigmoids do"
    )
    regression = (
        "load it without output and build with task='regression'"
        if declared
        else "pass task='regression' to build_ensemble"
    )
    multilabel = "load it without output and build with" if declared else "build with"
    return MemberError(
        member.name,
        f"{lead} its output ({shape}) {seen}: {width} independent sigmoids are multi-label "
        "scores, not one distribution over classes; their rows sum to "
        f"{sums.min():.4g} to {sums.max():.4g} on probe rows, not 1. For a classifier, end the "
        f"model in a softmax (Dense({width}, activation='softmax')), or choose its pre-sigmoid "
        f"output and load that with output='logits'; for multi-label scores, {multilabel} "
        f"task='multilabel' (mean, vote and learned weights per label); for bounded regression "
        f"targets, {regression}.",
    )


def check_multilabel_outputs(member: Member) -> None:
    """`member` (as a multilabel ensemble holds it) emits independent probabilities: not a
    softmax over k > 1 columns (one distribution, its columns tied), every probe value in [0, 1]."""
    activation = final_activation(member.model) if member.output_key is None else None
    width = member.width
    if activation == "softmax" and member.output_kind == "probabilities" and (width or 2) > 1:
        raise MemberError(
            member.name,
            f"under task='multilabel', but its model ends in a softmax over {width} columns: one "
            "distribution over classes, whose columns are not independent label scores. End it in "
            f"a sigmoid (Dense({width}, activation='sigmoid')), or build with task='classification'.",
        )
    values = _probe(member, source=False)
    if values is None or np.all((values >= 0) & (values <= 1)):
        return
    raise MemberError(
        member.name,
        "under task='multilabel' its predictions must be independent probabilities in [0, 1], but "
        f"they range over [{values.min():.4g}, {values.max():.4g}] on probe rows: logits? Load it "
        "with output='logits' (each column then takes a sigmoid).",
    )


def check_finite_weights(member: Member) -> None:
    """Every weight of `member` is finite, and no weight tensor frozen into a TF1 graph holds a
    NaN. Other graph constants may be infinite on purpose (a clip bound, a mask value, the
    `-inf` start of a max): those, and scalars, are not weights and are not judged."""
    model = member.model
    named: list[tuple[str, Any, bool]]  # (name, values, whether an infinity is allowed)
    if isinstance(model, SavedModelLayer):
        named = [(v.name, v, False) for v in model.tf_variables]
        named += [(name, value, True) for name, value in _frozen_constants(model)]
    else:
        named = [(getattr(w, "path", None) or w.name, w, False) for w in getattr(model, "weights", [])]
    for name, variable, infinity_allowed in named:
        values = np.asarray(variable)
        if values.dtype.kind != "f":
            continue
        bad_values = np.isnan(values) if infinity_allowed else ~np.isfinite(values)
        if bad_values.any():
            bad = int(bad_values.sum())
            raise MemberError(
                member.name,
                f"weight {name!r} holds {bad} NaN or infinite value(s) of {values.size}: a "
                "diverged or corrupted training run. Its outputs would be NaN.",
            )


def _frozen_constants(layer: SavedModelLayer) -> list[tuple[str, Any]]:
    """The float constants of more than one value in a frozen TF1 SavedModel's graph: its
    weights, frozen (a TF2 SavedModel keeps its weights in variables)."""
    if not layer.frozen:
        return []
    graph = getattr(layer.function, "graph", None)
    if graph is None:
        return []
    graph_def = graph.as_graph_def()
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    floats = {dtype.as_datatype_enum for dtype in (tf.float16, tf.float32, tf.float64)}
    return [
        (node.name, tf.make_ndarray(node.attr["value"].tensor))
        for node in nodes
        if node.op == "Const"
        and node.attr["dtype"].type in floats
        and np.prod([d.size for d in node.attr["value"].tensor.tensor_shape.dim]) > 1
    ]
