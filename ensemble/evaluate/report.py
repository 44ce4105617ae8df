"""The job's report: metric tables (text and markdown), its figures, and `report.md`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ensemble.evaluate import figures
from ensemble.types import PathLike

__all__ = ["format_table", "markdown_table", "write_figures", "write_report"]

Rows = Mapping[str, Mapping[str, float]]


def format_table(rows: Rows) -> str:
    """A plain-text table: one row per model, one column per metric (the first row's)."""
    metric_names = list(next(iter(rows.values())))
    lines = [f"{'model':<14}" + "".join(f"{m:>10}" for m in metric_names)]
    for name, values in rows.items():
        lines.append(f"{name:<14}" + "".join(f"{values[m]:>10.4f}" for m in metric_names))
    return "\n".join(lines)


def markdown_table(rows: Rows, first: str = "model", metrics: list[str] | None = None) -> list[str]:
    """Markdown table lines: one row per name, one column per metric (default: the first row's)."""
    metrics = metrics or list(next(iter(rows.values())))
    lines = [f"| {first} | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")
    return lines


def write_figures(
    y: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    member_names: list[str],
    scores: Mapping[str, Any],
    directory: PathLike,
) -> dict[str, str]:
    """The report's figures of an ensemble's `outputs` on rows with targets `y`, written as PNG
    files into `directory`; returns `{title: file name}`."""
    members = outputs["member_predictions"]

    def path(name: str) -> str:
        return os.path.join(os.fspath(directory), name)

    if "std" not in outputs:  # classification
        best = min(range(len(member_names)), key=lambda i: scores["members"][member_names[i]]["nll"])
        figures.plot_reliability(
            y,
            {"ensemble": outputs["prediction"], f"best member ({member_names[best]})": members[:, best]},
            path("reliability.png"),
        )
        figures.plot_ensemble_size(
            y, members, member_names, path("ensemble_size.png"), ensemble_metrics=scores["ensemble"]
        )
        figures.plot_member_correlation(
            figures.member_correlation(members, y), member_names, path("member_correlation.png")
        )
        figures.plot_uncertainty(
            y,
            outputs["prediction"],
            {"entropy": outputs["entropy"], "mutual_information": outputs["mutual_information"]},
            path("uncertainty.png"),
        )
        return {
            "Reliability (test split)": "reliability.png",
            "Accuracy and NLL against ensemble size (members added best first, plain mean)": "ensemble_size.png",
            "Correlation of the members' errors (1 - p(true class))": "member_correlation.png",
            "Uncertainty of right and wrong predictions": "uncertainty.png",
        }
    figures.plot_ensemble_size_regression(
        y, members, member_names, path("ensemble_size.png"), ensemble_metrics=scores["ensemble"]
    )
    figures.plot_member_correlation(
        figures.member_correlation(members, y, task="regression"),
        member_names,
        path("member_correlation.png"),
    )
    figures.plot_std_vs_error(y, outputs["prediction"], outputs["std"], path("std_vs_error.png"))
    return {
        "RMSE against ensemble size (members added best first, plain mean)": "ensemble_size.png",
        "Correlation of the members' residuals": "member_correlation.png",
        "Members' spread against the ensemble's error": "std_vs_error.png",
    }


def write_report(
    path: PathLike, result: Mapping[str, Any], figure_files: Mapping[str, str], config_yaml: str
) -> None:
    """`report.md`: what was run, the tables, the figures inline, the config."""
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
        f"`{selected}`, with test "
        + ", ".join(
            f"{m} {result['members'][selected][m]:.4f} (ensemble {result['ensemble'][m]:.4f})" for m in shown
        )
        + ". The best member on the test split was picked by looking at it.",
        "",
    ]
    if "weights" in result:
        lines += ["Member weights: " + ", ".join(f"{k} {v:.3f}" for k, v in result["weights"].items()), ""]
    for title, file in figure_files.items():
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    if "export_dir" in result:
        lines += ["## Export", "", f"One SavedModel at `{result['export_dir']}` (verified by reloading).", ""]
    if "tflite" in result:
        variants = {
            k: {m: v for m, v in row.items() if m != "bytes"} | {"bytes": row.get("bytes", 0)}
            for k, row in result["tflite"].items()
            if k != "float"
        }
        lines += ["TFLite variants against the float ensemble:", "", *markdown_table(variants), ""]
    lines += ["## Config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    with open(os.fspath(path), "w") as f:
        f.write("\n".join(lines))
