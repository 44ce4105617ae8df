"""Risk-coverage, OOD densities and fitted colour scales: each against a NumPy/sklearn reference,
each plot a PNG, the errors named."""

from __future__ import annotations

import os

import matplotlib.image
import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import roc_auc_score

from ensemble.evaluate import figures as plots

pytestmark = pytest.mark.filterwarnings("error")

ROWS, CLASSES = 400, 5


@pytest.fixture
def predicted():
    rng = np.random.default_rng(7)
    y = rng.integers(0, CLASSES, ROWS)
    p = softmax(1.5 * np.eye(CLASSES)[y] + rng.normal(size=(ROWS, CLASSES)), -1)  # distinct confidences
    entropy = -(p * np.log(p)).sum(-1)
    return y, p, entropy


def _risk_by_sorting(errors, confidence):
    kept = errors[np.argsort(-confidence)]
    return np.cumsum(kept) / np.arange(1, len(kept) + 1)


def test_risk_coverage_curves_match_sorting_by_each_score(predicted):
    y, p, entropy = predicted
    errors = (p.argmax(1) != y).astype(float)

    curves = plots.risk_coverage_curves(y, p, {"entropy": entropy})

    assert list(curves) == ["max probability", "entropy"]
    for name, confidence in (("max probability", p.max(1)), ("entropy", -entropy)):
        risk = _risk_by_sorting(errors, confidence)
        np.testing.assert_allclose(curves[name]["coverage"], np.arange(1, ROWS + 1) / ROWS)
        np.testing.assert_allclose(curves[name]["risk"], risk, rtol=1e-12)
        assert curves[name]["aurc"] == pytest.approx(risk.mean(), rel=1e-12)
        assert curves[name]["risk"][-1] == pytest.approx(errors.mean())
    # Max probability ranks better than chance: its AURC beats the error rate.
    assert curves["max probability"]["aurc"] < errors.mean()


def test_a_score_ranking_errors_last_reaches_the_oracle(predicted):
    y, p, _ = predicted
    errors = (p.argmax(1) != y).astype(float)
    perfect = errors + np.random.default_rng(0).uniform(0, 0.5, ROWS)  # uncertainty: errors highest

    curve = plots.risk_coverage_curves(y, p, {"oracle score": perfect})["oracle score"]

    np.testing.assert_allclose(curve["risk"], plots.oracle_risk(errors), atol=1e-12)
    # Hand-worked: 2 errors in 4 rows, kept last: risks 0, 0, 1/3, 1/2.
    np.testing.assert_allclose(plots.oracle_risk([1, 0, 0, 1]), [0, 0, 1 / 3, 1 / 2])


def test_ood_histograms_are_densities_on_shared_edges():
    rng = np.random.default_rng(1)
    inside = {"entropy": rng.gamma(2.0, 0.2, 500), "mi": rng.uniform(0, 0.3, 500)}
    out = {"entropy": rng.gamma(4.0, 0.3, 60), "mi": rng.uniform(0.1, 0.6, 60)}

    histograms = plots.ood_histograms(inside, out, bins=12)

    for name in inside:
        edges = np.linspace(
            min(inside[name].min(), out[name].min()), max(inside[name].max(), out[name].max()), 13
        )
        counts_in = np.histogram(inside[name], bins=edges)[0]
        counts_out = np.histogram(out[name], bins=edges)[0]
        h = histograms[name]
        np.testing.assert_allclose(h["edges"], edges)
        np.testing.assert_allclose(h["density_in"], counts_in / (500 * np.diff(edges)))
        np.testing.assert_allclose(h["density_out"], counts_out / (60 * np.diff(edges)))
        assert np.sum(h["density_out"] * np.diff(edges)) == pytest.approx(1.0)  # not row counts
        labels = np.r_[np.zeros(500), np.ones(60)]
        assert h["auroc"] == pytest.approx(roc_auc_score(labels, np.r_[inside[name], out[name]]))


COLOR_SCALES = [
    ([0.62, 0.8, 0.71], ("viridis", 0.62, 0.8)),
    ([-0.2, 0.5, np.nan], ("coolwarm", -0.5, 0.5)),
    ([-3.0, -1.0], ("viridis", -3.0, -1.0)),
    ([0.0, 0.4], ("viridis", 0.0, 0.4)),
    ([0.3, 0.3], ("viridis", -0.2, 0.8)),
    ([np.nan], ("viridis", 0.0, 1.0)),
]


@pytest.mark.parametrize(("values", "expected"), COLOR_SCALES, ids=[str(v) for v, _ in COLOR_SCALES])
def test_color_scale_is_fitted_to_the_values(values, expected):
    assert plots.color_scale(values) == expected


def test_member_correlation_scale_is_fitted_to_the_off_diagonal():
    positive = np.array([[1.0, 0.62, 0.8], [0.62, 1.0, 0.71], [0.8, 0.71, 1.0]])
    assert plots.correlation_scale(positive) == ("viridis", 0.62, 0.8)
    mixed = np.array([[1.0, -0.2, 0.5], [-0.2, 1.0, np.nan], [0.5, np.nan, 1.0]])
    assert plots.correlation_scale(mixed) == ("coolwarm", -0.5, 0.5)


def test_reliability_markers_are_proportional_to_rows():
    np.testing.assert_allclose(plots.marker_areas([300, 30, 3, 0], 300), [400.0, 40.0, 4.0, 4.0])
    np.testing.assert_allclose(plots.marker_areas([150, 60], 300), [200.0, 80.0])


PLOTS = {
    "risk-coverage": lambda y, p, e, path: plots.plot_risk_coverage(y, p, path, {"entropy": e}),
    "ood": lambda y, p, e, path: plots.plot_ood_histograms(
        {"entropy": e[:300]}, {"entropy": e[300:] + 1}, path
    ),
    "correlation-mixed-signs": lambda y, p, e, path: plots.plot_member_correlation(
        np.array([[1.0, -0.3, np.nan], [-0.3, 1.0, 0.2], [np.nan, 0.2, 1.0]]), ["a", "b", "c"], path
    ),
}


@pytest.mark.parametrize("draw", PLOTS.values(), ids=PLOTS.keys())
def test_plot_writes_one_png(draw, predicted, tmp_path):
    path = tmp_path / "plot.png"

    assert draw(*predicted, str(path)) == path
    assert matplotlib.image.imread(path).ndim == 3
    assert os.listdir(tmp_path) == ["plot.png"]


ERRORS = [
    (
        lambda y, p, e: plots.risk_coverage_curves(y, p, {"entropy": e[:10]}),
        r"Expected the same number of rows in prediction, entropy",
    ),
    (lambda y, p, e: plots.ood_histograms({"entropy": e}, {"mi": e}), r"Expected the same score names"),
    (lambda y, p, e: plots.ood_histograms({}, {}), r"at least one"),
    (
        lambda y, p, e: plots.ood_histograms({"entropy": e}, {"entropy": np.r_[e[:5], np.inf]}),
        r"Expected finite scores in scores_out\['entropy'\]\. Received: 1 of 6 not finite",
    ),
    (lambda y, p, e: plots.ood_histograms({"s": e}, {"s": e}, bins=0), r"positive integer number of bins"),
]


@pytest.mark.parametrize(("call", "match"), ERRORS, ids=range(len(ERRORS)))
def test_errors(call, match, predicted):
    with pytest.raises(ValueError, match=match):
        call(*predicted)
