"""Member weights for `MeanCombiner`, learned from level-one predictions.

Level-one predictions `P` are the members' outputs on held-out rows, stacked
as `(rows, members, width)`: class probabilities for classification, raw
predictions for regression. Targets `y` are integer labels `(rows,)` for
classification and floats `(rows,)` or `(rows, width)` for regression.

Both functions return float64 weights, non-negative and summing to 1, that
`MeanCombiner(weights=list(w))` takes as they are. Pure NumPy/SciPy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import optimize

from ensemble.fitting.arrays import check_count, checked_predictions
from ensemble.types import CLASSIFICATION

__all__ = ["Metric", "ensemble_selection", "optimal_weights"]

logger = logging.getLogger(__name__)

Metric = Callable[[np.ndarray, np.ndarray], float]
"""`(y, prediction) -> loss`, lower is better; prediction is `(rows, width)`."""

# Probabilities are clipped here before the log, so one confident miss costs
# about 34.5 nats rather than infinity.
PROBABILITY_FLOOR = 1e-15
# Scores this close count as equal: the same bag averaged in another order
# differs in the last bits, and that noise must not break a tie.
TIE_RTOL = 1e-12


def ensemble_selection(
    P: Any,
    y: Any,
    *,
    task: str = CLASSIFICATION,
    rounds: int = 50,
    metric: Metric | None = None,
    init_best: int = 1,
) -> np.ndarray:
    """Greedy ensemble selection with replacement (Caruana et al., 2004).

    The bag starts with the `init_best` best single members. Each further
    round adds, with replacement, the member whose addition gives the plain
    average of the bag the lowest metric, until the bag holds `rounds`
    members. As in AutoGluon's `EnsembleSelection`, the bag kept is the
    smallest one, along the way, that reached the lowest metric; so the
    result is never worse than the best single member. Ties go to the lowest
    member index (AutoGluon breaks them at random).

    Args:
        P: level-one predictions `(rows, members, width)`.
        y: targets, see the module docstring.
        task: `"classification"` or `"regression"`.
        rounds: the bag size to grow to, the initial members included.
        metric: a loss to minimise, called as `metric(y, prediction)` with
            `y` as validated (labels `(rows,)`, or regression targets
            `(rows, width)`). Default: NLL for classification, MSE for
            regression.
        init_best: how many of the best single members start the bag.

    Returns:
        float64 weights `(members,)`: each member's count in the bag over
        the bag size.
    """
    predictions, targets = checked_predictions(P, y, task)
    members = predictions.shape[1]
    check_count("rounds", rounds, minimum=1)
    check_count("init_best", init_best, minimum=1)
    if init_best > min(members, rounds):
        raise ValueError(
            "Expected init_best to be at most the number of members "
            f"({members}) and at most rounds ({rounds}). "
            f"Received: init_best={init_best}"
        )
    if metric is not None and not callable(metric):
        raise TypeError(
            "Expected metric to be a callable (y, prediction) -> float, or "
            f"None for the default. Received: metric={metric!r}"
        )
    loss = _default_metric(task) if metric is None else metric

    def score(bag_mean: np.ndarray) -> float:
        value = float(loss(targets, bag_mean))
        return value if np.isfinite(value) else np.inf

    singles = np.array([score(predictions[:, m]) for m in range(members)])
    counts = np.zeros(members, dtype=np.int64)
    for _ in range(init_best):
        # Already chosen members are out of the running for the start.
        counts[_first_minimum(np.where(counts > 0, np.inf, singles))] = 1
    total = np.tensordot(counts, predictions, axes=([0], [1]))
    trajectory = [score(total / init_best)]
    bags = [counts.copy()]
    for size in range(init_best + 1, rounds + 1):
        scores = np.array([score((total + predictions[:, m]) / size) for m in range(members)])
        best = _first_minimum(scores)
        counts[best] += 1
        total += predictions[:, best]
        trajectory.append(float(scores[best]))
        bags.append(counts.copy())
    kept = bags[_first_minimum(np.array(trajectory))]
    logger.debug(
        "Ensemble selection: losses %s; kept the bag of %d: %s",
        [round(value, 6) for value in trajectory],
        kept.sum(),
        kept.tolist(),
    )
    weights: np.ndarray = kept / kept.sum()
    return weights


def optimal_weights(P: Any, y: Any, *, task: str = CLASSIFICATION) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the loss of the weighted average.

    The loss is the NLL for classification and the MSE for regression; both
    are convex in the weights, so SLSQP on the simplex (bounds [0, 1], sum
    1), started from uniform with an analytic gradient, finds the optimum.
    The result is never worse, on (P, y), than uniform weights or the best
    single member: those are kept as fallbacks should the solver stop short.

    Args:
        P: level-one predictions `(rows, members, width)`.
        y: targets, see the module docstring.
        task: `"classification"` or `"regression"`.

    Returns:
        float64 weights `(members,)`.
    """
    predictions, targets = checked_predictions(P, y, task)
    members = predictions.shape[1]
    uniform = np.full(members, 1.0 / members)
    if task == CLASSIFICATION:
        objective = _nll_objective(_true_class_probabilities(predictions, targets))
    else:
        objective = _mse_objective(predictions, targets)
    result = optimize.minimize(
        objective,
        uniform,
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * members,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"ftol": 1e-12, "maxiter": 1000},
    )
    if not result.success:
        logger.warning("optimal_weights: SLSQP stopped early: %s", result.message)
    # SLSQP may step a hair outside the bounds.
    fitted = np.clip(result.x, 0.0, None)
    fitted = fitted / fitted.sum() if fitted.sum() > 0 else uniform
    candidates = [fitted, uniform, *np.eye(members)]
    # argmin keeps the first of equal losses: the fitted weights.
    best = int(np.argmin([objective(w)[0] for w in candidates]))
    weights: np.ndarray = np.asarray(candidates[best], dtype=np.float64)
    return weights


