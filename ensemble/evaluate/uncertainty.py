"""The uncertainty literature's metrics in NumPy: Brier decomposition, adaptive and classwise ECE,
risk-coverage and AURC, OOD detection, per-row uncertainty scores, Gaussian interval calibration.

Shared conventions: probabilities are `(rows, classes)` in [0, 1], rows summing to 1 within 1e-2
(float16 softmax), renormalized in float64 as `classification_metrics` does; labels `y` are class
indices `(rows,)`; the predicted class is the first argmax; equal-width bins are those of
`expected_calibration_error` (bin i holds (i/bins, (i+1)/bins], 0 falls into the first); rows of
equal confidence form one tie block and each counts with the block's mean correctness, so no
result depends on row order; scalars are Python floats; NaN, infinities and mismatched shapes
are `EnsembleError`s naming the argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

from ensemble.errors import EnsembleError
from ensemble.evaluate.metrics import MIN_STD

__all__ = [
    "adaptive_ece",
    "aurc",
    "brier_decomposition",
    "classwise_ece",
    "excess_aurc",
    "interval_coverage",
    "ood_detection",
    "quantile_calibration_error",
    "risk_coverage",
    "uncertainty_scores",
]

Array = npt.ArrayLike
Floats = npt.NDArray[np.float64]

_SUM_TOLERANCE = 1e-2  # as the figures' checks: float16 softmax rows miss 1 by ~1e-3
_EPSILON = 1e-7  # the clip of `ensemble.graph.layers.entropy`
_QUANTILES = tuple(float(q) for q in np.linspace(0.05, 0.95, 19))


def _floats(value: Array, name: str, ndims: Sequence[int], shape: str) -> Floats:
    array = np.asarray(value, dtype="float64")
    if array.ndim not in ndims or array.size == 0:
        raise EnsembleError(f"Expected {name} of shape {shape}, rows > 0. Received: shape {array.shape}")
    if not np.isfinite(array).all():
        at = np.argwhere(~np.isfinite(array))[0].tolist()
        raise EnsembleError(f"Expected finite values in {name}. Received: {array[tuple(at)]} at index {at}")
    return array


def _probabilities(value: Array, name: str = "probabilities", ndim: int = 2) -> Floats:
    shape = "(rows, classes)" if ndim == 2 else "(rows, members, classes)"
    p = _floats(value, name, (ndim,), shape)
    sums = p.sum(-1)
    if p.min() < 0 or p.max() > 1 or np.abs(sums - 1).max() > _SUM_TOLERANCE:
        raise EnsembleError(
            f"Expected {name} {p.shape} to hold probabilities (in [0, 1], rows summing to 1 within "
            f"{_SUM_TOLERANCE}). Received: values in [{p.min():.4g}, {p.max():.4g}], row sums in "
            f"[{sums.min():.4g}, {sums.max():.4g}]"
        )
    return np.asarray(p / sums[..., None], dtype=np.float64)


def _labels(y: Array, p: Floats) -> npt.NDArray[np.int64]:
    labels = _floats(y, "y", (1,), "(rows,)")
    if len(labels) != len(p) or np.any(labels % 1) or labels.min() < 0 or labels.max() >= p.shape[1]:
        raise EnsembleError(
            f"Expected y as one integer label in [0, {p.shape[1]}) per row of probabilities {p.shape}. "
            f"Received: y.shape={labels.shape}, values in [{labels.min():g}, {labels.max():g}]"
        )
    return labels.astype(np.int64)


def _bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise EnsembleError(f"Expected a positive integer number of bins. Received: bins={bins!r}")
    return int(bins)


def _width_bins(values: Floats, bins: int) -> npt.NDArray[np.intp]:
    return np.clip(np.ceil(values * _bins(bins)).astype(np.intp) - 1, 0, _bins(bins) - 1)


def brier_decomposition(y: Array, probabilities: Array, bins: int | None = 15) -> dict[str, float]:
    """Murphy's decomposition of the Brier score summed over classes (`classification_metrics`'s
    Brier, in [0, 2]): `brier = reliability - resolution + uncertainty`.

    The summed Brier is the sum over classes c of column c's binary Brier, each decomposed on its
    own: column c's probabilities are grouped into `bins` equal-width bins (by distinct value with
    `bins=None`); with n_k rows, mean forecast p_k and frequency o_k of c in group k, and base
    rate o of c over N rows: reliability_c = sum_k n_k/N (p_k - o_k)**2, resolution_c =
    sum_k n_k/N (o_k - o)**2, uncertainty_c = o (1 - o); the terms returned are sums over classes.
    The identity is exact when each group of each column holds one probability value (always
    with `bins=None`); otherwise `brier` (computed directly) also holds the within-bin variance
    of p minus twice its within-bin covariance with the outcome, small for narrow bins.
    """
    p = _probabilities(probabilities)
    outcome = np.eye(p.shape[1])[_labels(y, p)]
    terms = {"reliability": 0.0, "resolution": 0.0, "uncertainty": 0.0}
    for c in range(p.shape[1]):
        group = np.unique(p[:, c], return_inverse=True)[1] if bins is None else _width_bins(p[:, c], bins)
        count = np.bincount(group)
        seen = count > 0
        forecast = np.bincount(group, weights=p[:, c])[seen] / count[seen]
        frequency = np.bincount(group, weights=outcome[:, c])[seen] / count[seen]
        weight = count[seen] / len(p)
        base = outcome[:, c].mean()
        terms["reliability"] += float(np.sum(weight * (forecast - frequency) ** 2))
        terms["resolution"] += float(np.sum(weight * (frequency - base) ** 2))
        terms["uncertainty"] += float(base * (1 - base))
    return {**terms, "brier": float(np.mean(np.sum((p - outcome) ** 2, axis=1)))}


def _tie_means(confidence: Floats, values: Floats) -> Floats:
    """`values` (ordered like the sorted `confidence`) replaced by their mean over each tie block."""
    start = np.r_[True, confidence[1:] != confidence[:-1]]
    block = np.cumsum(start) - 1
    means = np.bincount(block, weights=values) / np.bincount(block)
    return np.asarray(means[block], dtype=np.float64)


def adaptive_ece(y: Array, probabilities: Array, bins: int = 15) -> float:
    """Top-label ECE over equal-mass bins: rows sorted by confidence (max probability) are cut into
    `bins` contiguous groups whose sizes differ by at most one (the first `rows % bins` one larger,
    as `np.array_split`; fewer groups when rows < bins); ECE = sum_b n_b/N |acc_b - conf_b|.
    Rows of equal confidence split across groups count with their tie block's mean correctness."""
    p = _probabilities(probabilities)
    labels = _labels(y, p)
    order = np.argsort(p.max(1), kind="stable")
    confidence = p.max(1)[order]
    correct = _tie_means(confidence, (p.argmax(1) == labels)[order].astype(np.float64))
    gap = 0.0
    for part in np.array_split(np.arange(len(p)), min(_bins(bins), len(p))):
        gap += len(part) / len(p) * abs(correct[part].mean() - confidence[part].mean())
    return float(gap)


