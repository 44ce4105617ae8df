"""The ensemble graph: members and a combiner wired into ONE functional `keras.Model`."""

from ensemble.graph.build import build_ensemble
from ensemble.graph.view import (
    EnsembleView,
    ensemble_combiner,
    ensemble_members,
    ensemble_task,
)

__all__ = ["EnsembleView", "build_ensemble", "ensemble_combiner", "ensemble_members", "ensemble_task"]
