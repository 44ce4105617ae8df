"""The report's figures, written as PNG files: which figures a job draws, from what."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ensemble.evaluate.figures.correlation import member_correlation, plot_member_correlation
from ensemble.evaluate.figures.ensemble_size import plot_ensemble_size, plot_ensemble_size_regression
from ensemble.evaluate.figures.reliability import plot_reliability
from ensemble.evaluate.figures.uncertainty import plot_std_vs_error, plot_uncertainty
from ensemble.types import PathLike

__all__ = ["write_figures"]


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
        plot_reliability(
            y,
            {"ensemble": outputs["prediction"], f"best member ({member_names[best]})": members[:, best]},
            path("reliability.png"),
        )
        plot_ensemble_size(
            y, members, member_names, path("ensemble_size.png"), ensemble_metrics=scores["ensemble"]
        )
        plot_member_correlation(member_correlation(members, y), member_names, path("member_correlation.png"))
        plot_uncertainty(
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
    plot_ensemble_size_regression(
        y, members, member_names, path("ensemble_size.png"), ensemble_metrics=scores["ensemble"]
    )
    plot_member_correlation(
        member_correlation(members, y, task="regression"),
        member_names,
        path("member_correlation.png"),
    )
    plot_std_vs_error(y, outputs["prediction"], outputs["std"], path("std_vs_error.png"))
    return {
        "RMSE against ensemble size (members added best first, plain mean)": "ensemble_size.png",
        "Correlation of the members' residuals": "member_correlation.png",
        "Members' spread against the ensemble's error": "std_vs_error.png",
    }