def classwise_ece(y: Array, probabilities: Array, bins: int = 15) -> float:
    """Classwise ECE (Kull et al., 2019): per class c, the bin-weighted gap between the mean
    probability of c and the frequency of c in equal-width bins of that column, averaged over
    classes (every class column counts, seen in y or not)."""
    p = _probabilities(probabilities)
    outcome = np.eye(p.shape[1])[_labels(y, p)]
    gaps = []
    for c in range(p.shape[1]):
        index = _width_bins(p[:, c], bins)
        gap = np.bincount(index, weights=p[:, c] - outcome[:, c])  # n_b (mean p - mean o) per bin
        gaps.append(np.abs(gap).sum() / len(p))
    return float(np.mean(gaps))


def _errors(y: Array | None, predicted: Array, confidence: Array | None) -> tuple[Floats, Floats]:
    """Per-row error (0/1) and confidence, from probabilities and labels or from correctness."""
    if (np.ndim(predicted) == 2) == (y is None) or (y is None and confidence is None):
        raise EnsembleError(
            "Expected predicted (rows, classes) with labels y, or correctness (rows,) with y=None and "
            f"a confidence. Received: predicted.shape={np.shape(predicted)}, y is None: {y is None}"
        )
    if y is None:
        errors = 1.0 - _floats(predicted, "predicted", (1,), "(rows,) of correctness")
        if not np.isin(errors, (0.0, 1.0)).all():
            raise EnsembleError("Expected predicted as correctness: booleans or 0/1. Received other values")
        score = _floats(confidence if confidence is not None else [], "confidence", (1,), "(rows,)")
    else:
        p = _probabilities(predicted, "predicted")
        errors = (p.argmax(1) != _labels(y, p)).astype(np.float64)
        score = p.max(1) if confidence is None else _floats(confidence, "confidence", (1,), "(rows,)")
    if len(score) != len(errors):
        raise EnsembleError(f"Expected one confidence per row ({len(errors)}). Received: {score.shape}")
    return errors, score


