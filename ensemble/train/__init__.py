"""Models made from members: a soup of their weights (`soup`), a student that learns the
ensemble (`distill`), and ensembles that train their own members (`boost`, `bag`, `snapshots`)."""

from ensemble.train.boost import bag, boost
from ensemble.train.distill import distill, distillation_loss
from ensemble.train.snapshots import CyclicCosine, snapshots
from ensemble.train.soup import SOUP_METHODS, soup

__all__ = [
    "SOUP_METHODS",
    "CyclicCosine",
    "bag",
    "boost",
    "distill",
    "distillation_loss",
    "snapshots",
    "soup",
]
