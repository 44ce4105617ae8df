"""Fit the configured combiner without leakage, compare it with each member and the mean, export.

    python -m experiments.train_meta                          # stacking on the holdout split
    python -m experiments.train_meta meta.regime=oof          # on out-of-fold predictions
    python -m experiments.train_meta -m combiner=stack,select,weighted
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from ensemble.data import Dataset
from ensemble.distribute import is_chief
from experiments.common import build_and_fit, evaluate, finish, print_table, start_runtime

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    """Members, the combiner fitted per `cfg.meta.regime`, then evaluation and export."""
    strategy = start_runtime(cfg)
    if not is_chief(strategy):
        log.info("Not the chief worker: taking part in the distributed work, writing nothing.")
        output_dir = None
    data: Dataset = instantiate(cfg.data)
    model, record = build_and_fit(cfg, data, output_dir, strategy)
    scores = evaluate(model, data, cfg.batch_size, record.get("noise_variance"),
                      data.x_holdout, data.y_holdout)
    result = {**record, **scores, "data": {"name": data.name, **data.split}}
    print_table({**scores["members"], "mean": scores["mean"], "ensemble": scores["ensemble"]})
    return finish(result, model, cfg, output_dir, data)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
