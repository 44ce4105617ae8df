"""Train an ensemble of its own members, or compress one, and measure it against the baseline.

python -m experiments.train_ensemble                       # SAMME-boosted weak MLPs on digits
python -m experiments.train_ensemble method=distill        # a student of the zoo, with its MI
python -m experiments.train_ensemble method=bag data=diabetes
python -m experiments.train_ensemble method=boost data=diabetes   # gradient-boosted weak MLPs
python -m experiments.train_ensemble -m method=boost,bag,snapshots,soup,distill

Writes metrics.json (`{"method", "data", "rows": {model: metrics}, ...}`) into the run directory.
"""

from __future__ import annotations

import json
import os

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ensemble.evaluate import format_table
from experiments.ensembles import run_method

__all__ = ["main"]


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_ensemble")
def main(cfg: DictConfig) -> None:
    rows, extra = run_method(cfg)
    print(f"\n{cfg.method.name} on {cfg.data.name} (test split)\n{format_table(rows)}")
    for key, value in extra.items():
        print(f"{key}: {value}")
    result = {"method": cfg.method.name, "data": cfg.data.name, "rows": rows, **extra}
    with open(os.path.join(HydraConfig.get().runtime.output_dir, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
