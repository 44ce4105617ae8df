"""The stacker's fit (`fit_logistic`) against the previous one, side by side, on digits.

Four scikit-learn members (logistic regression, naive Bayes, k-nearest neighbours, a random
forest) train on the rows the stacker does not see; their log-probabilities on the other
rows are the meta features (members x classes), as `StackingCombiner.meta_features` makes
them. The old fit is `LogisticRegressionCV` with lbfgs at scikit-learn's default tolerance
and BLAS threads, as `fit_stacking` ran it before; the new one is `fit_logistic`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from omegaconf import DictConfig
from scipy.special import log_softmax
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from combiners.stack import LOG_EPSILON
from ensemble.fitting.stacking import LOGISTIC_CS, fit_logistic
from experiments.benchmarks.timing import median_seconds

__all__ = ["bench_stacking", "digits_meta_features", "old_fit_logistic", "penalised_log_loss"]

STACKING_ROWS = 1000  # the case: 1000 rows x 40 meta features


def digits_meta_features(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`rows` digits rows' meta features from four members trained on the other rows."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    train, held = order[rows:], order[:rows]
    members: list[Any] = [
        LogisticRegression(max_iter=2000),
        GaussianNB(),
        KNeighborsClassifier(7),
        RandomForestClassifier(50, random_state=seed),
    ]
    probabilities = [m.fit(x[train] / 16, y[train]).predict_proba(x[held] / 16) for m in members]
    level_one = np.stack(probabilities, axis=1).astype("float32")
    features = np.log(np.clip(level_one, LOG_EPSILON, 1.0)).reshape(rows, -1)
    return features.astype("float64"), y[held]


def old_fit_logistic(features: np.ndarray, targets: np.ndarray, cv: int = 5) -> LogisticRegressionCV:
    """`fit_stacking`'s fit before: lbfgs at scikit-learn's default tolerance (1e-4)."""
    return LogisticRegressionCV(
        Cs=LOGISTIC_CS,
        l1_ratios=(0.0,),
        cv=cv,
        scoring="neg_log_loss",
        use_legacy_attributes=False,
        max_iter=2000,
    ).fit(features, targets)


def penalised_log_loss(estimator: Any, features: np.ndarray, targets: np.ndarray, C: float) -> float:
    """The objective both minimise at `C`: mean log-loss + |coef|^2 / (2 C rows)."""
    coef, rows = estimator.coef_, len(targets)
    if coef.shape[0] == 1:  # binary: one logit, class 1 against class 0
        logits = np.hstack([np.zeros((rows, 1)), features @ coef.T + estimator.intercept_])
    else:
        logits = features @ coef.T + estimator.intercept_
    log_p = log_softmax(logits, axis=1)
    penalty = float(np.sum(coef**2)) / (2 * C * rows)
    return float(-log_p[np.arange(rows), targets].mean()) + penalty


def bench_stacking(cfg: DictConfig) -> dict[str, Any]:
    """Seconds of the old and the new stacker fit (and the old on one BLAS thread, to split
    the gain), medians of `cfg.repeats`; where each lands against the other's optimum."""
    rows = int(cfg.get("stacking_rows", min(int(cfg.rows), STACKING_ROWS)))
    features, targets = digits_meta_features(rows, int(cfg.seed))
    fitted: dict[str, Any] = {}

    def timed(name: str, fit: Any) -> float:
        def work(_: Any) -> None:
            with warnings.catch_warnings():  # lbfgs may warn that it did not converge
                warnings.simplefilter("ignore")
                fitted[name] = fit(features, targets)

        return median_seconds(lambda: None, work, int(cfg.repeats))

    def old_one_thread(f: np.ndarray, t: np.ndarray) -> Any:
        with threadpool_limits(limits=1, user_api="blas"):
            return old_fit_logistic(f, t)

    old_s, old_one_thread_s = timed("old", old_fit_logistic), timed("old_1", old_one_thread)
    new_s = timed("new", fit_logistic)
    old, new = fitted["old"], fitted["new"]
    new_objective = penalised_log_loss(new, features, targets, float(new.C_))
    return {
        "rows": rows,
        "meta_features": int(features.shape[1]),
        "old_s": old_s,
        "old_one_blas_thread_s": old_one_thread_s,
        "new_s": new_s,
        "speedup": old_s / new_s,
        "old_C": float(old.C_),
        "new_C": float(new.C_),
        "old_objective_over_new": (
            penalised_log_loss(old, features, targets, float(old.C_)) / new_objective - 1
        ),
        "max_abs_probability_diff": float(
            np.abs(old.predict_proba(features) - new.predict_proba(features)).max()
        ),
    }
