"""The synthetic members every benchmark measures: seeded MLPs, stacked."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import keras
from omegaconf import DictConfig

import combiners
from ensemble import build_ensemble, load_member

__all__ = ["ensemble_flops_per_row", "synthetic_ensemble", "synthetic_mlps"]


def synthetic_mlps(cfg: DictConfig, hidden: Sequence[int]) -> list[keras.Model]:
    """`cfg.member_count` seeded MLPs: features -> hidden... -> classes, softmax."""
    models = []
    for i in range(cfg.member_count):
        keras.utils.set_random_seed(cfg.seed + i)
        layers: list[Any] = [keras.Input((cfg.features,))]
        layers += [keras.layers.Dense(units, activation="relu") for units in hidden]
        layers.append(keras.layers.Dense(cfg.classes, activation="softmax"))
        models.append(keras.Sequential(layers))
    return models


def synthetic_ensemble(cfg: DictConfig) -> keras.Model:
    """The synthetic MLPs (`cfg.hidden`), stacked."""
    members = [load_member(m, name=f"member_{i}") for i, m in enumerate(synthetic_mlps(cfg, cfg.hidden))]
    return build_ensemble(members, combiners.StackingCombiner())


def ensemble_flops_per_row(cfg: DictConfig) -> int:
    widths = [cfg.features, *cfg.hidden, cfg.classes]
    return int(cfg.member_count * sum(2 * a * b for a, b in itertools.pairwise(widths)))
