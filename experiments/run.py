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

import json
import logging
import os
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ensemble import EnsembleView
from ensemble.evaluate import console_ending, write_figures, write_report
from experiments.job import Evaluated, check_writable, finish, fit_and_evaluate
from experiments.preflight import check_export

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    """The whole job; returns what metrics.json holds. The export options are checked before
    any work (`experiments.preflight`); an export that fails anyway still leaves metrics.json
    and report.md of what was done (`"export_dir": null`, `"export_error"`), then raises."""
    if output_dir is not None:
        check_writable(output_dir)
    check_export(cfg, output_dir)
    job = fit_and_evaluate(cfg, output_dir)
    result = job.result
    if job.report.task == "classification":  # the share of members that disagree with the ensemble
        result["ensemble"]["disagreement"] = float(np.mean(job.outputs["disagreement"]))
    try:
        result = finish(result, job.model, cfg, job.output_dir, job.data)
    except Exception as error:
        if job.output_dir is None:
            raise
        result = {**result, "export_dir": None, "export_error": f"{type(error).__name__}: {error}"}
        try:
            with open(os.path.join(job.output_dir, "metrics.json"), "w") as f:
                json.dump(result, f, indent=2)
            _write_report(job, result, cfg)
        except Exception:  # the export's error is the one to see
            log.exception("Writing metrics.json and report.md after the failed export failed too")
        log.error("The export failed; metrics.json and report.md in %s say what was done", job.output_dir)
        raise
    if job.output_dir is not None:
        _write_report(job, result, cfg)
    print(console_ending(result, job.output_dir))
    return result


def _write_report(job: Evaluated, result: dict[str, Any], cfg: DictConfig) -> None:
    """The figures and report.md into the run directory; a failed export is said so."""
    assert job.output_dir is not None
    names = EnsembleView.of(job.model).member_names
    extras = {"fit_report": job.report, "model": job.model, "ood_outputs": job.ood_outputs}
    figures = write_figures(job.data.y_test, job.outputs, names, result, job.output_dir, **extras)
    failed = "export_error" in result
    shown = {k: v for k, v in result.items() if k != "export_dir"} if failed else result
    path = os.path.join(job.output_dir, "report.md")
    write_report(path, shown, figures, OmegaConf.to_yaml(cfg, resolve=True))
    if failed:
        with open(path) as f:
            text = f.read()
        note = f"## Export\n\nFailed, nothing exported: {result['export_error']}\n\n## Config\n"
        with open(path, "w") as f:
            f.write(text.replace("## Config\n", note, 1))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