def risk_coverage(
    y: Array | None, predicted: Array, confidence: Array | None = None
) -> tuple[Floats, Floats]:
    """The risk-coverage curve of selective classification: `(coverage, risk)` with coverage k/n
    and risk the error rate among the k most confident rows, for k = 1..n.

    `predicted` is probabilities (rows, classes) with labels `y` (error: first argmax != y;
    `confidence` defaults to the max probability), or per-row correctness (rows,) of booleans or
    0/1 with `y=None` and a `confidence`. Higher confidence is kept first; rows of equal
    confidence count with their block's mean error (the expected risk over random tie orders).
    """
    errors, score = _errors(y, predicted, confidence)
    order = np.argsort(-score, kind="stable")
    smoothed = _tie_means(score[order], errors[order])
    k = np.arange(1, len(errors) + 1, dtype=np.float64)
    return k / len(errors), np.cumsum(smoothed) / k


def aurc(y: Array | None, predicted: Array, confidence: Array | None = None) -> float:
    """Area under the risk-coverage curve (Geifman et al., 2019): the mean of the selective risk
    over k = 1..n (a right Riemann sum with step 1/n). Arguments as `risk_coverage`."""
    return float(np.mean(risk_coverage(y, predicted, confidence)[1]))


def excess_aurc(y: Array | None, predicted: Array, confidence: Array | None = None) -> float:
    """AURC minus the least AURC reachable with the same errors (every error ranked last): with e
    errors in n rows, the optimal risk at k is max(0, k - (n - e)) / k. 0 for a perfect ranking."""
    errors, _ = _errors(y, predicted, confidence)
    n, e = len(errors), float(errors.sum())
    k = np.arange(1, n + 1, dtype=np.float64)
    return aurc(y, predicted, confidence) - float(np.mean(np.maximum(0.0, k - (n - e)) / k))


