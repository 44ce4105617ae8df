"""The fast stacker fit (`fit_logistic`) reaches the optimum a tight-tolerance scikit-learn fit
finds: the same C from the grid, the same probabilities, the same objective (no timings)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

from ensemble.fitting.stacking import LOGISTIC_CS, NEWTON_CHOLESKY_MAX_WEIGHTS, SOLVER_TOL, fit_logistic
from experiments.benchmarks.stacking import digits_meta_features, penalised_log_loss

ROWS = 300


@pytest.fixture(scope="module")
def meta() -> tuple[np.ndarray, np.ndarray]:
    return digits_meta_features(ROWS, seed=0)  # 300 rows x 4 members x 10 classes


def _reference(solver: str, C: float | None, features: np.ndarray, targets: np.ndarray):
    """scikit-learn at tol 1e-10 (the fast fit: 1e-6 or 1e-8), by the other Newton solver."""
    options = {"solver": solver, "tol": 1e-10, "max_iter": 10_000}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # at 1e-10 a line search may hit float precision
        if C is not None:
            return LogisticRegression(C=C, **options).fit(features, targets)
        return LogisticRegressionCV(
            Cs=LOGISTIC_CS,
            l1_ratios=(0.0,),
            cv=5,
            scoring="neg_log_loss",
            use_legacy_attributes=False,
            **options,
        ).fit(features, targets)


def _gradient(estimator, features: np.ndarray, targets: np.ndarray, C: float) -> np.ndarray:
    """The objective's gradient, computed here: mean log-loss + |coef|^2 / (2 C rows)."""
    rows, coef = len(targets), estimator.coef_
    p = estimator.predict_proba(features)
    residual = (p - np.eye(p.shape[1])[targets]) / rows
    if coef.shape[0] == 1:
        residual = residual[:, 1:]
    return np.concatenate([(residual.T @ features + coef / (C * rows)).ravel(), residual.sum(0)])


def _assert_same_optimum(new, reference, features, targets, C):
    np.testing.assert_allclose(
        new.predict_proba(features), reference.predict_proba(features), rtol=0, atol=1e-4
    )
    assert penalised_log_loss(new, features, targets, C) == pytest.approx(
        penalised_log_loss(reference, features, targets, C), rel=1e-6
    )
    assert np.abs(_gradient(new, features, targets, C)).max() <= 10 * SOLVER_TOL["newton-cholesky"]


def test_cross_validated_fit_reaches_the_reference_optimum(meta):
    features, targets = meta
    assert (features.shape[1] + 1) * 10 <= NEWTON_CHOLESKY_MAX_WEIGHTS
    new = fit_logistic(features, targets)
    assert new.solver == "newton-cholesky" and new.tol == SOLVER_TOL["newton-cholesky"]
    reference = _reference("newton-cg", None, features, targets)
    assert new.C_ == reference.C_  # the same C from the grid
    new_scores, reference_scores = (np.asarray(e.scores_).reshape(5, -1) for e in (new, reference))
    np.testing.assert_allclose(new_scores.mean(0), reference_scores.mean(0), atol=1e-4)
    _assert_same_optimum(new, reference, features, targets, float(new.C_))


def test_wide_fit_takes_newton_cg_to_the_reference_optimum(meta):
    features, targets = meta
    x, _ = load_digits(return_X_y=True)
    held = np.random.default_rng(0).permutation(len(x))[:ROWS]  # the rows meta() holds out
    wide = np.hstack([features, x[held, 20:44]])  # passthrough-like: 650 weights
    assert (wide.shape[1] + 1) * 10 > NEWTON_CHOLESKY_MAX_WEIGHTS
    new = fit_logistic(wide, targets, C=1.0)
    assert new.solver == "newton-cg"
    _assert_same_optimum(new, _reference("newton-cholesky", 1.0, wide, targets), wide, targets, 1.0)


def test_fixed_c_fit_reaches_the_optimum_lbfgs_stops_short_of(meta):
    features, targets = meta
    new = fit_logistic(features, targets, C=1.0)
    reference = _reference("newton-cg", 1.0, features, targets)
    _assert_same_optimum(new, reference, features, targets, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lbfgs = LogisticRegression(C=1.0, max_iter=2000).fit(features, targets)  # tol 1e-4
    gap = penalised_log_loss(lbfgs, features, targets, 1.0) / penalised_log_loss(new, features, targets, 1.0)
    assert gap > 1 + 1e-6  # what the tighter tolerance buys


def test_binary_fit_reaches_the_reference_optimum(meta):
    features, targets = meta
    two = np.isin(targets, (3, 8))
    binary, labels = features[two][:, [3, 8, 13, 18, 23, 28, 33, 38]], (targets[two] == 8).astype(int)
    new = fit_logistic(binary, labels)
    reference = _reference("newton-cg", None, binary, labels)
    assert new.coef_.shape == (1, binary.shape[1]) and new.C_ == reference.C_
    _assert_same_optimum(new, reference, binary, labels, float(new.C_))
