"""Compose an ensemble from member files named in config, print it, evaluate it, export it.

    python -m experiments.compose                       # the demo zoo on digits
    python -m experiments.compose combiner=vote         # another combiner
    python -m experiments.compose members=my_members    # conf/members/my_members.yaml

The combiner is used as configured (its `fit:` block is for train_meta).
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
from experiments.common import evaluate, finish, load_members, make_combiner, print_table
from experiments.zoo import ZOO, ensure_zoo

__all__ = ["load_members", "run"]

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    """Build the configured ensemble, evaluate it on the test split, write metrics.json, export."""
    data: Dataset = instantiate(cfg.data)
    if cfg.zoo.train_missing and any(
        str(spec.source).startswith(str(cfg.zoo.dir)) for spec in cfg.members.values()
    ):
        ensure_zoo(cfg.zoo.dir, data, [n for n in cfg.members if n in ZOO])
    combiner, _ = make_combiner(cfg.combiner)
    model = build_ensemble(load_members(cfg.members), combiner, task=cfg.task)
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
