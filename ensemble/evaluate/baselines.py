"""The honest single-model baselines, and how every member, their mean and the ensemble score.

The member one would ship alone is chosen as the combiner is fitted: on the fitting rows, never
on the test split (the member best on the test split is picked by peeking at it). Each baseline
is also calibrated on those rows, as the ensemble is, so that its gain is not a temperature:
for classification every member and the plain mean are temperature-scaled (fitted exactly on
their fitting-row predictions, `fit_scaling`); for regression their calibrated analog is a
Gaussian whose std is their RMSE on the fitting rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from ensemble.evaluate.multilabel import evaluate_multilabel
from ensemble.evaluate.ood import evaluate_ood
from ensemble.evaluate.suite import (
    classification_suite,
    regression_suite,
    right_vs_wrong_auroc,
    risk_coverage_points,
)
from ensemble.fitting.arrays import checked_labels, named_labels
from ensemble.fitting.prepare import check_finite_inputs
from ensemble.fitting.selected import noise_variance, selected_member
from ensemble.fitting.temperature import calibrated, fit_scaling
from ensemble.graph.view import EnsembleView
from ensemble.tfdata import arrays_of
from ensemble.types import Data

__all__ = ["evaluate_ensemble", "noise_variance", "selected_member"]

Scores = dict[str, float]


def evaluate_ensemble(
    model: keras.Model,
    x: Data,
    y: np.ndarray | None = None,
    *,
    outputs: dict[str, np.ndarray] | None = None,
    fit_report: Any = None,
    x_ood: Data | None = None,
    ood: Mapping[str, Any] | None = None,
    ood_outputs: dict[str, np.ndarray] | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Every member, their plain mean and the ensemble on `(x, y)` (a test split), scored with
    the metric suite (`classification_suite`, `regression_suite`); or `x` a `tf.data.Dataset`
    of batches `(x, y)` and `y` None, read into arrays first (`ensemble.tfdata`).

    `outputs` are the model's outputs on `x` when the caller has them. Returns `members`
    ({name: metrics}, raw for classification), `mean`, `ensemble`; for classification also
    `uncertainty` (each score's right-vs-wrong AUROC) and `risk_coverage` (curves for plots).
    With `fit_report` (a `FitReport`) it adds `baselines`: each member and the mean raw and
    calibrated on the report's fitting rows, the selected member (`fit_report.selected_member`)
    raw and calibrated, and the ensemble's `gain` against the calibrated selected member.
    Regression NLL needs a predictive std: each member's (and the mean's) is its RMSE on the
    fitting rows, the ensemble's sqrt(spread^2 + its noise variance); without a report, NLL
    and the interval metrics are left out. With `x_ood` (out-of-distribution rows, `ood` the
    spec that named them), `ood` holds `evaluate_ood` of the model's outputs on them
    (`ood_outputs` when the caller has them).
    """
    view = EnsembleView.of(model)
    x, y = arrays_of(x, y, where="evaluate_ensemble")
    if outputs is None:
        check_finite_inputs(x, why="No metric is scored on them")  # the rows named, in x
        outputs = model.predict(x, batch_size=batch_size, verbose=0)
    if view.task == "classification":
        labels = checked_labels(  # labels by name, as their columns
            named_labels(y, view.classes, emitted=view.order_emitted),
            view.width,
            door="evaluate_ensemble",
            columns="the ensemble's classes",
        )
        result = _classification(view.member_names, labels, outputs, fit_report)
    elif view.task == "multilabel":  # y: a (rows, labels) 0/1 matrix
        result = evaluate_multilabel(view, y, outputs, fit_report)
    else:
        result = _regression(view.member_names, np.asarray(y), outputs, fit_report)
    if ood_outputs is None and x_ood is not None:
        x_ood, _ = arrays_of(x_ood, where="evaluate_ensemble (x_ood)", labels="ignored")
        ood_outputs = model.predict(x_ood, batch_size=batch_size, verbose=0)
    if ood_outputs is not None:
        result["ood"] = evaluate_ood(
            outputs,
            ood_outputs,
            member_names=view.member_names,
            baselines=result.get("baselines"),
            spec=ood,
        )
    return result


