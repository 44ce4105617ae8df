"""The end of the main job: the export, then `metrics.json`, the figures and `report.md` in the
run directory. An export that fails late still leaves `metrics.json` and `report.md` of what
was done (`"export_dir": null` and `"export_error"`), and its error is raised after them."""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ensemble import EnsembleView
from ensemble.evaluate import write_figures, write_report
from experiments.job import Evaluated, finish, write_metrics

__all__ = ["close_run"]

log = logging.getLogger(__name__)


def close_run(job: Evaluated, cfg: DictConfig) -> dict[str, Any]:
    """Export and write what the run measured; returns what `metrics.json` holds."""
    result = job.result
    try:
        result = finish(result, job.model, cfg, job.output_dir, job.data)
    except Exception as error:
        if job.output_dir is None:
            raise
        result = {**result, "export_dir": None, "export_error": f"{type(error).__name__}: {error}"}
        try:
            write_metrics(result, job.output_dir)
            _write_report(job, result, cfg)
        except Exception:  # the export's error is the one to see
            log.exception("Writing metrics.json and report.md after the failed export failed too")
        log.error("The export failed; metrics.json and report.md in %s say what was done", job.output_dir)
        raise
    if job.output_dir is not None:
        _write_report(job, result, cfg)
    return result


def _write_report(job: Evaluated, result: dict[str, Any], cfg: DictConfig) -> None:
    """The figures and report.md into the run directory (a failed export is said there)."""
    assert job.output_dir is not None
    names = EnsembleView.of(job.model).member_names
    extras = {"fit_report": job.report, "model": job.model, "ood_outputs": job.ood_outputs}
    figures = write_figures(job.data.y_test, job.outputs, names, result, job.output_dir, **extras)
    write_report(
        os.path.join(job.output_dir, "report.md"), result, figures, OmegaConf.to_yaml(cfg, resolve=True)
    )
