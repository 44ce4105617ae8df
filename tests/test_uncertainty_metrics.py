"""The uncertainty metric suite against independent references: scikit-learn, SciPy, brute force,
and small cases worked by hand."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics

from ensemble import EnsembleError
from ensemble.evaluate import (
    adaptive_ece,
    aurc,
    brier_decomposition,
    classification_metrics,
    classwise_ece,
    excess_aurc,
    interval_coverage,
    ood_detection,
    quantile_calibration_error,
    risk_coverage,
    uncertainty_scores,
)

# Six rows, two classes; no probability lies on an edge of 5 or 15 equal-width bins.
PROBABILITIES = np.array([[0.9, 0.1], [0.1, 0.9], [0.55, 0.45], [0.3, 0.7], [0.65, 0.35], [0.05, 0.95]])
LABELS = np.array([0, 0, 0, 1, 1, 1])  # top label: right, wrong, right, right, wrong, right


def calibrated(rows: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dirichlet forecasts and labels drawn from them: a perfectly calibrated forecaster."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(classes), size=rows)
    y = np.minimum((rng.random(rows)[:, None] > p.cumsum(1)).sum(1), classes - 1)
    return p, y


@pytest.mark.parametrize("bins", [15, 5, None])
def test_brier_decomposition_by_hand(bins: int | None) -> None:
    """Six rows, P(class 1) in {0.25, 0.5, 0.9} twice each, with labels (0, 1), (0, 1), (1, 1).

    Class 1: frequencies o_k = 0.5, 0.5, 1 per group, base rate o = 4/6 = 2/3.
      reliability_1 = 1/3 [(0.25 - 0.5)^2 + (0.5 - 0.5)^2 + (0.9 - 1)^2] = 0.0725 / 3
      resolution_1  = 1/3 [(0.5 - 2/3)^2 + (0.5 - 2/3)^2 + (1 - 2/3)^2] = 1/3 * 6/36 = 1/18
      uncertainty_1 = 2/3 * 1/3 = 2/9
    Class 0 is the complement (p0 = 1 - p1, o0 = 1 - o1): the same three terms. Summed:
      reliability = 0.145 / 3, resolution = 1/9, uncertainty = 4/9.
    Brier per row = 2 (p1 - y)^2: 2 * (0.0625 + 0.5625 + 0.25 + 0.25 + 0.01 + 0.01) / 6 = 2.29 / 6,
    and 0.145/3 - 1/9 + 4/9 = 0.048333 + 0.333333 = 0.381667 = 2.29 / 6.
    Each value falls in its own bin with 5 or 15 bins, so binning changes nothing.
    """
    p1 = np.array([0.25, 0.25, 0.5, 0.5, 0.9, 0.9])
    y = np.array([0, 1, 0, 1, 1, 1])
    result = brier_decomposition(y, np.stack([1 - p1, p1], 1), bins=bins)
    assert result == pytest.approx(
        {"reliability": 0.145 / 3, "resolution": 1 / 9, "uncertainty": 4 / 9, "brier": 2.29 / 6}, abs=1e-12
    )
    assert all(type(value) is float for value in result.values())


def test_brier_identity_exact_on_few_distinct_multiclass_forecasts() -> None:
    # Three forecast vectors whose values of each class fall into distinct bins of 15.
    forecasts = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.5, 0.25]], dtype="float32")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    p = forecasts[rng.integers(0, 3, 300)]
    result = brier_decomposition(y, p)
    assert result["brier"] == pytest.approx(classification_metrics(y, p)["brier"], abs=1e-12)
    assert result["brier"] == pytest.approx(
        result["reliability"] - result["resolution"] + result["uncertainty"], abs=1e-12
    )
    base = np.bincount(y, minlength=3) / len(y)
    assert result["uncertainty"] == pytest.approx(np.sum(base * (1 - base)), abs=1e-12)


def test_brier_identity_on_continuous_forecasts() -> None:
    p, y = calibrated(5000, 4, seed=1)
    exact = brier_decomposition(y, p, bins=None)  # one group per distinct value: exact
    assert exact["brier"] == pytest.approx(exact["reliability"] - exact["resolution"] + exact["uncertainty"])
    binned = brier_decomposition(y, p)
    assert binned["brier"] == exact["brier"] == pytest.approx(classification_metrics(y, p)["brier"])
    recomposed = binned["reliability"] - binned["resolution"] + binned["uncertainty"]
    assert abs(binned["brier"] - recomposed) < 5e-3  # the within-bin terms of 15 narrow bins


def test_calibrated_forecaster_has_reliability_near_zero() -> None:
    p, y = calibrated(20000, 3, seed=2)
    assert brier_decomposition(y, p)["reliability"] < 2e-3
    sharpened = p**3 / (p**3).sum(1, keepdims=True)  # overconfident: same ranking, worse calibration
    assert brier_decomposition(y, sharpened)["reliability"] > 0.02
    assert classwise_ece(y, p) < 0.02 < classwise_ece(y, sharpened)
    assert adaptive_ece(y, p) < 0.02 < adaptive_ece(y, sharpened)


@pytest.mark.parametrize(
    "bins, expected",
    [
        # Sorted by confidence: .55 R, .65 W, .7 R, .9 R, .9 W, .95 R; the two .9 rows form a tie
        # block of mean correctness .5. Three bins of two rows:
        # {.55, .65}: |.5 - .6| = .1; {.7, .9}: |.75 - .8| = .05; {.9, .95}: |.75 - .925| = .175.
        (3, (0.1 + 0.05 + 0.175) / 3),
        # Two bins of three: {.55, .65, .7}: |2/3 - .6333|; {.9, .9, .95}: |2/3 - .9167| = .25.
        (2, (abs(2 / 3 - 1.9 / 3) + abs(2 / 3 - 2.75 / 3)) / 2),
        # Bins of 2, 2, 1, 1 rows (array_split): {.55, .65} .1; {.7, .9} .05; {.9} .4; {.95} .05.
        (4, (2 * 0.1 + 2 * 0.05 + 0.4 + 0.05) / 6),
    ],
)
def test_adaptive_ece_by_hand(bins: int, expected: float) -> None:
    assert adaptive_ece(LABELS, PROBABILITIES, bins=bins) == pytest.approx(expected, abs=1e-12)
    swapped = [1, 0, 2, 3, 4, 5]  # the tied rows in the other order: the same answer
    assert adaptive_ece(LABELS[swapped], PROBABILITIES[swapped], bins=bins) == pytest.approx(expected)


def test_adaptive_ece_with_a_bin_per_row_is_the_mean_gap() -> None:
    p, y = calibrated(40, 3, seed=3)
    gap = np.abs((p.argmax(1) == y) - p.max(1)).mean()
    assert adaptive_ece(y, p, bins=40) == adaptive_ece(y, p, bins=100) == pytest.approx(gap)


def test_classwise_ece_by_hand_and_against_a_loop() -> None:
    # bins=5. Class 0 column: (0, .2] {.1 y, .05 n}: |.15 - 1|; (.2, .4] {.3 n}: .3; (.4, .6] {.55 y}:
    # .45; (.6, .8] {.65 n}: .65; (.8, 1] {.9 y}: .1; sum 2.35 over 6 rows. Class 1 mirrors it.
    assert classwise_ece(LABELS, PROBABILITIES, bins=5) == pytest.approx(2.35 / 6, abs=1e-12)
    p, y = calibrated(500, 4, seed=4)
    edges = np.linspace(0, 1, 11)
    reference = []
    for c in range(4):
        gap = 0.0
        for low, high in itertools.pairwise(edges):
            in_bin = ((p[:, c] > low) | (low == 0)) & (p[:, c] <= high)
            if in_bin.any():
                gap += in_bin.mean() * abs(p[in_bin, c].mean() - (y[in_bin] == c).mean())
        reference.append(gap)
    assert classwise_ece(y, p, bins=10) == pytest.approx(np.mean(reference))


def test_aurc_by_hand() -> None:
    """Confidences .9, .8, .7, .6, .5 with correctness 1, 0, 1, 1, 0: risks 0, 1/2, 1/3, 1/4, 2/5,
    AURC = (0 + .5 + 1/3 + .25 + .4) / 5. Best ranking of 2 errors in 5: 0, 0, 0, 1/4, 2/5."""
    confidence = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([True, False, True, True, False])
    coverage, risk = risk_coverage(None, correct, confidence)
    np.testing.assert_allclose(coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0, 1 / 2, 1 / 3, 1 / 4, 2 / 5])
    assert aurc(None, correct, confidence) == pytest.approx((0.5 + 1 / 3 + 0.25 + 0.4) / 5)
    assert excess_aurc(None, correct, confidence) == pytest.approx((0.5 + 1 / 3 + 0.25 + 0.4 - 0.65) / 5)
    assert type(aurc(None, correct, confidence)) is float


def test_aurc_ties_are_the_mean_over_tie_orders() -> None:
    # .9 R, then .7 R and .7 W tied, then .5 R: risks 0, (0 + 1/2) / 2, 1/3, 1/4.
    _, risk = risk_coverage(None, [1, 0, 1, 1], [0.9, 0.7, 0.7, 0.5])
    np.testing.assert_allclose(risk, [0, 0.25, 1 / 3, 0.25])
    # Brute force: the mean curve over every row order of a stable sort equals ours.
    confidence = np.array([0.8, 0.5, 0.8, 0.5, 0.5, 0.2])
    correct = np.array([0, 1, 1, 0, 1, 0])
    curves = []
    for order in itertools.permutations(range(6)):
        ranked = np.array(order)[np.argsort(-confidence[list(order)], kind="stable")]
        curves.append(np.cumsum(1 - correct[ranked]) / np.arange(1, 7))
    np.testing.assert_allclose(risk_coverage(None, correct, confidence)[1], np.mean(curves, 0))
    # All rows tied: every risk is the error rate.
    assert aurc(None, correct, np.ones(6)) == pytest.approx(0.5)


def test_aurc_from_probabilities_and_perfect_ranking() -> None:
    p, y = calibrated(300, 3, seed=5)
    correct = p.argmax(1) == y
    assert aurc(y, p) == pytest.approx(aurc(None, correct, p.max(1)))
    oracle = correct + 0.1 * p.max(1)  # every right row above every wrong one
    errors, n = (~correct).sum(), len(y)
    minimum = np.mean([max(0, k - (n - errors)) / k for k in range(1, n + 1)])
    assert aurc(y, p, oracle) == pytest.approx(minimum)
    assert excess_aurc(y, p, oracle) == pytest.approx(0.0, abs=1e-12)
    assert excess_aurc(y, p) > 0
    assert excess_aurc(y, p, -oracle) > excess_aurc(y, p)  # the worst ranking is worse still


@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal: many ties within and across sets
def test_ood_detection_against_sklearn(decimals: int | None) -> None:
    rng = np.random.default_rng(6)
    scores_in, scores_out = rng.normal(0, 1, 400), rng.normal(1, 1.5, 173)
    if decimals is not None:
        scores_in, scores_out = scores_in.round(decimals), scores_out.round(decimals)
    labels = np.r_[np.zeros(400), np.ones(173)]
    scores = np.r_[scores_in, scores_out]
    fpr, tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    result = ood_detection(scores_in, scores_out)
    assert result["auroc"] == pytest.approx(metrics.roc_auc_score(labels, scores))
    assert result["aupr"] == pytest.approx(metrics.average_precision_score(labels, scores))
    assert result["fpr95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95, side="left")])
    assert all(type(value) is float for value in result.values())


def test_ood_detection_separated_scores() -> None:
    assert ood_detection([0.1, 0.2, 0.3], [0.5, 0.9]) == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    reversed_ = ood_detection([0.5, 0.9], [0.1, 0.2, 0.3])
    assert reversed_["auroc"] == 0.0 and reversed_["fpr95"] == 1.0


def test_uncertainty_scores_against_scipy_and_the_graph_layer() -> None:
    rng = np.random.default_rng(7)
    members = rng.dirichlet(np.ones(4), size=(50, 3))
    members[0, :, :] = [1.0, 0.0, 0.0, 0.0]  # zeros: 0 log 0 = 0; identical members: no information
    mean = members.mean(1)
    scores = uncertainty_scores(mean, members)
    np.testing.assert_allclose(scores["one_minus_max_probability"], 1 - mean.max(1))
    np.testing.assert_allclose(scores["entropy"], stats.entropy(mean, axis=1), atol=1e-12)
    information = stats.entropy(mean, axis=1) - stats.entropy(members, axis=2).mean(1)
    np.testing.assert_allclose(scores["mutual_information"], np.maximum(information, 0), atol=1e-12)
    assert scores["mutual_information"][0] == 0.0
    assert set(uncertainty_scores(mean)) == {"one_minus_max_probability", "entropy"}

    from ensemble.graph.layers import ClassificationUncertainty

    graph = ClassificationUncertainty()(members.astype("float32"), mean.astype("float32"))
    for key in ("entropy", "mutual_information"):
        np.testing.assert_allclose(scores[key], np.asarray(graph[key]), atol=2e-6)


def test_interval_coverage_and_quantile_error_against_scipy() -> None:
    rng = np.random.default_rng(8)
    mean, std = rng.normal(size=(1000, 2)), rng.uniform(0.5, 2, size=(1000, 2))
    y = mean + std * rng.standard_t(4, size=(1000, 2))  # heavier tails than the Gaussian
    coverage = interval_coverage(y, mean, std)
    for level in (0.5, 0.9, 0.95):
        low, high = stats.norm.interval(level, loc=mean, scale=std)
        assert coverage[level] == pytest.approx(np.mean((y >= low) & (y <= high)))
    quantiles = np.linspace(0.05, 0.95, 19)
    observed = [np.mean(y <= stats.norm.ppf(q, loc=mean, scale=std)) for q in quantiles]
    expected = np.mean(np.abs(observed - quantiles))
    assert quantile_calibration_error(y, mean, std) == pytest.approx(expected)
    assert quantile_calibration_error(y, mean, std, quantiles=[0.25, 0.75]) == pytest.approx(
        np.mean([abs(np.mean(y <= stats.norm.ppf(q, mean, std)) - q) for q in (0.25, 0.75)])
    )


def test_calibrated_gaussian_regressor() -> None:
    rng = np.random.default_rng(9)
    mean = rng.normal(size=20000)
    y = (mean + 0.7 * rng.standard_normal(20000))[:, None]  # y (rows, 1) against mean (rows,)
    coverage = interval_coverage(y, mean, 0.7, levels=[0.5, 0.9])
    assert coverage[0.5] == pytest.approx(0.5, abs=0.015) and coverage[0.9] == pytest.approx(0.9, abs=0.01)
    assert quantile_calibration_error(y, mean, 0.7) < 0.01
    assert interval_coverage(y, mean, 0.35, levels=[0.9])[0.9] < 0.7  # overconfident std: undercovers
    assert quantile_calibration_error(y, mean, 0.35) > 0.08


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: brier_decomposition([0, 1], PROBABILITIES), r"y as one integer label.*\(6, 2\)"),
        (lambda: adaptive_ece(LABELS, PROBABILITIES * 2), r"probabilities \(6, 2\).*summing to 1"),
        (lambda: classwise_ece(LABELS, np.full((6, 2), np.nan)), "finite values in probabilities"),
        (lambda: classwise_ece(LABELS + 0.5, PROBABILITIES), "integer label"),
        (lambda: adaptive_ece(LABELS, PROBABILITIES, bins=0), "bins=0"),
        (
            lambda: brier_decomposition(LABELS, PROBABILITIES[:, 0]),
            r"probabilities of shape \(rows, classes\)",
        ),
        (lambda: aurc(None, PROBABILITIES), r"y=None and a confidence"),
        (lambda: aurc(LABELS, [1, 0, 1]), "Received: predicted.shape=\\(3,\\)"),
        (lambda: aurc(None, [1, 0, 2], [0.1, 0.2, 0.3]), "booleans or 0/1"),
        (lambda: aurc(LABELS, PROBABILITIES, [0.5, 0.5]), r"one confidence per row \(6\)"),
        (lambda: ood_detection([0.1, np.inf], [0.3]), "finite values in scores_in"),
        (lambda: ood_detection([0.1], []), "scores_out of shape"),
        (
            lambda: uncertainty_scores(PROBABILITIES, np.ones((6, 2, 3)) / 3),
            r"member_probabilities of shape \(6, members, 2\)",
        ),
        (lambda: interval_coverage([1.0, 2.0], [1.0, 2.0, 3.0], 1.0), r"y like mean \(3,\)"),
        (lambda: interval_coverage([1.0, 2.0], [1.0, 2.0], [1.0, -1.0]), "std >= 0"),
        (lambda: interval_coverage([1.0, 2.0], [1.0, 2.0], [1.0, 1.0, 1.0]), r"std like mean \(2,\)"),
        (lambda: interval_coverage([1.0], [1.0], 1.0, levels=[0.5, 1.0]), "levels strictly between 0 and 1"),
        (lambda: quantile_calibration_error([1.0], [np.nan], 1.0), "finite values in mean"),
    ],
)
def test_bad_input_is_a_clear_error(call: Callable[[], object], message: str) -> None:
    with pytest.raises(EnsembleError, match=message):
        call()
