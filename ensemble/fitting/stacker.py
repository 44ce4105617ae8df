"""The default stacker of classifiers, fitted exactly in NumPy/SciPy: a multinomial logistic
regression over the members' log-probabilities, or one member temperature-scaled, whichever
cross-validation on the fitting rows finds best.

The meta features `F` are the members' `log(clip(p, 1e-7, 1))`, `(rows, members * classes)`
(then any passthrough features). The stacker is `softmax(F (K0 + D) + b)`, with `D` fitted to
minimise `C * sum(NLL) + ||D||^2 / 2` (scikit-learn's convention; the bias `b` is not
penalised) around a prior kernel `K0`. Three kinds of candidate compete on held-out NLL over
stratified folds (`ensemble.fitting.stacker_choice.cross_validated_stacker`), among those at least as accurate, held out, as
the member alone with the best held-out NLL (a lower NLL bought with a worse top class is not
the answer one would ship):

- `zero`: `K0 = 0`, scikit-learn's `LogisticRegressionCV` (it shrinks toward a uniform
  prediction, and can lose to one dominant member);
- `selected`: `K0` the selected member (best on the training folds) temperature-scaled, so
  the penalty shrinks toward the member one would ship alone, not toward zero;
- `member`: one member temperature-scaled, alone (`D = 0`).

All are convex problems. L-BFGS with analytic gradients runs until the largest component of the
gradient of the mean objective is below `CV_GTOL` (enough to score candidates on held-out
folds); the fit that goes into the graph then takes Newton steps (trust-ncg, exact
Hessian-vector products) to a gradient norm of `GTOL`, which reaches scikit-learn's optimum at
`tol=1e-12` (tested). A warm path over the ascending `C`s keeps it fast.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
from scipy import optimize

from ensemble.fitting.temperature import fit_scaling

__all__ = ["CS", "CV_GTOL", "GTOL", "Stacker", "fit_stacker", "log_softmax", "mean_nll", "scaled_prior"]

log = logging.getLogger(__name__)

GTOL = 1e-9
"""L-BFGS stops when every component of the mean objective's gradient is below this (the fit
that goes into the graph)."""
CV_GTOL = 1e-5
"""The same for the candidates scored on held-out folds: their held-out NLL moves by far less
than the differences between candidates past this."""
CS = tuple(float(c) for c in np.logspace(-4, 2, 7))
"""The inverse penalties cross-validation tries, past the pool alone (`C = 0`)."""
_MAXITER = 20000


class Stacker(NamedTuple):
    kernel: np.ndarray  # (features, classes): K0 + D
    bias: np.ndarray  # (classes,)
    prior: str  # "zero", "selected", "mean" or "member"
    C: float  # the inverse penalty on D; 0 for a prior alone ("member", "mean"; D = 0)
    member: int | None  # the member of the prior ("selected", "member"); None for "zero"
    cv_nll: dict[str, float] | None = None  # held-out NLL of every candidate tried

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """The stacker's class probabilities for meta features `(rows, features)`."""
        probabilities: np.ndarray = np.exp(
            log_softmax(np.asarray(features, "float64") @ self.kernel + self.bias)
        )
        return probabilities

    def describe(self) -> str:
        if self.prior == "member":
            return f"member {self.member} temperature-scaled alone"
        if self.prior == "mean" and self.C == 0:
            return "the members' geometric mean temperature-scaled"
        around = {"zero": "zero", "mean": "the members' geometric mean temperature-scaled"}.get(
            self.prior, f"member {self.member} temperature-scaled"
        )
        return f"logistic regression at C={self.C:g}, shrunk toward {around}"


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def _softmax_residual(z: np.ndarray, onehot: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean NLL of `onehot` under `softmax(z)`, and its gradient in `z`."""
    log_q = log_softmax(z)
    return float(-np.sum(onehot * log_q) / len(z)), (np.exp(log_q) - onehot) / len(z)


def _minimize(objective, start: np.ndarray, gtol: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    result = optimize.minimize(
        objective,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"gtol": gtol, "ftol": 0.0, "maxiter": _MAXITER, "maxcor": 20},
    )
    if not result.success and np.max(np.abs(result.jac)) > 10 * gtol:
        log.warning(
            "Stacker: L-BFGS stopped early (%s); gradient %.2g", result.message, np.abs(result.jac).max()
        )
    x: np.ndarray = result.x
    return x


def scaled_prior(features: np.ndarray, onehot: np.ndarray, unit: np.ndarray) -> np.ndarray | None:
    """`unit` (a kernel: one member's block of ones, or every member's 1 / members) scaled by
    the temperature that fits `softmax(features @ unit)` to these rows; None when no positive
    temperature fits (it ranks the true class no better than chance)."""
    try:
        scaling = fit_scaling(np.exp(log_softmax(features @ unit)), onehot.argmax(1))
    except ValueError:
        return None
    kernel: np.ndarray = unit / scaling.temperature
    return kernel


def fit_stacker(
    features: np.ndarray,
    onehot: np.ndarray,
    prior: np.ndarray,
    C: float,
    *,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    gtol: float = GTOL,
) -> tuple[np.ndarray, np.ndarray]:
    """The kernel `prior + D` and bias minimising `C * sum(NLL) + ||D||^2 / 2` (divided by the
    rows: the mean NLL plus `||D||^2 / (2 C rows)`), from `start` (kernel, bias) or the prior.

    L-BFGS runs to `CV_GTOL`; a tighter `gtol` is then reached by Newton steps on conjugate
    gradients (`trust-ncg` with exact Hessian-vector products), which L-BFGS approaches slowly.
    """
    rows, (width, classes) = len(features), prior.shape
    penalty = 1.0 / (C * rows)
    size = width * classes

    def split(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return params[:size].reshape(width, classes), params[size:]

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        deviation, b = split(params)
        value, residual = _softmax_residual(features @ (prior + deviation) + b, onehot)
        gradient = features.T @ residual + penalty * deviation
        return value + 0.5 * penalty * float(np.sum(deviation**2)), np.concatenate(
            [gradient.ravel(), residual.sum(0)]
        )

    kernel, bias = start if start is not None else (prior, np.zeros(classes))
    params = _minimize(objective, np.concatenate([(kernel - prior).ravel(), bias]), max(gtol, CV_GTOL))
    if gtol < CV_GTOL:

        def hessp(at: np.ndarray, direction: np.ndarray) -> np.ndarray:
            deviation, b = split(at)
            z = features @ (prior + deviation) + b
            q = np.exp(log_softmax(z))
            d_kernel, d_bias = split(direction)
            dz = features @ d_kernel + d_bias
            h = (q * dz - q * np.sum(q * dz, axis=1, keepdims=True)) / rows
            return np.concatenate([(features.T @ h + penalty * d_kernel).ravel(), h.sum(0)])

        result = optimize.minimize(
            objective,
            params,
            jac=True,
            hessp=hessp,
            method="trust-ncg",
            options={"gtol": gtol, "maxiter": 200},
        )
        params = result.x
    deviation, b = split(params)
    return prior + deviation, b


def mean_nll(features: np.ndarray, labels: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> float:
    log_q = log_softmax(features @ kernel + bias)
    return float(-np.mean(log_q[np.arange(len(labels)), labels]))
