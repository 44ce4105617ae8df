"""The main job: a real ensemble on bundled data, fitted without leakage, measured, exported.

    python -m experiments.run                                   # digits, stacking
    python -m experiments.run data=wine combiner=select
    python -m experiments.run -m combiner=mean,vote,stack,select   # + comparison.md

Trains the member zoo where missing, fits the combiner on rows no member saw,
evaluates every member, their mean and the ensemble on the test split, and
writes into the Hydra run directory: metrics.json, report.md, PNG plots, and
export/ (the SavedModel, verified by reloading) with its TFLite variants.
"""

from __future__ import annotations

import os
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ensemble import plots
from ensemble.build import ensemble_members
from ensemble.data import Dataset
from experiments.common import finish, fit_and_evaluate, markdown_table

__all__ = ["run"]


def run(cfg: DictConfig, output_dir: str | None = None) -> dict[str, Any]:
    """The whole job; returns what metrics.json holds."""
    if output_dir is not None:
        _check_writable(output_dir)
    model, data, outputs, result, output_dir = fit_and_evaluate(cfg, output_dir)
    if data.task == "classification":  # the share of members that disagree with the ensemble
        result["ensemble"]["disagreement"] = float(np.mean(outputs["disagreement"]))
    result = finish(result, model, cfg, output_dir, data)
    if output_dir is not None:
        figures = _plots(model, data, outputs, result, output_dir)
        _report(cfg, result, figures, output_dir)
    return result


def _check_writable(output_dir: str) -> None:
    probe = os.path.join(output_dir, ".write-test")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise PermissionError(f"Run directory {output_dir} is not writable: {error}") from None


def _plots(model: Any, data: Dataset, outputs: dict[str, np.ndarray], scores: dict[str, Any],
           output_dir: str) -> dict[str, str]:
    """The report's figures, as {title: file name}."""
    names = [m.name for m in ensemble_members(model)]
    members = outputs["member_predictions"]
    path = lambda name: os.path.join(output_dir, name)  # noqa: E731
    if data.task == "classification":
        best = min(range(len(names)), key=lambda i: scores["members"][names[i]]["nll"])
        plots.plot_reliability(data.y_test, {"ensemble": outputs["prediction"],
                                             f"best member ({names[best]})": members[:, best]},
                               path("reliability.png"))
        plots.plot_ensemble_size(data.y_test, members, names, path("ensemble_size.png"),
                                 ensemble_metrics=scores["ensemble"])
        plots.plot_member_correlation(plots.member_correlation(members, data.y_test), names,
                                      path("member_correlation.png"))
        plots.plot_uncertainty(data.y_test, outputs["prediction"],
                               {"entropy": outputs["entropy"],
                                "mutual_information": outputs["mutual_information"]},
                               path("uncertainty.png"))
        return {
            "Reliability (test split)": "reliability.png",
            "Accuracy and NLL against ensemble size (members added best first, plain mean)": "ensemble_size.png",
            "Correlation of the members' errors (1 - p(true class))": "member_correlation.png",
            "Uncertainty of right and wrong predictions": "uncertainty.png",
        }
    plots.plot_ensemble_size_regression(data.y_test, members, names, path("ensemble_size.png"),
                                        ensemble_metrics=scores["ensemble"])
    plots.plot_member_correlation(plots.member_correlation(members, data.y_test, task="regression"),
                                  names, path("member_correlation.png"))
    plots.plot_std_vs_error(data.y_test, outputs["prediction"], outputs["std"], path("std_vs_error.png"))
    return {
        "RMSE against ensemble size (members added best first, plain mean)": "ensemble_size.png",
        "Correlation of the members' residuals": "member_correlation.png",
        "Members' spread against the ensemble's error": "std_vs_error.png",
    }


def _report(cfg: DictConfig, result: dict[str, Any], figures: dict[str, str], output_dir: str) -> None:
    """report.md: what was run, the tables, the plots inline, the config."""
    rows = {**result["members"], "mean of members": result["mean"], "**ensemble**": result["ensemble"]}
    split = result["data"]["rows"]
    lines = [
        f"# Ensemble report: {result['data']['name']}, {result['combiner']}",
        "",
        f"Task: {result['task']}. Rows: {split['train']} train (members), {split['holdout']} holdout, "
        f"{split['test']} test (seed {result['data']['seed']}). The combiner was fitted in the "
        f"`{result['regime']}` regime on {result['fit_rows']} rows that no member trained on "
        f"(fit: `{result['fit']}`).",
        "",
        "## Test metrics",
        "",
        *markdown_table(rows),
        "",
    ]
    selected = result["selected_member"]["name"]
    shown = ("accuracy", "nll") if result["task"] == "classification" else ("rmse", "mae")
    lines += [
        f"The member one would ship alone, chosen without the test split ({result['selected_member']['by']}): "
        f"`{selected}`, with test " + ", ".join(
            f"{m} {result['members'][selected][m]:.4f} (ensemble {result['ensemble'][m]:.4f})" for m in shown)
        + ". The best member on the test split was picked by looking at it.",
        "",
    ]
    if "weights" in result:
        lines += ["Member weights: " + ", ".join(f"{k} {v:.3f}" for k, v in result["weights"].items()), ""]
    for title, file in figures.items():
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    if "export_dir" in result:
        lines += ["## Export", "", f"One SavedModel at `{result['export_dir']}` (verified by reloading).", ""]
    if "tflite" in result:
        lines += ["TFLite variants against the float ensemble:", "",
                  *markdown_table({k: {m: v for m, v in row.items() if m != "bytes"} | {"bytes": row.get("bytes", 0)}
                           for k, row in result["tflite"].items() if k != "float"}), ""]
    lines += ["## Config", "", "```yaml", OmegaConf.to_yaml(cfg, resolve=True).rstrip(), "```", ""]
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write("\n".join(lines))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg, output_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
