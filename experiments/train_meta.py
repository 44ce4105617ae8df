"""Fit the configured combiner without leakage, compare it with each member and the mean, export.

    python -m experiments.train_meta                          # stacking on the holdout split
    python -m experiments.train_meta meta.regime=oof          # on out-of-fold predictions
    python -m experiments.train_meta -m combiner=stack,select,weighted
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ensemble import EnsembleError, build_ensemble
from ensemble.data import Dataset
from ensemble.level_one import LevelOneStore
from ensemble.oof import stack_out_of_fold
from experiments.common import (
    evaluate,
    finish,
    fit_from_config,
    load_members,
    make_combiner,
    print_table,
)
from experiments.zoo import ZOO, ensure_zoo, fit_predict

__all__ = ["run"]

log = logging.getLogger(__name__)

REGIMES = ("holdout", "oof")


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    """Members, then the combiner fitted per `cfg.meta.regime`, then evaluation and export."""
    regime = cfg.meta.regime
    if regime not in REGIMES:
        raise EnsembleError(f"meta.regime: expected one of {REGIMES}. Received: {regime!r}")
    data: Dataset = instantiate(cfg.data)
    combiner, fit = make_combiner(cfg.combiner)
    if regime == "holdout":
        members_cfg = _zoo_members(cfg, cfg.zoo.dir, data)
        x_fit, y_fit, level_one = data.x_holdout, data.y_holdout, None
    else:
        x_fit = np.concatenate([data.x_train, data.x_holdout])
        y_fit = np.concatenate([data.y_train, data.y_holdout])
        level_one = _out_of_fold(cfg, data, x_fit, y_fit, output_dir)
        # The final members retrain on every row the folds used.
        everything = dataclasses.replace(data, x_train=x_fit, y_train=y_fit)
        members_cfg = _zoo_members(cfg, os.path.join(cfg.zoo.dir, "oof_final"), everything)

    model = build_ensemble(load_members(members_cfg), combiner, task=cfg.task)
    if level_one is None:
        cache = os.path.join(output_dir, "level_one") if output_dir else None
        level_one = LevelOneStore(cache, verbose=0).predictions(model, x_fit)
    fit_from_config(model, fit, x_fit, y_fit, level_one=level_one)

    scores = evaluate(model, data, cfg.batch_size)
    result: dict[str, Any] = {
        "task": data.task,
        "combiner": type(combiner).__name__,
        "fit": fit,
        "regime": regime,
        "fit_rows": int(len(y_fit)),
        **scores,
        "data": {"name": data.name, **data.split},
    }
    weights = getattr(combiner, "member_weights", None)
    if weights is not None:
        result["weights"] = dict(zip(scores["members"], weights))
    print_table({**scores["members"], "mean": scores["mean"], "ensemble": scores["ensemble"]})
    return finish(result, model, cfg, output_dir, data)


def _zoo_members(cfg: DictConfig, directory: str, data: Dataset) -> DictConfig:
    """The members config with `${zoo.dir}` pointing at `directory`, its zoo trained where missing."""
    local = OmegaConf.merge(cfg, {"zoo": {"dir": directory}})
    members: DictConfig = local.members
    if cfg.zoo.train_missing:
        ensure_zoo(directory, data, [n for n in members if n in ZOO])
    return members


def _out_of_fold(
    cfg: DictConfig, data: Dataset, x: np.ndarray, y: np.ndarray, output_dir: str | None
) -> np.ndarray:
    """Out-of-fold predictions of every member (rows, members, classes), saved beside the run."""
    foreign = [name for name in cfg.members if name not in ZOO]
    if foreign:
        raise EnsembleError(
            f"meta.regime=oof retrains members in each fold, which needs members this project can "
            f"build; member(s) {foreign} are files from elsewhere. Use meta.regime=holdout."
        )
    assert data.classes is not None
    level_one, folds = stack_out_of_fold(
        {name: fit_predict(name, data.classes) for name in cfg.members},
        x, y, cv=cfg.meta.cv, task=data.task, seed=data.split["seed"],
    )
    if output_dir is not None:
        np.savez(os.path.join(output_dir, "oof_predictions.npz"), predictions=level_one, folds=folds,
                 y=y, members=np.array(list(cfg.members)))
    return level_one


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_meta")
def main(cfg: DictConfig) -> None:
    run(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
