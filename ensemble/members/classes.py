"""Class labels: the name of each column a classifier emits, and members aligned by them.

Two runs may encode the same labels in different orders (one sorted the species' names, the
other took them as they came in the file); averaging their columns position by position
mixes classes without a word. A member loaded with `classes=[...]` says which label each of
its columns is; `build_ensemble` puts every member's columns in one order (`aligned`), and
members whose label sets differ are an error naming the labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ensemble.errors import EnsembleError, MemberError
from ensemble.members.member import Member

log = logging.getLogger(__name__)

__all__ = ["aligned", "check_member_classes", "checked_classes", "ensemble_classes"]


def checked_classes(classes: Any, where: str) -> tuple[str, ...]:
    """`classes` as a tuple of labels (strings; integers are taken as their decimal text); an
    error naming `where` for anything that is not a sequence of distinct, non-empty labels."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not classes:
        raise EnsembleError(
            f"{where}: expected classes as a non-empty list of labels, one per output column. "
            f"Received: {classes!r}"
        )
    labels = []
    for index, label in enumerate(classes):
        if isinstance(label, bool) or not isinstance(label, (str, int)) or str(label) == "":
            raise EnsembleError(
                f"{where}: expected each class label to be a non-empty string or an integer. "
                f"Received: {label!r} at position {index}"
            )
        labels.append(str(label))
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise EnsembleError(f"{where}: class labels must be distinct. Repeated: {repeated}")
    return tuple(labels)


def check_member_classes(member: Member) -> None:
    """A member's declared labels fit it: it emits class probabilities, one column per label."""
    if member.classes is None:
        return
    if member.output_kind is None:
        raise MemberError(
            member.name,
            f"classes={list(member.classes)} names class columns, but the member declares no class "
            "output: pass output='probabilities' or 'logits'.",
        )
    width = member.width
    if width is not None and width != len(member.classes):
        raise MemberError(
            member.name,
            f"classes names {len(member.classes)} labels {list(member.classes)}, but the member "
            f"emits {width} class columns.",
        )


def ensemble_classes(members: Sequence[Member], classes: Any) -> tuple[str, ...] | None:
    """The labels of the ensemble's columns: `classes` when given, else the first member's
    (None when no member names its classes); an error when only some members name theirs
    and `classes` is not given to say what the others emit, or when the label sets differ."""
    order = None if classes is None else checked_classes(classes, "build_ensemble")
    named = [m for m in members if m.classes is not None]
    if order is None and named and len(named) < len(members):
        unnamed = [m.name for m in members if m.classes is None]
        raise EnsembleError(
            f"Member(s) {[m.name for m in named]} name their classes and {unnamed} do not, so "
            "their columns cannot be matched by label. Load every member with classes=[...], or "
            "pass build_ensemble(..., classes=[...]) for the order the others emit."
        )
    if order is None and named:
        order = named[0].classes
    if order is None:
        return None
    for member in named:
        labels = member.classes or ()
        missing = [label for label in order if label not in labels]
        extra = [label for label in labels if label not in order]
        if missing or extra:
            reference = "build_ensemble's classes" if classes is not None else f"member {named[0].name!r}"
            raise EnsembleError(
                f"Member {member.name!r} predicts other classes than {reference}: it lacks "
                f"{missing} and has {extra}. Members combine only over one label set."
            )
    return order


def aligned(member: Member, order: Sequence[str]) -> Member:
    """`member` emitting its columns in `order` (labels; a member naming none is taken to emit
    them in that order): itself when it already does, else a copy that reorders them."""
    if member.classes is None:
        return member.copy(classes=tuple(order))
    if member.classes == tuple(order):
        return member
    positions = [member.classes.index(label) for label in order]
    source = [
        positions[i] if member.columns is None else member.columns[positions[i]] for i in range(len(order))
    ]
    columns = None if source == list(range(len(order))) else source
    return member.copy(classes=tuple(order), columns=columns)


def aligned_members(members: list[Member], classes: Sequence[str] | None, task: str) -> list[Member]:
    """The members of a `task` ensemble with their columns in its label order (see
    `ensemble_classes`): for `build_ensemble`."""
    if task == "regression":
        named = [m.name for m in members if m.classes is not None]
        if classes is not None or named:
            who = f"member(s) {named} name" if named else "build_ensemble was given"
            raise EnsembleError(f"A regression ensemble has no classes, but {who} class labels.")
        return members
    order = ensemble_classes(members, classes)
    if order is None:
        return members
    for member in members:
        width = member.width
        if width is not None and width != len(order):
            raise EnsembleError(
                f"Member {member.name!r} emits {width} class columns; the ensemble's classes are "
                f"{len(order)}: {list(order)}."
            )
    result = [aligned(member, order) for member in members]
    moved = [m.name for m in result if m.columns is not None]
    if moved:
        log.info("Members %s: columns reordered to the ensemble's classes %s.", moved, list(order))
    return result


def check_integer_labels(labels: Any, classes: Sequence[str], *, emitted: bool, what: str = "y") -> None:
    """Integer labels for an ensemble whose classes are named number its columns, which is only
    what the caller meant where no other reading is open. Two are refused, naming why:

    - the classes are integers' text in another order than 0..K-1 (`[2, 0, 1]`, or 1..K) and
      some label is one of them: label 2 could be the class named '2' or column 2;
    - no member emits the ensemble's order as it comes (`emitted` False: every member was
      reordered by label, to a `classes=` order none was trained in), so the integers are no
      member's encoding.

    Labels by name (strings) are never ambiguous; those pass through `named_labels`."""
    values = np.unique(np.asarray(labels)).tolist()
    as_integers = [int(label) for label in classes if label.lstrip("-").isdigit()]
    if len(as_integers) == len(classes) and as_integers != list(range(len(classes))):
        clash = sorted(set(values) & set(as_integers))
        if clash:
            raise EnsembleError(
                f"{what}: integer labels are ambiguous for this ensemble. Its classes are named "
                f"{list(classes)} (column 0 is class {classes[0]!r}), so label {clash[0]} could be "
                f"the class named {str(clash[0])!r} or column {clash[0]}. Pass the labels by name "
                f"({what}.astype(str)), or give the classes in 0..K-1 order."
            )
    if not emitted:
        raise EnsembleError(
            f"{what}: integer labels number the columns of the ensemble's classes {list(classes)}, "
            "an order no member emits as it comes (each was reordered by label), so they are no "
            f"member's encoding. Pass the labels by name (np.asarray(class_names)[{what}] in your "
            "encoding's order), or build the ensemble with classes= in that order."
        )