# Losses.


def _true_class_probabilities(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`(rows, members)`: each member's probability of each row's true class."""
    rows = np.arange(len(labels))
    return predictions[rows, :, labels]


def _negative_log_likelihood(labels: np.ndarray, probabilities: np.ndarray) -> float:
    true_class = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(true_class, PROBABILITY_FLOOR))))


def _mean_squared_error(targets: np.ndarray, prediction: np.ndarray) -> float:
    return float(np.mean((prediction - targets) ** 2))


def _default_metric(task: str) -> Metric:
    return _negative_log_likelihood if task == CLASSIFICATION else _mean_squared_error


Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


def _nll_objective(true_class: np.ndarray) -> Objective:
    """NLL of the weighted average, and its gradient, from `(rows, members)` true-class probabilities."""

    def objective(weights: np.ndarray) -> tuple[float, np.ndarray]:
        mixture = true_class @ weights
        clipped = np.maximum(mixture, PROBABILITY_FLOOR)
        # Where the floor binds, the loss is flat in the weights.
        slope = np.where(mixture > PROBABILITY_FLOOR, 1.0 / clipped, 0.0)
        value = float(-np.mean(np.log(clipped)))
        gradient: np.ndarray = -(true_class * slope[:, None]).mean(axis=0)
        return value, gradient

    return objective


def _mse_objective(predictions: np.ndarray, targets: np.ndarray) -> Objective:
    """MSE of the weighted average, and its gradient, as the quadratic form `w' G w`.

    On the simplex the ensemble's residual is the weighted sum of the
    members' residuals, so `G` (members x members) holds all the data needs.
    It is scaled to a unit mean diagonal so that the solver's tolerance does
    not depend on the units of the targets; the minimiser is unchanged.
    """
    residuals = predictions - targets[:, None, :]
    gram = np.einsum("rmk,rnk->mn", residuals, residuals) / (residuals.shape[0] * residuals.shape[2])
    scale = float(np.trace(gram)) / len(gram)
    if scale > 0:
        gram = gram / scale

    def objective(weights: np.ndarray) -> tuple[float, np.ndarray]:
        product = gram @ weights
        gradient: np.ndarray = 2.0 * product
        return float(weights @ product), gradient

    return objective


def _first_minimum(scores: np.ndarray) -> int:
    """Index of the lowest score; among scores equal to TIE_RTOL, the lowest index."""
    if not np.isfinite(scores).any():
        raise ValueError(
            "Expected the metric to return a finite value for at least one "
            f"candidate. Received: scores={scores.tolist()}"
        )
    lowest = scores.min()
    return int(np.flatnonzero(scores <= lowest + TIE_RTOL * abs(lowest))[0])


# Validation.
