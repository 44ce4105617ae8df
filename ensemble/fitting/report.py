"""`FitReport`: what `ensemble.fit` did, on which rows, and what it chose."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FitReport"]


@dataclass(frozen=True)
class FitReport:
    """What `fit` did: the method and options, the fitting rows, the baseline it beat."""

    task: str
    combiner: str  # the combiner's class
    method: str  # one of `pipeline.FIT_METHODS` but "auto"
    options: dict[str, Any]
    regime: str  # "holdout": the members predicted the rows, guarded; "oof": out of fold; "given"
    rows: int
    overlaps: dict[str, int]  # rows shared with each guarded member's training rows
    selected_member: dict[str, Any]  # the member one would ship alone, chosen on these rows
    member_weights: dict[str, float] | None
    noise_variance: float | None  # regression: what the members' spread misses
    fitted: Any = field(repr=False)  # the sklearn estimator, Keras History or weights
    level_one: np.ndarray = field(repr=False)  # (rows, members, width)
    targets: np.ndarray = field(repr=False)
    folds: np.ndarray | None = field(default=None, repr=False)  # "oof": each row's fold
    # The leakage guard: rows_compared, tolerance, overlaps, training_rows, unchecked (no
    # record), exact_only (old records); {"checked": False, "reason": ...} when it did not run.
    guard: dict[str, Any] = field(default_factory=dict)
    # Post-hoc calibration fitted on the same rows after the combiner (`Scaling.as_dict`).
    calibration: dict[str, Any] | None = None
    # `refit_full`: the members were then retrained on more rows, these fitting rows among them.
    refit: dict[str, Any] | None = None
    # What the fit chose where it chose (the default stacker's candidate, C, member and
    # temperature; a cross-validated ridge's alpha): `chosen_by_fit`.
    chosen: dict[str, Any] | None = None

    @property
    def unguarded(self) -> list[str]:
        """The members the leakage guard could not check (no training-row record was found)."""
        return list(self.guard.get("unchecked", []))

    def as_dict(self) -> dict[str, Any]:
        """The report as plain values (what `metrics.json` records of the fit)."""
        record: dict[str, Any] = {
            "task": self.task,
            "combiner": self.combiner,
            "fit": None
            if self.method == "none"
            else {"method": self.method, **self.options, **({"chosen": self.chosen} if self.chosen else {})},
            "regime": self.regime,
            "fit_rows": self.rows,
            "selected_member": self.selected_member,
            "guard": self.guard,
        }
        if self.member_weights is not None:
            record["weights"] = self.member_weights
        if self.noise_variance is not None:
            record["noise_variance"] = self.noise_variance
        if self.calibration is not None:
            record["calibration"] = self.calibration
        if self.refit is not None:
            record["refit_full"] = self.refit
        return record
