"""`calibrate_member`: one member's class probabilities calibrated on rows it did not train on,
through `ensemble.fit` on an ensemble of that member alone (so its rows are checked and
guarded as every fit's are)."""

from __future__ import annotations

import logging
from typing import Any

import keras

from combiners import MeanCombiner
from ensemble.fitting.pipeline import fit
from ensemble.graph.build import build_ensemble
from ensemble.members.load import load_member
from ensemble.members.member import Member
from ensemble.tfdata import arrays_of
from ensemble.types import Data

__all__ = ["calibrate_member"]

log = logging.getLogger(__name__)


def calibrate_member(
    member: Member | keras.Model, x: Data, y: Any = None, *, method: str = "temperature", **options: Any
) -> Member:
    """`member` with its class probabilities calibrated (temperature or vector scaling) on rows
    `(x, y)` it did not train on (or `x` a `tf.data.Dataset` of batches `(x, y)`): a new `Member` of the same name, inputs and training-row
    record, whose model ends in a `Calibration` layer; it loads into `build_ensemble` and
    exports like any member.

    The rows are checked and guarded as `ensemble.fit` does it (`options`: `allow_overlap`,
    `guard_rtol`, `guard_atol`, `store`, `strategy`, `verbose`). Fitting the ensemble's
    combiner on the same rows reuses them (a one-parameter fit for temperature scaling).
    """
    x, y = arrays_of(x, y, where="calibrate_member")
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
