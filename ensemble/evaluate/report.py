"""The job's report: metric tables (text and markdown), its figures, and `report.md`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ensemble.types import PathLike

__all__ = ["format_table", "markdown_table", "write_report"]

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
