"""`soup`: one model whose weights are the average of members of one architecture (Wortsman et
al. 2022, "Model soups").

A uniform soup averages every member; a greedy soup ranks the members by their score on rows
`x, y` and adds each, best first, only if the soup's score does not get worse. Averaging
weights works for members fine-tuned from one initialisation (they lie in one basin of the
loss); members trained from different seeds usually do not, and their soup predicts worse
than any of them: `soup` warns when it scores below its best member on `x, y`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from ensemble.errors import EnsembleError
from ensemble.evaluate.metrics import classification_metrics
from ensemble.members.load import load_member
from ensemble.members.member import Member
from ensemble.members.saved_model import SavedModelLayer
from ensemble.members.training_rows import is_hash_record
from ensemble.rows import in_batches
from ensemble.train.members import check_finite_rows, check_finite_x, check_labels, checked_targets
from ensemble.types import REGRESSION

__all__ = ["SOUP_METHODS", "soup"]

log = logging.getLogger(__name__)

SOUP_METHODS = ("uniform", "greedy")


def soup(
    members: Sequence[Member | keras.Model],
    *,
    method: str = "uniform",
    x: Any = None,
    y: Any = None,
    name: str = "soup",
) -> Member:
    """The members' weights averaged into one model of their architecture.

    Args:
        members: `Member`s (`load_member`) or Keras models, of one architecture: the same
            layers, weight shapes and inputs.
        method: "uniform" (every member) or "greedy" (members best first on `x, y`, each kept
            only if the soup's score does not get worse; needs `x, y`).
        x, y: rows to score on (not the test split): the log loss for classifiers, the mean
            squared error for regressors. With "uniform" they are optional and only checked.
        name: the soup's member name.

    Returns:
        A `Member` over a new model of the members' architecture with the averaged weights,
        with the first member's inputs and output kind: it builds, fits, exports and serves like
        any member. `soup.ingredients` lists the members averaged.

    Raises:
        EnsembleError: for an unknown method, fewer than one member, members of different
            architectures (naming them and the first difference), a member without Keras weights
            (a TF1 SavedModel), "greedy" without rows, or a row of x that is not finite
            (NaN, infinite, or float64 past float32's range).
    """
    if method not in SOUP_METHODS:
        raise EnsembleError(f"Expected method in {SOUP_METHODS}. Received: method={method!r}")
    if not members:
        raise EnsembleError("soup needs at least one member.")
    if method == "greedy" and (x is None or y is None):
        raise EnsembleError("method='greedy' ranks members on rows: pass x and y.")
    if x is not None:
        check_finite_x(x, "Soup")  # the row and its cause named, before any member predicts
    wrapped = [m if isinstance(m, Member) else load_member(m, name=m.name) for m in members]
    _check_one_architecture(wrapped)
    weights = [[np.asarray(w) for w in m.model.weights] for m in wrapped]
    scored = x is not None and y is not None
    scores = [_score(m, x, y) for m in wrapped] if scored else []  # each member scored once
    if method == "uniform":
        chosen = list(range(len(wrapped)))
    else:
        order = sorted(range(len(wrapped)), key=lambda i: scores[i])
        chosen, best = [order[0]], scores[order[0]]
        for i in order[1:]:
            candidate = _score(_cooked(wrapped[0], [weights[j] for j in [*chosen, i]], name), x, y)
            log.info(
                "Greedy soup: %s %s (%.5g vs %.5g)",
                "adds" if candidate <= best else "skips",
                wrapped[i].name,
                candidate,
                best,
            )
            if candidate <= best:
                chosen, best = [*chosen, i], candidate
    result = _cooked(wrapped[0], [weights[i] for i in chosen], name)
    result.ingredients = [wrapped[i].name for i in chosen]
    records = [wrapped[i].training_rows for i in chosen]  # what trained it: all its ingredients' rows
    usable = [record for record in records if record is not None and not is_hash_record(record)]
    if len(usable) == len(records):
        result.training_rows = np.concatenate(usable)
    elif usable:
        log.info("Soup %r: an ingredient has no row record, so the leakage guard cannot check it.", name)
    if scored:
        best_score = min(scores)
        best_name = wrapped[scores.index(best_score)].name
        score = best if method == "greedy" else _score(result, x, y)  # greedy scored its result
        if score > best_score:
            warnings.warn(
                f"The soup of {result.ingredients} scores {score:.4g} on the rows given, worse than its "
                f"best member {best_name!r} ({best_score:.4g}): members that do not share an "
                "initialisation seldom average well.",
                stacklevel=2,
            )
    return result


def _check_one_architecture(members: list[Member]) -> None:
    first = members[0]
    for member in members:
        if isinstance(member.model, SavedModelLayer) or not member.model.weights:
            raise EnsembleError(f"Member {member.name!r} has no Keras weights to average ({member.format}).")
    reference = _signature(first)
    for member in members[1:]:
        mine = _signature(member)
        difference = next(
            (f"{a} vs {b}" for a, b in zip(reference, mine, strict=False) if a != b),
            f"{len(mine)} layers and weights vs {len(reference)}",
        )
        if mine != reference or member.input_specs != first.input_specs:
            raise EnsembleError(
                f"Members {first.name!r} and {member.name!r} differ in architecture or inputs "
                f"(first difference: {difference}); a soup averages members of one architecture."
            )
        if (member.classes, member.columns) != (first.classes, first.columns):
            raise EnsembleError(
                f"Members {first.name!r} and {member.name!r} emit their classes in other orders "
                f"({first.classes} vs {member.classes}, after reordering {first.columns} vs "
                f"{member.columns}); averaging their weights would mix classes. A soup takes "
                "ingredients whose output columns are the same labels."
            )


def _signature(member: Member) -> list[Any]:
    """The member's layers (class and config, names left out) and weights (shape, dtype)."""
    layers = [
        (type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"})
        for layer in getattr(member.model, "layers", [])
    ]
    weights = [(w.path.split("/")[-1], tuple(w.shape), str(w.dtype)) for w in member.model.weights]
    return [*layers, *weights]


def _cooked(first: Member, weights: list[list[np.ndarray]], name: str) -> Member:
    """A copy of `first`'s model with the mean of `weights` (integer state from the first)."""
    model = keras.models.clone_model(first.model)
    averaged = [
        np.mean(np.stack(column), axis=0, dtype="float64").astype(column[0].dtype)
        if np.issubdtype(column[0].dtype, np.floating)
        else column[0]
        for column in zip(*weights, strict=True)
    ]
    model.set_weights(averaged)
    cooked = first.copy(model=model, source=f"soup of {len(weights)}", format="soup", name=name)
    cooked.training_rows = None  # set from every ingredient's record by the caller
    return cooked


def _score(member: Member, x: Any, y: Any) -> float:
    """The log loss of a classifier's probabilities, the MSE of a regressor, on `x, y`."""
    feeds = x if isinstance(x, Mapping) else {member.input_names[0]: x}
    arrays = {key: np.asarray(value) for key, value in feeds.items()}
    # Called eagerly a batch at a time: a soup is a new model, and Keras' predict would trace anew.
    prediction = in_batches(lambda f: {"p": keras.ops.convert_to_numpy(member(f))}, arrays, 4096)["p"]
    targets = np.asarray(y)
    check_finite_rows(prediction, f"Soup: member {member.name!r}'s prediction on x")
    if member.output_kind is not None:
        column = targets.ndim == 2 and targets.shape[1] == 1
        labels = check_labels(
            targets.ravel() if column else targets,
            len(prediction),
            "soup",
            classes=prediction.shape[-1],
            columns=f"member {member.name!r}'s output",
        )
        return classification_metrics(labels, prediction)["nll"]
    targets = checked_targets(targets, len(prediction), REGRESSION, "soup")
    if targets.size != prediction.size:
        raise EnsembleError(f"Soup: y holds {targets.size} values; expected {prediction.shape}.")
    return float(np.mean((prediction - targets.reshape(prediction.shape)) ** 2))
