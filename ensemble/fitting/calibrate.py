"""Post-hoc calibration: the ensemble's, fitted on the combiner's output for the fitting rows
and set into the graph's `Calibration` layer (what `ensemble.fit(calibration=...)` runs; a
single member's is `ensemble.fitting.member_calibration`)."""

from __future__ import annotations

import logging

import numpy as np

from combiners import VoteCombiner
from ensemble.errors import EnsembleError
from ensemble.fitting.prepare import forget_compiled
from ensemble.fitting.temperature import Scaling, fit_scaling, fit_weights_and_temperature
from ensemble.graph.view import EnsembleView
from ensemble.types import Data

__all__ = ["CALIBRATIONS", "calibrate", "check_calibration"]

log = logging.getLogger(__name__)

CALIBRATIONS = ("temperature", "vector")


def check_calibration(view: EnsembleView, calibration: str | None) -> None:
    if calibration is None:
        return
    if calibration not in CALIBRATIONS:
        raise EnsembleError(f"Expected calibration in {CALIBRATIONS} or None. Received: {calibration!r}")
    if view.calibration is None:
        raise EnsembleError(
            f"calibration={calibration!r} rescales class probabilities; {view.model.name!r} is a "
            f"{view.task} ensemble."
        )
    if isinstance(view.combiner, VoteCombiner) and view.combiner.voting == "hard":
        raise EnsembleError(
            f"calibration={calibration!r}: VoteCombiner {view.combiner.name!r} votes hard, and vote "
            "shares are not probabilities to rescale; calibrate a soft vote or a mean."
        )


def calibrate(
    view: EnsembleView, x: Data, targets: np.ndarray, level_one: np.ndarray, method: str, *, joint: bool
) -> Scaling:
    """Fit the calibration on the combiner's output for the fitting rows and set it."""
    assert view.calibration is not None  # checked before the fit
    if joint and method == "temperature":
        weights, scaling = fit_weights_and_temperature(
            level_one, targets, start=np.asarray(view.combiner.member_weights)
        )
        view.combiner.set_member_weights([float(w) for w in weights])
    else:
        try:
            scaling = fit_scaling(view.combine(level_one, x), targets, method=method)
        except ValueError as error:  # no positive temperature: the combiner ranks no better than chance
            raise EnsembleError(f"calibration={method!r} on {view.model.name!r}: {error}") from None
    view.calibration.set_scaling(scaling.temperature, scaling.scale, scaling.bias)
    forget_compiled(view.model)
    log.info("Calibration fitted on %d rows: %s", len(targets), scaling.as_dict())
    return scaling
