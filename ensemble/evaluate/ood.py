"""Out-of-distribution detection of an ensemble: how well each of its uncertainty scores tells
the OOD rows a config names (`ensemble.data.ood`) from the test rows, against the calibrated
selected member's own scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ensemble.evaluate.uncertainty import ood_detection, uncertainty_scores
from ensemble.fitting.temperature import Scaling, calibrated

__all__ = ["SCORES", "ensemble_scores", "evaluate_ood"]

# The ensemble's scores, each higher = more likely OOD; the last two are the graph's outputs.
SCORES = ("one_minus_max_probability", "entropy", "mutual_information")


def ensemble_scores(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ensemble's per-row uncertainty scores from its outputs: 1 - max probability and the
    graph's `entropy` and `mutual_information` (classification), the mean `std` over targets
    (regression)."""
    if "std" in outputs:
        std = np.asarray(outputs["std"], dtype="float64")
        return {"std": std.reshape(len(std), -1).mean(1)}
    prediction = np.asarray(outputs["prediction"], dtype="float64")
    scores = {"one_minus_max_probability": 1.0 - prediction.max(-1)}
    scores.update(
        {k: np.asarray(outputs[k], dtype="float64").reshape(-1) for k in SCORES[1:] if k in outputs}
    )
    return scores


def evaluate_ood(
    outputs_in: Mapping[str, np.ndarray],
    outputs_out: Mapping[str, np.ndarray],
    *,
    member_names: Sequence[str],
    baselines: Mapping[str, Any] | None = None,
    spec: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """AUROC, AUPR (OOD positive) and FPR at 95% TPR (`ood_detection`) of every ensemble score
    on the test rows' outputs (`outputs_in`) against the OOD rows' (`outputs_out`); with the
    job's `baselines` (classification), also the selected member's 1 - max probability and
    entropy after its temperature scaling. Returns `{"set", "rows", "ensemble": {score:
    {auroc, aupr, fpr95}}, "selected member (calibrated)": {...}}`."""
    inside, out = ensemble_scores(outputs_in), ensemble_scores(outputs_out)
    result: dict[str, Any] = {
        "set": None if spec is None else dict(spec),
        "rows": {"in": len(next(iter(inside.values()))), "out": len(next(iter(out.values())))},
        "ensemble": {name: ood_detection(inside[name], out[name]) for name in inside if name in out},
    }
    selected = (baselines or {}).get("selected")
    if selected is not None and selected.get("temperature") is not None:
        index = list(member_names).index(selected["name"])
        scaling = Scaling("temperature", temperature=float(selected["temperature"]))
        member_in, member_out = (
            uncertainty_scores(calibrated(np.asarray(o["member_predictions"])[:, index], scaling))
            for o in (outputs_in, outputs_out)
        )
        result[f"selected member {selected['name']} (calibrated)"] = {
            name: ood_detection(member_in[name], member_out[name]) for name in member_in
        }
    return result
