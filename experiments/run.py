"""The main job: a real ensemble on bundled data, fitted without leakage, measured, exported.

    python -m experiments.run                                   # digits, stacking
    python -m experiments.run data=wine combiner=select
    python -m experiments.run -m combiner=mean,vote,stack,select   # + comparison.md
    python -m experiments.run +experiment=breast_cancer_seeds     # a preset sweep

Trains the member zoo where missing, fits the combiner on rows no member saw, evaluates every
member, their mean and the ensemble on the test split, and writes into the Hydra run directory:
metrics.json, report.md, PNG plots, and export/ (the SavedModel, verified by reloading) with its
TFLite variants.
"""

from __future__ import annotations

from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ensemble.evaluate import console_ending
from experiments.job import check_writable, fit_and_evaluate
from experiments.outcome import close_run
from experiments.preflight import check_export

__all__ = ["run"]


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    """The whole job; returns what metrics.json holds. The export options are checked before
    any work (`experiments.preflight`); an export that fails anyway still leaves metrics.json
    and report.md of what was done (`"export_dir": null`, `"export_error"`), then raises."""
    if output_dir is not None:
        check_writable(output_dir)
    check_export(cfg, output_dir)
    job = fit_and_evaluate(cfg, output_dir)
    if job.report.task == "classification":  # the share of members that disagree with the ensemble
        job.result["ensemble"]["disagreement"] = float(np.mean(job.outputs["disagreement"]))
    result = close_run(job, cfg)
    print(console_ending(result, job.output_dir))
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
