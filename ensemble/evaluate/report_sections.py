"""The sections of `report.md` that read the evaluation: the baselines raw and calibrated with
the ensemble's gain in words, the uncertainty scores, OOD detection, the zoo's skipped members.
Each takes what metrics.json holds and returns markdown lines (none where it has nothing).
`like_with_like` and `gain_line` are what the report and the console share: the baselines
fitted as the ensemble is beside it, and the gain against the calibrated selected member."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ensemble.evaluate.suite import CLASSIFICATION_METRICS, REGRESSION_METRICS, SUMMARY_METRICS
from ensemble.evaluate.tables import format_table, markdown_table

__all__ = [
    "baselines_section",
    "gain_line",
    "like_with_like",
    "ood_section",
    "uncertainty_section",
    "zoo_section",
]

Result = Mapping[str, Any]

_OOD_KINDS = {
    "permute": "with their features permuted by one seeded permutation, the same for every row",
    "uniform": "with every feature replaced by seeded uniform noise over its range on the train split",
}


def _columns(rows: Mapping[str, Mapping[str, Any]], order: tuple[str, ...]) -> list[str]:
    return [m for m in order if any(m in values for values in rows.values())]


def _temperature(baseline: Mapping[str, Any]) -> str:
    t = baseline.get("temperature")
    return "no positive temperature" if t is None else f"T={t:.3g}"


def like_with_like(result: Result) -> dict[str, dict[str, Any]]:
    """The selected member and the plain mean, raw then calibrated on the fitting rows (as
    `evaluate_ensemble` records them), and the ensemble, each with the `SUMMARY_METRICS` any of
    them has (None where one lacks it: raw regression has no NLL); empty without baselines."""
    baselines = result.get("baselines")
    if baselines is None:
        return {}
    selected, mean = baselines["selected"], baselines["mean"]
    classification = result["task"] == "classification"

    def how(baseline: Mapping[str, Any]) -> str:
        return f"calibrated ({_temperature(baseline)})" if classification else "calibrated"

    fitted = "fitted on the fitting rows" if _fitted(result) else "raw: nothing fitted"
    rows = {
        f"selected member ({selected['name']}), raw": selected["raw"],
        f"selected member ({selected['name']}), {how(selected)}": selected["calibrated"],
        "plain mean, raw": mean["raw"],
        f"plain mean, {how(mean)}": mean["calibrated"],
        f"ensemble ({fitted})": result["ensemble"],
    }
    columns = _columns(rows, SUMMARY_METRICS)
    return {name: {m: values.get(m) for m in columns} for name, values in rows.items()}


def gain_line(result: Result, run_directory: str | os.PathLike[str] | None) -> str:
    """One line: the ensemble's NLL against the selected member's calibrated on the fitting rows
    (the ratio for classification, the difference of the Gaussian NLL for regression), then
    the run directory's absolute path (or that nothing was written)."""
    where = (
        "nothing written (no run directory)"
        if run_directory is None
        else f"run directory {os.path.abspath(os.fspath(run_directory))}"
    )
    baselines = result.get("baselines")
    if baselines is None:
        return f"No calibrated baselines (evaluated without a fit); {where}"
    gain, selected = baselines["gain"], baselines["selected"]
    ours, theirs = result["ensemble"].get("nll"), selected["calibrated"].get("nll")
    against = f"Ensemble against the selected member {selected['name']}, calibrated on the fitting rows"
    if ours is None or theirs is None:
        return f"{against}: no NLL to compare; {where}"
    if "nll_ratio" in gain:
        ratio = gain["nll_ratio"]
        change = f"{100 * abs(1 - ratio):.1f}% {'lower' if ratio < 1 else 'higher'}"
        said = f"NLL {ours:.4f} vs {theirs:.4f}, {ratio:.3f}x ({change})"
    else:  # a Gaussian NLL may be negative: its difference, not a ratio
        said = f"Gaussian NLL {ours:.4f} vs {theirs:.4f} ({ours - theirs:+.4f})"
    return f"{against}: {said}; {where}"


def _fitted(result: Result) -> bool:
    """Whether the ensemble learned on the fitting rows (a fit method, or a calibration)."""
    return result.get("fit") is not None or result.get("calibration") is not None


