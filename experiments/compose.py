"""Compose an ensemble from member files named in config, print it, evaluate it, export it.

    python -m experiments.compose members=my_members     # conf/members/my_members.yaml
    python -m experiments.compose combiner=vote          # the zoo, hard voting

The combiner is used as configured, nothing is fitted (see experiments.train_meta).
"""

from __future__ import annotations

from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

import ensemble
from ensemble.data import Dataset
from ensemble.evaluate import format_table
from experiments.job import build_from_config, finish, members_config
from experiments.preflight import check_export

__all__ = ["run"]


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    """Build the configured ensemble, evaluate it on the test split, export, write metrics.json."""
    check_export(cfg, output_dir)  # before any member loads or trains
    data: Dataset = instantiate(cfg.data)
    model = build_from_config(cfg, data, members_config(cfg, data))
    model.summary()
    scores = ensemble.evaluate_ensemble(model, data.x_test, data.y_test, batch_size=cfg.batch_size)
    result: dict[str, Any] = {
        "task": data.task,
        "combiner": type(ensemble.EnsembleView.of(model).combiner).__name__,
        "members": scores["members"],
        "ensemble": scores["ensemble"],
        "data": {"name": data.name, **data.split},
    }
    print("\n" + format_table({**result["members"], "ensemble": result["ensemble"]}))
    return finish(result, model, cfg, output_dir, data)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
