"""The fit methods `ensemble.fit` knows, and which one `method="auto"` picks for a combiner."""

from __future__ import annotations

from combiners import MeanCombiner, StackingCombiner
from combiners.layered import LayeredCombiner
from ensemble.errors import EnsembleError
from ensemble.graph.view import EnsembleView

__all__ = ["FIT_METHODS", "resolve_method"]

FIT_METHODS = ("auto", "sklearn", "keras", "selection", "optimal", "layered", "none")
"""`auto` picks by combiner: `sklearn` (`fit_stacking`) for a default stacker, `layered`
(`fit_layered`) for a `LayeredCombiner`, `keras` (`fit_combiner`) for any other combiner with
trainable weights, `none` for the rest;
`selection` and `optimal` learn a `MeanCombiner`'s weights (`fit_mean_weights`)."""


def resolve_method(view: EnsembleView, method: str) -> str:
    """`method` checked against the combiner of `view`, and `auto` resolved to a method."""
    if method not in FIT_METHODS:
        raise EnsembleError(f"Expected method in {FIT_METHODS}. Received: method={method!r}")
    combiner = view.combiner
    if (method == "layered") != isinstance(combiner, LayeredCombiner) and method not in ("auto", "none"):
        raise EnsembleError(
            f"method={method!r}: a LayeredCombiner fits with method='layered' (or 'auto'), and only "
            f"it. Received: {type(combiner).__name__} {combiner.name!r}"
        )
    if method == "auto":
        if isinstance(combiner, LayeredCombiner):
            return "layered"
        if isinstance(combiner, StackingCombiner) and combiner.meta_model is None:
            return "sklearn"
        return "keras" if combiner.trainable_weights else "none"
    if method == "keras" and not combiner.trainable_weights:
        raise EnsembleError(
            f"method='keras' trains a combiner's weights; {type(combiner).__name__} {combiner.name!r} "
            "has none (a MeanCombiner learns weights with method='selection' or 'optimal')."
        )
    if method in ("selection", "optimal") and not isinstance(combiner, MeanCombiner):
        raise EnsembleError(
            f"method={method!r} learns a MeanCombiner's weights. Received: "
            f"{type(combiner).__name__} {combiner.name!r}"
        )
    return method