def baselines_section(result: Result) -> list[str]:
    """The members, the selected member and the plain mean, raw and calibrated, and the
    ensemble; the gain against the calibrated selected member in words; every metric of the
    calibrated baselines and the ensemble."""
    baselines = result.get("baselines")
    if baselines is None:  # evaluated without a fit report: nothing calibrated
        plain = {**result["members"], "mean of members": result["mean"], "**ensemble**": result["ensemble"]}
        return [*markdown_table(plain, metrics=_columns(plain, SUMMARY_METRICS)), ""]
    classification = result["task"] == "classification"
    selected = baselines["selected"]
    rows: dict[str, Mapping[str, Any]] = {}
    for name, baseline in baselines["members"].items():
        if classification:
            rows[name] = baseline["raw"]
            rows[f"{name}, calibrated ({_temperature(baseline)})"] = baseline["calibrated"]
        else:
            rows[name] = baseline["calibrated"]
    label = f"selected member: {selected['name']}"
    if classification:
        rows[label] = selected["raw"]
        rows[f"{label}, calibrated ({_temperature(selected)})"] = selected["calibrated"]
        rows["mean of members"] = baselines["mean"]["raw"]
        rows[f"mean of members, calibrated ({_temperature(baselines['mean'])})"] = baselines["mean"][
            "calibrated"
        ]
    else:
        rows[label] = selected["calibrated"]
        rows["mean of members"] = baselines["mean"]["calibrated"]
    rows["**ensemble**"] = result["ensemble"]
    how = (
        "each member and the plain mean raw, and calibrated"
        if classification
        else "each member and the plain mean calibrated"
    )
    full = {
        f"{label}, calibrated": selected["calibrated"],
        "mean of members, calibrated": baselines["mean"]["calibrated"],
        "ensemble": result["ensemble"],
    }
    order = CLASSIFICATION_METRICS if classification else REGRESSION_METRICS
    like = like_with_like(result)
    return [
        f"Like with like: the selected member and the plain mean raw, and calibrated by "
        f"{baselines['calibration']}, beside the ensemble "
        f"({'fitted on the same rows' if _fitted(result) else 'raw: nothing fitted'}).",
        "",
        *markdown_table(like, metrics=list(next(iter(like.values())))),
        "",
        f"Every baseline: {how} by {baselines['calibration']}; the ensemble is calibrated on the same rows.",
        "",
        *markdown_table(rows, metrics=_columns(rows, SUMMARY_METRICS)),
        "",
        _gain_sentence(result, selected, baselines["gain"], classification),
        "",
        "Every metric of the calibrated baselines and the ensemble:",
        "",
        *markdown_table(full, metrics=_columns(full, order)),
        "",
    ]


def _gain_sentence(
    result: Result, selected: Mapping[str, Any], gain: Mapping[str, Any], classification: bool
) -> str:
    ours, theirs = result["ensemble"], selected["calibrated"]
    start = (
        f"The member one would ship alone, chosen without the test split ({selected['by']}): "
        f"`{selected['name']}`. "
    )
    end = " The best member on the test split was picked by looking at it."
    if classification:
        ratio = gain.get("nll_ratio")
        verdict = "no NLL ratio" if ratio is None else f"{ratio:.2f}x its NLL"
        better = "better" if ratio is not None and ratio < 1 else "no better"
        return (
            start
            + f"Against it temperature-scaled on the same rows ({_temperature(selected)}), the ensemble "
            f"is {better}: {verdict} ({ours['nll']:.4f} vs {theirs['nll']:.4f}), accuracy "
            f"{100 * (ours['accuracy'] - theirs['accuracy']):+.1f} points ({ours['accuracy']:.4f} vs "
            f"{theirs['accuracy']:.4f}), ECE {ours['ece']:.4f} vs {theirs['ece']:.4f}. Raw, that member's "
            f"NLL is {selected['raw']['nll']:.4f}: a gain quoted against it would credit the ensemble "
            "with a temperature." + end
        )
    text = start + f"Against it, the ensemble's RMSE is {ours['rmse'] / theirs['rmse']:.2f}x its "
    text += f"({ours['rmse']:.4f} vs {theirs['rmse']:.4f})"
    if "nll" in ours and "nll" in theirs:
        text += f", its NLL {ours['nll'] - theirs['nll']:+.4f} ({ours['nll']:.4f} vs {theirs['nll']:.4f})"
    return text + "." + end