def _classification(
    names: list[str], y: np.ndarray, outputs: dict[str, np.ndarray], report: Any
) -> dict[str, Any]:
    members_out = np.asarray(outputs["member_predictions"], dtype="float64")
    prediction = np.asarray(outputs["prediction"], dtype="float64")
    result: dict[str, Any] = {
        "members": {n: classification_suite(y, members_out[:, i]) for i, n in enumerate(names)},
        "mean": classification_suite(y, members_out.mean(axis=1)),
        "ensemble": classification_suite(y, prediction),
    }
    # Entropy and mutual information as the graph computes them (weighted as the combiner
    # weighs members), not recomputed from a plain mean.
    scores = {"one_minus_max_probability": 1.0 - prediction.max(-1)}
    scores.update({k: outputs[k] for k in ("entropy", "mutual_information", "disagreement") if k in outputs})
    result["uncertainty"] = {"right_vs_wrong_auroc": right_vs_wrong_auroc(y, prediction, scores)}
    curves = {"ensemble": risk_coverage_points(y, prediction)}
    if report is not None:
        labels = np.asarray(report.targets).reshape(-1).astype("int64")
        level_one = np.asarray(report.level_one, dtype="float64")

        def baseline(fitting: np.ndarray, test: np.ndarray, raw: Scores) -> tuple[dict[str, Any], np.ndarray]:
            try:
                scaling = fit_scaling(fitting, labels, method="temperature")
            except ValueError as error:  # no positive temperature: worse than chance there
                return {"temperature": None, "raw": raw, "calibrated": raw, "note": str(error)}, test
            probabilities = calibrated(test, scaling)
            record = {"temperature": scaling.temperature, "raw": raw}
            return record | {"calibrated": classification_suite(y, probabilities)}, probabilities

        members: dict[str, Any] = {}
        for i, name in enumerate(names):
            members[name], probabilities = baseline(
                level_one[:, i], members_out[:, i], result["members"][name]
            )
            if name == report.selected_member["name"]:
                curves["selected member (calibrated)"] = risk_coverage_points(y, probabilities)
        mean, probabilities = baseline(level_one.mean(1), members_out.mean(1), result["mean"])
        curves["mean (calibrated)"] = risk_coverage_points(y, probabilities)
        result["baselines"] = _baselines(
            "temperature scaling fitted on the fitting rows", members, mean, report, result["ensemble"]
        )
    result["risk_coverage"] = curves
    return result


def _regression(
    names: list[str], y: np.ndarray, outputs: dict[str, np.ndarray], report: Any
) -> dict[str, Any]:
    members_out = np.asarray(outputs["member_predictions"], dtype="float64")

    def rmse_std(i: int | None) -> np.ndarray | None:
        if report is None:
            return None
        fitted = report.level_one.mean(1) if i is None else report.level_one[:, i]
        rmse = np.sqrt(np.mean((np.reshape(report.targets, fitted.shape) - fitted) ** 2, axis=0))
        return np.broadcast_to(rmse, members_out[:, 0].shape)

    variance = None if report is None else report.noise_variance
    std = None if variance is None else np.sqrt(np.asarray(outputs["std"]) ** 2 + variance)
    stds = {name: rmse_std(i) for i, name in enumerate(names)}
    result: dict[str, Any] = {
        "members": {n: regression_suite(y, members_out[:, i], stds[n]) for i, n in enumerate(names)},
        "mean": regression_suite(y, members_out.mean(axis=1), rmse_std(None)),
        "ensemble": regression_suite(y, outputs["prediction"], std),
    }
    if report is not None:

        def baseline(prediction: np.ndarray, std: np.ndarray | None, scores: Scores) -> dict[str, Any]:
            spread = [] if std is None else np.asarray(std)[0].tolist()  # per target
            raw = regression_suite(y, prediction, None)
            return {"std": spread, "raw": raw, "calibrated": scores}

        members = {n: baseline(members_out[:, i], stds[n], result["members"][n]) for i, n in enumerate(names)}
        mean = baseline(members_out.mean(1), rmse_std(None), result["mean"])
        result["baselines"] = _baselines(
            "a Gaussian with the RMSE on the fitting rows as its std",
            members,
            mean,
            report,
            result["ensemble"],
        )
    return result


def _baselines(
    how: str, members: dict[str, Any], mean: dict[str, Any], report: Any, ensemble: Scores
) -> dict[str, Any]:
    chosen = report.selected_member
    selected = {"name": chosen["name"], "by": chosen["by"], **members[chosen["name"]]}
    return {
        "calibration": how.replace("the fitting rows", f"the {report.rows} fitting rows"),
        "members": members,
        "selected": selected,
        "mean": mean,
        "gain": gain(ensemble, selected["calibrated"], against=f"{chosen['name']}, calibrated"),
    }


def gain(ensemble: Scores, baseline: Scores, *, against: str) -> dict[str, Any]:
    """The ensemble against `baseline`: ratios of the losses (below 1: the ensemble is better)
    where both are positive, differences (ensemble minus baseline) of accuracy, ECE, coverage
    and of the Gaussian NLL (which may be negative)."""
    result: dict[str, Any] = {"against": against}
    ratios = ("brier", "aurc", "rmse", "mae") if "rmse" in ensemble else ("nll", "brier", "aurc")
    for metric in ratios:
        if metric in ensemble and baseline.get(metric, 0.0) > 0:
            result[f"{metric}_ratio"] = ensemble[metric] / baseline[metric]
    differences = ("accuracy", "ece", "adaptive_ece") if "accuracy" in ensemble else ("nll", "coverage_90")
    for metric in differences:
        if metric in ensemble and metric in baseline:
            result[f"{metric}_difference"] = ensemble[metric] - baseline[metric]
    return result
