"""Compose an ensemble from member files named in config, print it, evaluate it, export it.

    python -m experiments.compose members=my_members     # conf/members/my_members.yaml
    python -m experiments.compose combiner=vote          # the zoo, hard voting

The combiner is used as configured, nothing is fitted (see experiments.train_meta).
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from ensemble import build_ensemble
from ensemble.data import Dataset
from experiments.common import (
    evaluate,
    finish,
    load_members,
    make_combiner,
    members_config,
    print_table,
)

__all__ = ["load_members", "run"]

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    """Build the configured ensemble, evaluate it on the test split, export, write metrics.json."""
    data: Dataset = instantiate(cfg.data)
    combiner, _ = make_combiner(cfg.combiner)
    model = build_ensemble(load_members(members_config(cfg, data)), combiner, task=cfg.task or data.task)
    model.summary()
    scores = evaluate(model, data, cfg.batch_size)
    result: dict[str, Any] = {
        "task": data.task,
        "combiner": type(combiner).__name__,
        "members": scores["members"],
        "ensemble": scores["ensemble"],
        "data": {"name": data.name, **data.split},
    }
    print_table({**result["members"], "ensemble": result["ensemble"]})
    return finish(result, model, cfg, output_dir, data)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
