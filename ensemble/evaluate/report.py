"""The job's report: metric tables (text and markdown), its figures, and `report.md`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ensemble.atomic import atomic_path
from ensemble.evaluate.report_sections import (
    baselines_section,
    ood_section,
    uncertainty_section,
    zoo_section,
)
from ensemble.evaluate.tables import cell, format_table, markdown_table
from ensemble.types import PathLike

__all__ = ["cell", "format_table", "leakage_section", "markdown_table", "write_report"]


def conformal_section(result: Mapping[str, Any]) -> list[str]:
    """What the conformal sets (or intervals) promise and what they delivered on rows they were
    not calibrated on."""
    found = result.get("conformal")
    if not found:
        return []
    target = 1 - float(found["alpha"])
    line = (
        f"Conformal ({found['method']}, alpha {found['alpha']:g}): calibrated on "
        f"{found['calibration_rows']} test rows, measured on the other {found['rows']}: coverage "
        f"{found['coverage']:.4f} (target at least {target:.2f})"
    )
    if "mean_set_size" in found:
        line += (
            f", mean set size {found['mean_set_size']:.2f}, empty sets {found['empty_sets']:.1%}, "
            f"singletons {found['singletons']:.1%}."
        )
    else:
        line += f", mean interval width {found.get('mean_width', float('nan')):.4g}."
    return ["## Conformal prediction", "", line, ""]


def leakage_section(result: Mapping[str, Any]) -> list[str]:
    """What the leakage guard compared, and the members it could not check (no training-row
    record was found for them): they are named, so an unguarded fit is never silent."""
    guard = result.get("guard")
    if not guard:
        return []
    if guard.get("checked") is False:
        return ["## Leakage guard", "", f"Not run: {guard.get('reason', 'no reason given')}.", ""]
    tolerance = guard.get("tolerance", {})
    checked = ", ".join(f"`{name}`" for name in guard.get("training_rows", {})) or "none"
    lines = [
        f"{guard.get('rows_compared', 0)} fitting rows compared with the training rows of the members "
        f"{checked} (rtol {tolerance.get('rtol', 0):g}, atol {tolerance.get('atol', 0):g}); "
        f"overlapping rows: {guard.get('overlaps', {})}."
    ]
    unguarded = guard.get("unchecked", [])
    if unguarded:
        lines += [
            "",
            "Unguarded members (no training-row record was found, so the guard could not check "
            "them): " + ", ".join(f"`{name}`" for name in unguarded) + ". Record their rows with "
            "`ensemble.record_training_rows(source, x_train)`.",
        ]
    exact = guard.get("exact_only", [])
    if exact:
        names = ", ".join(f"`{name}`" for name in exact)
        lines += ["", f"Matched bit for bit only (records of the previous format): {names}."]
    return ["## Leakage guard", "", *lines, ""]


def write_report(
    path: PathLike, result: Mapping[str, Any], figure_files: Mapping[str, str], config_yaml: str
) -> None:
    """`report.md`: what was run, the baselines and the ensemble (raw and calibrated), the gain
    against the calibrated selected member, the leakage guard (naming unguarded members), the
    uncertainty scores, OOD detection, the zoo's skipped members, the figures inline, the
    export, the config."""
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
        *baselines_section(result),
    ]
    if "weights" in result:
        lines += ["Member weights: " + ", ".join(f"{k} {v:.3f}" for k, v in result["weights"].items()), ""]
    lines += leakage_section(result)
    lines += uncertainty_section(result)
    lines += ood_section(result)
    lines += zoo_section(result)
    lines += conformal_section(result)
    for title, file in figure_files.items():
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    if "export_error" in result:  # the export failed late; what was done is still reported
        lines += ["## Export", "", f"Failed, nothing exported: {result['export_error']}", ""]
    elif "export_dir" in result:
        lines += ["## Export", "", f"One SavedModel at `{result['export_dir']}` (verified by reloading).", ""]
    if "tflite" in result:
        variants = {
            k: {m: v for m, v in row.items() if m != "bytes"} | {"bytes": row.get("bytes", 0)}
            for k, row in result["tflite"].items()
            if k != "float"
        }
        lines += ["TFLite variants against the float ensemble:", "", *markdown_table(variants), ""]
    lines += ["## Config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    with atomic_path(path) as staged, open(staged, "w") as f:
        f.write("\n".join(lines))
