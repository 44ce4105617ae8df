"""Every metric against an independent reference: scikit-learn, SciPy, or a case worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn import metrics

from ensemble import EnsembleError
from ensemble.evaluate import (
    classification_metrics,
    disagreement,
    expected_calibration_error,
    gaussian_nll,
    regression_metrics,
)

# Six rows, two classes: (probabilities, label). Confidences avoid bin edges on purpose.
ECE_PROBABILITIES = np.array([[0.9, 0.1], [0.1, 0.9], [0.55, 0.45], [0.3, 0.7], [0.65, 0.35], [0.05, 0.95]])
ECE_LABELS = np.array([0, 0, 0, 1, 1, 1])  # correct, wrong, correct, correct, wrong, correct


@pytest.mark.parametrize(
    "bins, expected",
    [
        # (0.4, 0.6]: {.55 right} gap .45; (0.6, 0.8]: {.7 right, .65 wrong} gap |.5 - .675|;
        # (0.8, 1]: {.9 right, .9 wrong, .95 right} gap |2/3 - 2.75/3|. Weighted by 1, 2, 3 of 6.
        (5, (0.45 * 1 + 0.175 * 2 + 0.25 * 3) / 6),
        # Width 1/15: .55, .65, .7 and .95 each alone (gaps .45, .65, .3, .05), the two .9 together (.4).
        (15, (0.45 + 0.65 + 0.3 + 0.05 + 0.4 * 2) / 6),
    ],
    ids=["5_bins", "15_bins"],
)
def test_expected_calibration_error_by_hand(bins: int, expected: float) -> None:
    assert expected_calibration_error(ECE_LABELS, ECE_PROBABILITIES, bins=bins) == pytest.approx(expected)


def test_classification_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4))
    probabilities = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype("float32")
    y = rng.integers(0, 4, size=50)
    exact = probabilities.astype("float64") / probabilities.astype("float64").sum(-1, keepdims=True)
    labels = [0, 1, 2, 3]

    result = classification_metrics(y, probabilities)

    assert set(result) == {"accuracy", "nll", "brier", "ece"}
    assert result["accuracy"] == pytest.approx(metrics.accuracy_score(y, exact.argmax(-1)))
    assert result["nll"] == pytest.approx(metrics.log_loss(y, exact, labels=labels))
    assert result["nll"] == pytest.approx(-np.log(exact[np.arange(50), y]).mean())
    assert result["brier"] == pytest.approx(((exact - np.eye(4)[y]) ** 2).sum(-1).mean())
    assert result["ece"] == pytest.approx(expected_calibration_error(y, exact))
    assert all(type(value) is float for value in result.values())


def test_brier_is_one_definition_for_two_and_more_classes() -> None:
    # Two classes scored like any other count: the squared error summed over both columns.
    probabilities = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([0, 0, 1])
    by_hand = ((probabilities - np.eye(2)[y]) ** 2).sum(-1).mean()
    assert classification_metrics(y, probabilities)["brier"] == pytest.approx(by_hand)
    assert by_hand == pytest.approx(2 * metrics.brier_score_loss(y, probabilities[:, 1]))
    # The same rows padded with a class nobody predicts score the same.
    padded = np.hstack([probabilities, np.zeros((3, 1))])
    assert classification_metrics(y, padded)["brier"] == pytest.approx(by_hand)


def test_multi_target_rmse_is_pooled() -> None:
    y = np.zeros((4, 2))
    prediction = np.array(
        [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    )  # target 0 off by 1, target 1 exact
    assert regression_metrics(y, prediction)["rmse"] == pytest.approx(np.sqrt(0.5))  # not (1 + 0) / 2


def test_classification_metrics_on_the_hand_worked_rows() -> None:
    result = classification_metrics(ECE_LABELS, ECE_PROBABILITIES)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["ece"] == pytest.approx(2.25 / 6)


@pytest.mark.parametrize("shape", [(40,), (40, 1), (40, 3)], ids=["vector", "one_column", "three_targets"])
def test_regression_metrics_match_sklearn_and_scipy(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=shape)
    prediction = (y + rng.normal(scale=0.3, size=shape)).reshape(40, -1)  # always 2-D, as models give
    std = rng.uniform(0.1, 1.0, size=prediction.shape)
    y_2d = y.reshape(40, -1)

    plain = regression_metrics(y, prediction)
    result = regression_metrics(y, prediction, std)

    assert set(plain) == {"rmse", "mae"} and set(result) == {"rmse", "mae", "nll"}
    # Pooled over every entry: not sklearn's mean of per-target RMSEs.
    assert result["rmse"] == pytest.approx(np.sqrt(((y_2d - prediction) ** 2).mean()))
    assert result["mae"] == pytest.approx(metrics.mean_absolute_error(y_2d, prediction))
    assert result["nll"] == pytest.approx(-norm.logpdf(y_2d, prediction, std).mean())
    assert {k: result[k] for k in plain} == plain


def test_gaussian_nll_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    y, mean = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
    std = rng.uniform(0.2, 2.0, size=(30, 2))
    assert gaussian_nll(y, mean, std) == pytest.approx(-norm.logpdf(y, mean, std).mean())
    # One number for every row and target.
    assert gaussian_nll(y, mean, 0.5) == pytest.approx(-norm.logpdf(y, mean, 0.5).mean())
    # Targets as a vector against (rows, 1) predictions: row for row, not broadcast to (rows, rows).
    assert gaussian_nll(y[:, 0], mean[:, :1], std[:, :1]) == pytest.approx(
        -norm.logpdf(y[:, 0], mean[:, 0], std[:, 0]).mean()
    )


def test_gaussian_nll_floors_the_standard_deviation() -> None:
    y = np.array([1.0, 2.0])
    mean = np.array([1.0, 2.0 + 1e-7])
    floored = gaussian_nll(y, mean, np.zeros(2))
    assert np.isfinite(floored)
    assert floored == pytest.approx(-norm.logpdf(y, mean, 1e-6).mean())


def test_disagreement_by_hand_with_ties() -> None:
    # (rows, members, classes); ties go to the lowest index, as in np.argmax.
    members = np.array(
        [
            [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.4, 0.2]],  # tops 0, 1, 0 (tie)
            [[0.1, 0.1, 0.8], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]],  # tops 2, 2, 0 (tie)
            [[0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]],  # tops 1, 0, 2
        ]
    )
    ensemble = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.4, 0.4, 0.2]])  # tops 0, 2, 0 (tie)
    # Members differing from the ensemble: row 0 one of three, row 1 one, row 2 two.
    assert disagreement(members, ensemble) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    assert disagreement(members[:, :1], members[:, 0]) == 0.0


@pytest.mark.parametrize(
    "members_shape, prediction_shape",
    [((5, 3), (5, 3)), ((5, 2, 3), (5, 4)), ((5, 2, 3), (4, 3))],
    ids=["members_not_3d", "classes_differ", "rows_differ"],
)
def test_disagreement_rejects_mismatched_shapes(
    members_shape: tuple[int, ...], prediction_shape: tuple[int, ...]
) -> None:
    with pytest.raises(EnsembleError, match=r"\(rows, members, classes\).*Received"):
        disagreement(np.zeros(members_shape), np.zeros(prediction_shape))
