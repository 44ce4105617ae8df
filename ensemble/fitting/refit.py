"""`refit_full`: a fitted ensemble whose members were retrained on every row, train and
fitting rows together (AutoGluon's `refit_full`), under the combiner fitted before.

The combiner was fitted on rows no member saw; the members that replace them then train on
those rows too, for the data they add. That is only sound when the guard knows it: every new
member must carry a training-row record covering the combiner's fitting rows, so that a later
`fit` of the combiner on them is refused as the leakage it would be.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import keras

from ensemble.errors import EnsembleError
from ensemble.fitting.guard import guard_rows
from ensemble.fitting.prepare import forget_compiled
from ensemble.graph.build import as_members, build_ensemble
from ensemble.graph.conformal import conformal_config
from ensemble.graph.view import EnsembleView
from ensemble.members.member import Member
from ensemble.rows import row_count
from ensemble.tfdata import arrays_of
from ensemble.types import Data

__all__ = ["refit_full"]

log = logging.getLogger(__name__)


def refit_full(
    model: keras.Model,
    members: Sequence[Member | keras.Model] | Mapping[str, Member | keras.Model],
    x_fit: Data,
) -> keras.Model:
    """The ensemble `model` with its members replaced by `members`, refit on every row.

    Args:
        model: a fitted ensemble from `build_ensemble` (and `ensemble.fit`). It is left as it is.
        members: one replacement per member of `model`, under the same names: the same recipes
            trained again on the training rows and `x_fit` together. Each must carry a
            training-row record (`Member.training_rows`, or `ensemble.record_training_rows`
            beside its file) that holds every row of `x_fit`.
        x_fit: the rows the combiner of `model` was fitted on (or a `tf.data.Dataset` of
            them, batches `x` or `(x, y)`; its labels are not needed).

    Returns:
        A new ensemble of the replacements under a copy of the fitted combiner (its weights,
        meta-model and member weights), with the same calibration and fusion. Its guard
        refuses to fit the combiner on `x_fit` again.

    Raises:
        EnsembleError: for a model with conformal outputs (calibrated on the old members: add
            them after the refit), names that differ from the model's, a replacement that
            predicts another width or reads other inputs (from `build_ensemble`), or one whose
            record is missing or does not hold every fitting row.
    """
    view = EnsembleView.of(model)
    x_fit, _ = arrays_of(x_fit, where="refit_full", labels="ignored")
    if conformal_config(model) is not None:
        raise EnsembleError(
            "refit_full: the model has conformal outputs, calibrated on its current members; "
            "refit the ensemble without them, then add_conformal to the refit one."
        )
    given = {member.name: member for member in as_members(members)}
    names = view.member_names
    if set(given) != set(names):
        raise EnsembleError(
            f"refit_full: expected one replacement per member {names}. Missing: "
            f"{sorted(set(names) - set(given))}; not members: {sorted(set(given) - set(names))}"
        )
    unrecorded = [name for name in names if given[name].training_rows is None]
    if unrecorded:
        raise EnsembleError(
            f"refit_full: member(s) {unrecorded} carry no training-row record, so the guard could "
            "not know they trained on the combiner's fitting rows. Record what each trained on "
            "(ensemble.record_training_rows(source, x), or Member.training_rows)."
        )
    refit = build_ensemble(
        [given[name] for name in names],
        view.combiner,
        task=view.task,
        fuse=bool(view.fused),
        classes=view.classes,
        name=model.name,
    )
    new_view = EnsembleView.of(refit)
    if view.calibration is not None and new_view.calibration is not None:
        old = view.calibration
        new_view.calibration.set_scaling(old.temperature, old.scale, old.bias)
    forget_compiled(refit)
    rows = row_count(x_fit)
    seen = guard_rows(refit, x_fit, allow_overlap=True)
    short = {name: seen.get(name, 0) for name in names if seen.get(name, 0) < rows}
    if short:
        raise EnsembleError(
            f"refit_full: the records of member(s) {sorted(short)} hold only {short} of the "
            f"{rows} fitting rows: a refit member trains on the training rows and x_fit together."
        )
    log.info(
        "refit_full: %d member(s) replaced by refits that trained on the %d fitting rows too.",
        len(names),
        rows,
    )
    return refit