def ood_detection(scores_in: Array, scores_out: Array) -> dict[str, float]:
    """How well a score separates out-of-distribution rows (`scores_out`) from in-distribution ones
    (`scores_in`); a HIGHER score means MORE LIKELY OOD (pass an uncertainty, not a confidence).

    - `auroc`: P(out > in) + P(out == in) / 2, the Mann-Whitney statistic (ties count half);
    - `aupr`: average precision with OOD as the positive class, sum_j (R_j - R_{j-1}) P_j over
      distinct thresholds (scikit-learn's `average_precision_score`);
    - `fpr95`: with t the highest threshold at which at least 95% of OOD rows score >= t (the
      ceil(0.95 n_out)-th largest OOD score), the fraction of in-distribution rows scoring >= t.
    """
    inside = _floats(scores_in, "scores_in", (1,), "(rows,)")
    out = _floats(scores_out, "scores_out", (1,), "(rows,)")
    n_in, n_out = len(inside), len(out)
    scores = np.concatenate([inside, out])
    ranks = rankdata(scores)  # average ranks of ties
    auroc = (ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out)
    positive = np.r_[np.zeros(n_in), np.ones(n_out)]
    order = np.argsort(-scores, kind="stable")
    last = np.r_[scores[order][1:] != scores[order][:-1], True]  # the last row of each threshold
    true_positives = np.cumsum(positive[order])[last]
    precision = true_positives / (np.flatnonzero(last) + 1)
    aupr = np.sum(np.diff(np.r_[0.0, true_positives]) / n_out * precision)
    threshold = np.sort(out)[::-1][(95 * n_out + 99) // 100 - 1]
    return {"auroc": float(auroc), "aupr": float(aupr), "fpr95": float(np.mean(inside >= threshold))}


def _entropy(p: Floats) -> Floats:
    return np.asarray(-np.sum(p * np.log(np.clip(p, _EPSILON, 1.0)), axis=-1), dtype=np.float64)


def uncertainty_scores(probabilities: Array, member_probabilities: Array | None = None) -> dict[str, Floats]:
    """Per-row uncertainty scores, each higher = more uncertain (ready for `ood_detection`):
    `one_minus_max_probability` (1 - max p), `entropy` (nats, 0 log 0 = 0, p clipped at 1e-7 as
    the graph's `entropy` output), and with `member_probabilities` (rows, members, classes)
    `mutual_information`: entropy of the members' mean minus their mean entropy, floored at 0
    (the graph's output)."""
    p = _probabilities(probabilities)
    scores = {"one_minus_max_probability": 1.0 - p.max(1), "entropy": _entropy(p)}
    if member_probabilities is not None:
        members = _probabilities(member_probabilities, "member_probabilities", ndim=3)
        if (members.shape[0], members.shape[2]) != p.shape:
            raise EnsembleError(
                f"Expected member_probabilities of shape ({p.shape[0]}, members, {p.shape[1]}) to "
                f"match probabilities {p.shape}. Received: member_probabilities.shape={members.shape}"
            )
        information = _entropy(members.mean(1)) - _entropy(members).mean(1)
        scores["mutual_information"] = np.maximum(information, 0.0)
    return scores


def _z_scores(y: Array, mean: Array, std: Array | float) -> Floats:
    """(y - mean) / std, pooled over rows and targets; std (like `mean`, or one number) floored at 1e-6."""
    m = _floats(mean, "mean", (1, 2), "(rows,) or (rows, targets)")
    arrays = {"y": _floats(y, "y", (1, 2), "like mean"), "std": _floats(std, "std", (0, 1, 2), "like mean")}
    for name, array in arrays.items():
        if (array.ndim or name == "y") and (array.size != m.size or len(array) != len(m)):
            raise EnsembleError(f"Expected {name} like mean {m.shape}. Received: {name}.shape={array.shape}")
    if arrays["std"].min() < 0:
        raise EnsembleError(f"Expected std >= 0. Received: min(std)={arrays['std'].min():g}")
    s = np.maximum(arrays["std"], MIN_STD)
    return np.ravel((arrays["y"].reshape(m.shape) - m) / (s.reshape(m.shape) if s.ndim else s))


def _levels(values: Sequence[float] | Array, name: str) -> list[float]:
    levels = _floats(values, name, (1,), "(levels,)")
    if levels.min() <= 0 or levels.max() >= 1:
        raise EnsembleError(f"Expected {name} strictly between 0 and 1. Received: {levels.tolist()}")
    return [float(level) for level in levels]


def interval_coverage(
    y: Array, mean: Array, std: Array | float, levels: Sequence[float] = (0.5, 0.9, 0.95)
) -> dict[float, float]:
    """Per nominal level, the fraction of entries (rows x targets, pooled) inside the central
    Gaussian interval mean +- z std, ends included, z the (1 + level) / 2 standard normal
    quantile; std floored at 1e-6 as `gaussian_nll`. Calibrated: each fraction ~ its level."""
    z, levels = np.abs(_z_scores(y, mean, std)), _levels(levels, "levels")
    return {level: float(np.mean(z <= NormalDist().inv_cdf((1 + level) / 2))) for level in levels}


def quantile_calibration_error(
    y: Array, mean: Array, std: Array | float, quantiles: Sequence[float] | Array = _QUANTILES
) -> float:
    """Mean over nominal levels q (default 0.05, 0.10, ..., 0.95) of |q - observed|, observed the
    fraction of entries (pooled) with y <= mean + std * z_q, z_q the standard normal q-quantile."""
    z = _z_scores(y, mean, std)
    gaps = [abs(q - np.mean(z <= NormalDist().inv_cdf(q))) for q in _levels(quantiles, "quantiles")]
    return float(np.mean(gaps))
