"""Train the member zoo (`conf/zoo`, `conf/member`) where missing, and report each member.

python -m experiments.train_members                 # the digits zoo
python -m experiments.train_members data=wine
python -m experiments.train_members +member@zoo.members.mlp2=mlp zoo.members.mlp2.train.seed=7
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from ensemble.data import Dataset
from ensemble.evaluate import classification_metrics, format_table, regression_metrics
from experiments.job import load_members
from experiments.zoo import ensure_zoo, member_entries, zoo_directory

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train the missing zoo members on the train split; their test metrics, one row each."""
    data: Dataset = instantiate(cfg.data)
    directory = zoo_directory(cfg.zoo, data)
    trained = ensure_zoo(cfg.zoo, data, directory)
    score = classification_metrics if data.task == "classification" else regression_metrics
    rows = {
        member.name: score(data.y_test, member.predict(data.x_test, verbose=0))
        for member in load_members(member_entries(cfg.zoo, data, directory))
    }
    print("\n" + format_table(rows))
    log.info("Trained %s; the others were already in %s", trained or "none", directory)
    return {"trained": trained, "members": rows}


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
