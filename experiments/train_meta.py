"""Fit the configured combiner without leakage, compare it with each member and the mean, export.

python -m experiments.train_meta                          # stacking on the holdout split
python -m experiments.train_meta regime=oof               # on out-of-fold predictions
python -m experiments.train_meta -m combiner=stack,select,weighted
"""

from __future__ import annotations

from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.job import finish, fit_and_evaluate
from experiments.preflight import check_export

__all__ = ["run"]


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    """Members, the combiner fitted in the configured regime, then evaluation and export."""
    check_export(cfg, output_dir)  # before any member loads or trains
    job = fit_and_evaluate(cfg, output_dir)
    return finish(job.result, job.model, cfg, job.output_dir, job.data)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
