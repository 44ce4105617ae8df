"""Combiner layers: merge stacked member predictions into one prediction."""

from combiners.additive import AdditiveCombiner
from combiners.base import CLASSIFICATION, REGRESSION, TASKS, Combiner
from combiners.calibration import Calibration
from combiners.layered import LayeredCombiner
from combiners.mean import MeanCombiner
from combiners.stack import StackingCombiner
from combiners.vote import VoteCombiner

__all__ = [
    "CLASSIFICATION",
    "REGRESSION",
    "TASKS",
    "AdditiveCombiner",
    "Calibration",
    "Combiner",
    "LayeredCombiner",
    "MeanCombiner",
    "StackingCombiner",
    "VoteCombiner",
]
