"""The leakage guard: a combiner never fits on rows that trained one of its members, within a
stated float tolerance.

A fitting row `a` is one of a member's training rows `b` when, in every feature `j`,

    |a_j - b_j| <= atol + rtol * s_j,   s_j = max |b_j| over the member's recorded rows

(a max-abs, Chebyshev, distance in units of a per-feature tolerance). The scale `s_j` is the
feature's magnitude in the record, not its spread, because float noise is relative to
magnitude: the defaults (`rtol=1e-5`, `atol=1e-6`) cover a float64 <-> float32 round trip,
a few ulps, and rounding to 6 decimals or to ~1e-6 relative. Each member's rows go into one
`scipy.spatial.cKDTree` in those units and every fitting row asks for its nearest neighbour
within distance 1: O((n + m) log n). `rtol=atol=0` is exact matching. Records of the previous
format (row hashes) can only be matched exactly, which is logged once per member.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import numpy as np
from scipy.spatial import cKDTree

from ensemble.errors import EnsembleError
from ensemble.fitting.level_one import member_inputs
from ensemble.graph.view import EnsembleView
from ensemble.members.training_rows import is_hash_record, row_hashes
from ensemble.rows import flat_features, row_count
from ensemble.types import Data

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "GuardResult", "check_leakage", "guard_rows", "matching_rows"]

log = logging.getLogger(__name__)

DEFAULT_RTOL = 1e-5
"""Relative to each feature's largest magnitude among the member's training rows."""
DEFAULT_ATOL = 1e-6
"""Absolute: rounding to 6 decimals moves a value by at most 5e-7."""

_LOGGED: set[tuple[str, str]] = set()  # (member, what) already logged
_SLACK = 1.0 + 1e-9  # the tree's distances are in float64 units of the tolerance


class GuardResult(dict[str, int]):
    """What `check_leakage` found: overlapping fitting rows per checked member (the dict
    itself), and what was compared with which tolerance (`as_dict()`, in the fit report)."""

    def __init__(
        self,
        overlaps: dict[str, int],
        *,
        rows_compared: int,
        rtol: float,
        atol: float,
        training_rows: dict[str, int],
        unchecked: list[str],
        exact: list[str],
    ) -> None:
        super().__init__(overlaps)
        self.rows_compared = rows_compared
        self.rtol = rtol
        self.atol = atol
        self.training_rows = training_rows  # each checked member's recorded rows
        self.unchecked = unchecked  # members with no record
        self.exact = exact  # members with a record of the previous format: exact matching

    def as_dict(self) -> dict[str, Any]:
        """Plain values: rows compared, the tolerance, overlaps, the members not checked."""
        return {
            "rows_compared": self.rows_compared,
            "tolerance": {
                "rtol": self.rtol,
                "atol": self.atol,
                "distance": "max over features of |a - b| / (atol + rtol * max|training value|)",
            },
            "overlaps": dict(self),
            "training_rows": dict(self.training_rows),
            "unchecked": list(self.unchecked),
            "exact_only": list(self.exact),
        }


def matching_rows(
    training: np.ndarray, rows: np.ndarray, *, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL
) -> np.ndarray:
    """Which of `rows` (`(m, features)`) equal one of `training` (`(n, features)`) within the
    guard's tolerance (the module's definition): a boolean mask of `m`."""
    _check_tolerance(rtol, atol)
    if training.ndim != 2 or rows.ndim != 2 or training.shape[1] != rows.shape[1]:
        raise EnsembleError(
            f"Expected rows of {training.shape[1:]} features, as the training-row record holds. "
            f"Received: rows of shape {rows.shape}"
        )
    if not len(training) or not len(rows):
        return np.zeros(len(rows), dtype=bool)
    if rtol == 0 and atol == 0:
        exact: np.ndarray = np.isin(row_hashes(rows), row_hashes(training))
        return exact
    train = np.asarray(training, dtype="float64")
    query = np.asarray(rows, dtype="float64")
    tol = atol + rtol * np.abs(train).max(axis=0)
    zero = tol == 0  # atol=0 and the feature is 0 in every training row: it must be 0 exactly
    found: np.ndarray = np.isfinite(query).all(axis=1) & (query[:, zero] == 0).all(axis=1)
    live = ~zero
    if live.any() and found.any():
        tree = cKDTree(train[:, live] / tol[live])
        with np.errstate(over="ignore"):
            scaled = query[found][:, live] / tol[live]
        distance, _ = tree.query(scaled, k=1, p=math.inf, distance_upper_bound=_SLACK)
        found[found] = np.isfinite(distance)
    return found


def guard_rows(
    model: keras.Model,
    x: Data,
    *,
    allow_overlap: bool = False,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    level_one_given: bool = False,
) -> GuardResult:
    """`check_leakage`; with `level_one_given`, the refusal says how to pass level-one
    predictions that come from models which never saw their rows."""
    _check_tolerance(rtol, atol)
    overlaps: dict[str, int] = {}
    training: dict[str, int] = {}
    unchecked: list[str] = []
    exact: list[str] = []
    for member in EnsembleView.of(model).members:
        record = member.training_rows
        if record is None:
            unchecked.append(member.name)
            _log_once(
                member.name,
                "none",
                logging.WARNING,
                "Member %r carries no training-row record (none was found for its content, nor "
                "beside its file): the leakage guard cannot check it, and the fit report names it "
                "unguarded. Record its rows with ensemble.record_training_rows(source, x_train).",
            )
            continue
        inputs = member_inputs(member, x)
        training[member.name] = len(record)
        if is_hash_record(record):
            exact.append(member.name)
            _log_once(
                member.name,
                "hashes",
                logging.WARNING,
                "Member %r has a training-row record of the previous format (row hashes): the "
                "guard can only find its training rows bit for bit, not within the tolerance. "
                "Record it again with ensemble.record_training_rows(source, x_train).",
            )
            overlaps[member.name] = int(np.isin(row_hashes(inputs), record).sum())
            continue
        try:
            found = matching_rows(record, flat_features(inputs), rtol=rtol, atol=atol)
        except EnsembleError as error:
            raise EnsembleError(f"Member {member.name!r}: {error}") from error
        overlaps[member.name] = int(found.sum())
    leaked = {name: count for name, count in overlaps.items() if count}
    if leaked and not allow_overlap:
        raise EnsembleError(_refusal(leaked, row_count(x), rtol, atol, level_one_given))
    return GuardResult(
        overlaps,
        rows_compared=row_count(x),
        rtol=rtol,
        atol=atol,
        training_rows=training,
        unchecked=unchecked,
        exact=exact,
    )


def check_leakage(
    model: keras.Model,
    x: Data,
    *,
    allow_overlap: bool = False,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> GuardResult:
    """How many rows of `x` trained each member that carries a training-row record: rows equal
    to one of its training rows within the tolerance (the module's definition).

    Raises EnsembleError naming the members and overlap counts when any row overlaps, unless
    `allow_overlap`. Members with no record (trained elsewhere) cannot be checked: a warning
    says so once per member, and the answer lists them (`unchecked`). The answer is a dict
    `{member: overlapping rows}` that also says what it compared (`GuardResult.as_dict()`).
    """
    return guard_rows(model, x, allow_overlap=allow_overlap, rtol=rtol, atol=atol)


def _refusal(leaked: dict[str, int], rows: int, rtol: float, atol: float, level_one_given: bool) -> str:
    found = (
        f"Rows given to fit the combiner trained member(s) {leaked} (name: overlapping rows of "
        f"{rows}, equal within rtol={rtol:g}, atol={atol:g}). "
    )
    if level_one_given:
        return found + (
            "level_one was passed for them: if those predictions come from models that never saw "
            "their rows (out of fold, as fit_out_of_fold makes), pass level_one_unseen=True to "
            "ensemble.fit (allow_overlap=True to fit_stacking, fit_combiner or "
            "fit_mean_weights); otherwise predict held-out rows."
        )
    return found + (
        "A combiner fitted on them trusts those members' overconfident answers. Use held-out "
        "rows (the holdout split, or out-of-fold predictions), or pass allow_overlap=True if you "
        "mean it."
    )


def _check_tolerance(rtol: float, atol: float) -> None:
    if not (math.isfinite(rtol) and math.isfinite(atol) and rtol >= 0 and atol >= 0):
        raise EnsembleError(
            f"Expected a finite, non-negative guard tolerance. Received: rtol={rtol}, atol={atol}"
        )


def _log_once(name: str, what: str, level: int, message: str) -> None:
    if (name, what) not in _LOGGED:
        _LOGGED.add((name, what))
        log.log(level, message, name)
