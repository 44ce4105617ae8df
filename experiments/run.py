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

import os
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ensemble import EnsembleView
from ensemble.evaluate import console_ending, write_figures, write_report
from experiments.job import check_writable, finish, fit_and_evaluate

__all__ = ["run"]


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    """The whole job; returns what metrics.json holds."""
    if output_dir is not None:
        check_writable(output_dir)
    job = fit_and_evaluate(cfg, output_dir)
    result = job.result
    if job.report.task == "classification":  # the share of members that disagree with the ensemble
        result["ensemble"]["disagreement"] = float(np.mean(job.outputs["disagreement"]))
    result = finish(result, job.model, cfg, job.output_dir, job.data)
    if job.output_dir is not None:
        names = EnsembleView.of(job.model).member_names
        extras = {"fit_report": job.report, "model": job.model, "ood_outputs": job.ood_outputs}
        figures = write_figures(job.data.y_test, job.outputs, names, result, job.output_dir, **extras)
        write_report(
            os.path.join(job.output_dir, "report.md"), result, figures, OmegaConf.to_yaml(cfg, resolve=True)
        )
    print(console_ending(result, job.output_dir))
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