def uncertainty_section(result: Result) -> list[str]:
    """Classification: each score's right-vs-wrong AUROC, and a sentence for every score that
    ranks right predictions as more uncertain than wrong ones. Regression: interval coverage."""
    if result["task"] != "classification":
        ours = result["ensemble"]
        if "coverage_90" not in ours:
            return []
        return [
            "## Uncertainty",
            "",
            f"The ensemble's central Gaussian intervals cover {ours['coverage_50']:.3f}, "
            f"{ours['coverage_90']:.3f} and {ours['coverage_95']:.3f} of the test entries at 50, 90 and "
            f"95%; its quantile calibration error is {ours['quantile_calibration_error']:.4f}.",
            "",
        ]
    auroc = result.get("uncertainty", {}).get("right_vs_wrong_auroc", {})
    if not auroc:
        return []
    rows = {f"`{score}`": {"right-vs-wrong AUROC": value} for score, value in auroc.items()}
    lines = [
        "## Uncertainty scores",
        "",
        "How well each of the ensemble's per-row scores tells its wrong test predictions from its "
        "right ones: the probability that a wrong row scores higher than a right one (0.5: chance). "
        "`entropy`, `mutual_information` and `disagreement` are the graph's outputs.",
        "",
        *markdown_table(rows, "score"),
        "",
    ]
    inverted = [
        f"`{score}` ranks right predictions as MORE uncertain than wrong ones (right-vs-wrong AUROC "
        f"{value:.3f} < 0.5): as a signal of error it is worse than chance here."
        for score, value in auroc.items()
        if value < 0.5
    ]
    lines += inverted or [
        "Every score ranks wrong predictions as more uncertain than right ones (AUROC > 0.5)."
    ]
    return [*lines, ""]


def ood_section(result: Result) -> list[str]:
    """AUROC, AUPR and FPR at 95% TPR of every score on the OOD set, the best named."""
    ood = result.get("ood")
    if not ood:
        return []
    spec = ood.get("set") or {}
    what = _OOD_KINDS.get(str(spec.get("kind")), f"(kind {spec.get('kind')})")
    rows = {
        f"{model}: `{score}`": values
        for model, scores in ood.items()
        if model not in ("set", "rows")
        for score, values in scores.items()
    }
    best_model, best_score = max(
        ((m, s) for m, scores in ood.items() if m not in ("set", "rows") for s in scores),
        key=lambda ms: ood[ms[0]][ms[1]]["auroc"],
    )
    return [
        "## Out-of-distribution detection",
        "",
        f"OOD rows: the {ood['rows']['out']} test rows {what} (data.ood: {dict(spec)}), against the "
        f"{ood['rows']['in']} test rows. A higher score means more likely OOD; AUPR takes OOD as the "
        "positive class; FPR95 is the share of test rows flagged at the threshold that catches 95% "
        "of the OOD rows.",
        "",
        *markdown_table(rows, "model: score", ["auroc", "aupr", "fpr95"]),
        "",
        f"Best separation: {best_model}, `{best_score}` (AUROC {ood[best_model][best_score]['auroc']:.3f}).",
        *(
            f"{name[:1].upper()}{name[1:].replace(': ', ', ', 1)} scores the OOD rows as LESS uncertain than the test rows "
            f"(AUROC {values['auroc']:.3f} < 0.5): it is surer of what it has never seen."
            for name, values in rows.items()
            if values["auroc"] < 0.5
        ),
        "",
    ]


def zoo_section(result: Result) -> list[str]:
    """Which zoo members were left out for this data, and why (members from the zoo only)."""
    zoo = result.get("zoo")
    if zoo is None:
        return []
    skipped = zoo.get("skipped", {})
    if not skipped:
        return ["## Members", "", "Every zoo member fits this data: none was skipped.", ""]
    said = "; ".join(f"`{name}`: {reason}" for name, reason in skipped.items())
    return [
        "## Members",
        "",
        f"Zoo members skipped for this data (not trained, not in the ensemble, in no table): {said}.",
        "",
    ]


def console_ending(result: Result, output_dir: str | os.PathLike[str] | None) -> str:
    """The main job's console end, after the metrics table: the baselines fitted as the ensemble
    is, beside it (`like_with_like`), then one line with the gain against the calibrated
    selected member and the run directory (`gain_line`)."""
    rows = like_with_like(result)
    table = ""
    if rows:
        how = result["baselines"]["calibration"]
        table = f"\nLike with like (test split; calibrated: {how}):\n{format_table(rows)}\n"
    return table + gain_line(result, output_dir)
