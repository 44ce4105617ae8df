"""The leakage guard: a combiner never fits on rows that trained one of its members."""

from __future__ import annotations

import logging

import keras
import numpy as np

from ensemble.errors import EnsembleError
from ensemble.fitting.level_one import member_inputs
from ensemble.graph.view import EnsembleView
from ensemble.members.training_rows import row_hashes
from ensemble.rows import row_count
from ensemble.types import Data

__all__ = ["check_leakage"]

log = logging.getLogger(__name__)

_UNRECORDED_LOGGED: set[str] = set()  # members whose missing record was already logged


def check_leakage(model: keras.Model, x: Data, *, allow_overlap: bool = False) -> dict[str, int]:
    """How many rows of `x` trained each member that carries a training-row record.

    Raises EnsembleError naming the members and overlap counts when any row
    overlaps, unless `allow_overlap`. Members with no record (trained
    elsewhere) cannot be checked: that is logged once per member.
    """
    overlaps: dict[str, int] = {}
    for member in EnsembleView.of(model).members:
        if member.training_rows is None:
            if member.name not in _UNRECORDED_LOGGED:
                _UNRECORDED_LOGGED.add(member.name)
                log.info(
                    "Member %r carries no training-row record: the leakage guard cannot check it.",
                    member.name,
                )
            continue
        hashes = row_hashes(member_inputs(member, x))
        overlaps[member.name] = int(np.isin(hashes, member.training_rows).sum())
    leaked = {name: count for name, count in overlaps.items() if count}
    if leaked and not allow_overlap:
        raise EnsembleError(
            f"Rows given to fit the combiner trained member(s) {leaked} (name: overlapping rows "
            f"of {row_count(x)}). A combiner fitted on them trusts those members' overconfident "
            "answers. Use held-out rows (the holdout split, or out-of-fold predictions), or pass "
            "allow_overlap=True if you mean it."
        )
    return overlaps
