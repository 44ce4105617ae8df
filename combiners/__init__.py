"""Combiner layers: merge stacked member predictions into one prediction."""

from combiners.base import CLASSIFICATION, REGRESSION, TASKS, Combiner
from combiners.calibration import Calibration
from combiners.mean import MeanCombiner
from combiners.stack import StackingCombiner
from combiners.vote import VoteCombiner

__all__ = [
    "CLASSIFICATION",
    "REGRESSION",
    "TASKS",
    "Calibration",
    "Combiner",
    "MeanCombiner",
    "StackingCombiner",
    "VoteCombiner",
]
