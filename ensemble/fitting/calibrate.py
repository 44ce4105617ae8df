"""Post-hoc calibration: the ensemble's, fitted on the combiner's output for the fitting rows
and set into the graph's `Calibration` layer (what `ensemble.fit(calibration=...)` runs), and
any member's (`calibrate_member`)."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

from combiners import MeanCombiner, VoteCombiner
from ensemble.errors import EnsembleError
from ensemble.fitting.prepare import forget_compiled
from ensemble.fitting.temperature import Scaling, fit_scaling, fit_weights_and_temperature
from ensemble.graph.build import build_ensemble
from ensemble.graph.view import EnsembleView
from ensemble.members.load import load_member
from ensemble.members.member import Member
from ensemble.types import Data

__all__ = ["CALIBRATIONS", "calibrate", "calibrate_member", "check_calibration"]

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


def calibrate_member(
    member: Member | keras.Model, x: Data, y: Any, *, method: str = "temperature", **options: Any
) -> Member:
    """`member` with its class probabilities calibrated (temperature or vector scaling) on rows
    `(x, y)` it did not train on: a new `Member` of the same name, inputs and training-row
    record, whose model ends in a `Calibration` layer; it loads into `build_ensemble` and
    exports like any member.

    The rows are checked and guarded as `ensemble.fit` does it (`options`: `allow_overlap`,
    `guard_rtol`, `guard_atol`, `store`, `strategy`, `verbose`). Fitting the ensemble's
    combiner on the same rows reuses them (a one-parameter fit for temperature scaling).
    """
    from ensemble.fitting.pipeline import fit  # the pipeline imports this module

    if not isinstance(member, Member):
        member = load_member(member, name=member.name)
    alone = build_ensemble([member], MeanCombiner(), task="classification", name=f"{member.name}_calibrated")
    report = fit(alone, x, y, method="none", calibration=method, **options)
    calibrated = keras.Model(alone.inputs, alone.output["prediction"], name=f"{member.name}_calibrated")
    result = load_member(
        calibrated,
        name=member.name,
        output="probabilities",
        inputs=list(member.input_names),
        classes=member.classes,
    )
    result.training_rows = member.training_rows
    log.info("Member %r calibrated on %d rows: %s", member.name, report.rows, report.calibration)
    return result
