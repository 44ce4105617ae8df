"""Split conformal from end to end: held-out rows cut into a calibration share and rows to measure
on (`calibration_split`), the empirical coverage and set size there (`conformal_metrics`), and
both behind one object a config instantiates (`SplitConformal`, the `conformal` Hydra group)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from ensemble.errors import EnsembleError
from ensemble.fitting.conformal import add_conformal
from ensemble.fitting.conformal_rules import TUNING_SHARE
from ensemble.graph.conformal import CONFORMAL_OUTPUTS, conformal_config
from ensemble.graph.view import EnsembleView
from ensemble.rows import take_rows
from ensemble.types import Data

__all__ = ["SplitConformal", "calibration_split", "conformal_metrics"]


@dataclass(frozen=True)
class SplitConformal:
    """Conformal outputs calibrated on a seeded share of held-out rows and measured on the rest.

    The held-out rows must be ones no member trained on and the combiner was not fitted on (the
    main job passes its test split: the other test metrics keep every row, since the sets leave
    `prediction` as it is, while coverage and set size are measured only on rows not calibrated
    on).

    Args:
        alpha: the miscoverage (`add_conformal`).
        method: "auto" | "aps" | "raps" | "thr" (classification), "absolute" | "normalized"
            (regression); None for the task's default. "auto" records the rule it chose, and
            how, in the conformal config (metrics.json: `method`, `selection`).
        randomized, k_reg, lambda_reg, tuning_share: as for `add_conformal`.
        calibration_share: the share of the held-out rows to calibrate on (the tuning rows of
            "auto" among them).
        seed: the split's seed, and `add_conformal`'s.
    """

    alpha: float = 0.1
    method: str | None = None
    randomized: bool | None = None
    k_reg: int | None = None
    lambda_reg: float | None = None
    tuning_share: float = TUNING_SHARE
    calibration_share: float = 0.5
    seed: int = 0

    def calibrate(
        self, model: keras.Model, x: Data, y: Any, *, batch_size: int = 256
    ) -> tuple[keras.Model, np.ndarray]:
        """`add_conformal` on the calibration share of `(x, y)`; returns the new model and the
        indices of the rows left to measure it on."""
        classification = EnsembleView.of(model).task == "classification"
        chosen, measured = calibration_split(
            y, share=self.calibration_share, seed=self.seed, stratify=classification
        )
        rows = take_rows(x, chosen)
        calibrated = add_conformal(
            model,
            rows,
            np.asarray(y)[chosen],
            alpha=self.alpha,
            method=self.method,
            randomized=self.randomized,
            k_reg=self.k_reg,
            lambda_reg=self.lambda_reg,
            tuning_share=self.tuning_share,
            seed=self.seed,
            batch_size=batch_size,
        )
        return calibrated, measured

    def measure(
        self, model: keras.Model, outputs: Mapping[str, Any], y: Any, rows: np.ndarray
    ) -> dict[str, Any]:
        """The conformal config of `model` and `conformal_metrics` of `outputs` (the model's, on
        every held-out row) on `rows`, the ones it was not calibrated on."""
        keys = [key for key in CONFORMAL_OUTPUTS if key in outputs]
        found = conformal_metrics({key: np.asarray(outputs[key])[rows] for key in keys}, np.asarray(y)[rows])
        return {**(conformal_config(model) or {}), **found, "measured_on": "held-out rows not calibrated on"}


def calibration_split(
    y: Any, *, share: float = 0.5, seed: int = 0, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices `(calibrate, evaluate)` of held-out rows `y`: a seeded share to calibrate the
    conformal threshold on, the rest to measure its coverage on (stratified by label when
    `stratify` and every label has two rows), each sorted."""
    if not 0.0 < share < 1.0:
        raise EnsembleError(f"Expected a calibration share in (0, 1). Received: share={share!r}")
    labels = np.asarray(y)
    rows = len(labels)
    if rows < 2:
        raise EnsembleError(f"Expected at least 2 rows to split for calibration. Received: {rows}.")
    order = np.random.default_rng(seed).permutation(rows)
    if stratify and labels.ndim == 1 and np.unique(labels, return_counts=True)[1].min() >= 2:
        calibrate: list[np.ndarray] = []
        for label in np.unique(labels):  # each label's rows, shuffled, cut at the share
            mine = order[labels[order] == label]
            calibrate.append(mine[: max(1, round(share * len(mine)))])
        chosen = np.concatenate(calibrate)
    else:
        chosen = order[: max(1, round(share * rows))]
    mask = np.zeros(rows, dtype=bool)
    mask[chosen] = True
    if mask.all():
        raise EnsembleError(f"share={share} leaves no row of {rows} to evaluate on.")
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def conformal_metrics(outputs: Mapping[str, Any], y: Any) -> dict[str, Any]:
    """Empirical coverage and set size (or interval width) of conformal outputs on labelled rows.

    Classification (`prediction_set`): `coverage` (share of rows whose label is in the set),
    `mean_set_size`, `empty_sets` and `singletons` (shares of rows). Regression
    (`interval_low`/`interval_high`): `coverage` (rows with every target inside), per-target
    `target_coverage`, and `mean_width`. A non-finite row (an empty set, NaN bounds) counts as
    not covered. `rows` says how many were measured.
    """
    if "prediction_set" in outputs:
        sets = np.asarray(outputs["prediction_set"]).astype(bool)
        labels = np.asarray(y).reshape(-1).astype("int64")
        if sets.ndim != 2 or len(labels) != len(sets) or not len(sets):
            raise EnsembleError(
                "Expected a prediction_set of shape (rows, classes) with one label per row, at "
                f"least one row. Received: sets {sets.shape}, labels {labels.shape}"
            )
        if labels.min() < 0 or labels.max() >= sets.shape[1]:
            raise EnsembleError(
                f"Expected labels in [0, {sets.shape[1]}). Received: {np.unique(labels)[:10]}"
            )
        sizes = sets.sum(axis=1)
        return {
            "rows": len(sets),
            "coverage": float(sets[np.arange(len(sets)), labels].mean()),
            "mean_set_size": float(sizes.mean()),
            "empty_sets": float((sizes == 0).mean()),
            "singletons": float((sizes == 1).mean()),
        }
    if "interval_low" not in outputs or "interval_high" not in outputs:
        raise EnsembleError(
            "Expected conformal outputs (prediction_set, or interval_low and interval_high): add "
            f"them with ensemble.add_conformal. Received: {sorted(outputs)}"
        )
    low, high = np.asarray(outputs["interval_low"]), np.asarray(outputs["interval_high"])
    targets = np.asarray(y, dtype="float32").reshape(low.shape)
    inside = (low <= targets) & (targets <= high)
    return {
        "rows": len(low),
        "coverage": float(inside.all(axis=1).mean()),
        "target_coverage": inside.mean(axis=0).astype(float).tolist(),
        "mean_width": float(np.mean(high - low)),
    }
