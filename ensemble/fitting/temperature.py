"""Post-hoc calibration fitted exactly: temperature scaling and vector scaling (Guo et al.,
2017), in NumPy/SciPy on class probabilities `(rows, classes)` and integer labels.

Both rescale log-probabilities, `softmax(log(p) * scale + bias)`, with `log(p)` clipped as the
graph's `combiners.Calibration` layer clips it, so that what is fitted here is what the graph
computes. Temperature scaling has one scale `1 / T` and no bias; vector scaling one scale and
one bias per class. The NLL is convex in those parameters (the logits are linear in them), so
L-BFGS with an analytic gradient, run to a gradient norm of `GTOL`, finds the optimum.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
from scipy import optimize, special

from combiners.stack import LOG_EPSILON
from ensemble.fitting.arrays import checked_labels

__all__ = ["GTOL", "Scaling", "calibrated", "fit_scaling", "log_probabilities"]

log = logging.getLogger(__name__)

GTOL = 1e-9
"""L-BFGS stops when every component of the NLL's gradient is below this."""
METHODS = ("temperature", "vector")
VECTOR_PRIOR = 1.0
"""The L2 weight that keeps vector scaling finite: on the summed NLL, around the identity."""


class Scaling(NamedTuple):
    """A fitted calibration: `softmax(log(p) / temperature)`, or with `scale`/`bias` per class
    (vector scaling) `softmax(log(p) * scale + bias)`."""

    method: str
    temperature: float = 1.0
    scale: tuple[float, ...] | None = None
    bias: tuple[float, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"method": self.method, "temperature": self.temperature}
        if self.scale is not None:
            record.update(scale=list(self.scale), bias=list(self.bias or ()))
        return record


def log_probabilities(probabilities: Any) -> np.ndarray:
    """`log(clip(p, 1e-7, 1))` in float64, the graph's clip (`combiners.stack.LOG_EPSILON`)."""
    result: np.ndarray = np.log(np.clip(np.asarray(probabilities, dtype="float64"), LOG_EPSILON, 1.0))
    return result


def calibrated(probabilities: Any, scaling: Scaling) -> np.ndarray:
    """`probabilities` after `scaling`, as the graph's `Calibration` layer computes them."""
    logits = log_probabilities(probabilities)
    if scaling.scale is not None:
        logits = logits * np.asarray(scaling.scale) + np.asarray(scaling.bias)
    else:
        logits = logits / scaling.temperature
    result: np.ndarray = special.softmax(logits, axis=-1)
    return result


def fit_scaling(probabilities: Any, labels: Any, *, method: str = "temperature") -> Scaling:
    """The temperature (or per-class scale and bias) minimising the NLL of `labels`.

    Args:
        probabilities: `(rows, classes)` class probabilities of rows the model did not train on.
        labels: `(rows,)` integer labels.
        method: `"temperature"` (one parameter) or `"vector"` (2 x classes).

    Returns:
        The `Scaling`; a temperature above 1 softens an overconfident model. Temperature scaling
        is the exact maximum-likelihood temperature (rows all classified right ask for one as
        sharp as the solver's tolerance allows: the log says so); vector scaling adds a
        standard-normal prior around the identity (`VECTOR_PRIOR`), which keeps it finite when
        a class is separable on these rows.
    """
    if method not in METHODS:
        raise ValueError(f"Expected method in {METHODS}. Received: method={method!r}")
    logits = log_probabilities(probabilities)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(
            f"Expected probabilities of shape (rows, classes). Received: shape {np.shape(probabilities)}"
        )
    if not np.isfinite(logits).all():
        raise ValueError("Expected finite probabilities to calibrate. Received: NaN or inf")
    targets = checked_labels(np.asarray(labels), logits.shape[1])
    if len(targets) != len(logits):
        raise ValueError(f"Expected one label per row ({len(logits)}). Received: {len(targets)}")
    onehot = np.eye(logits.shape[1])[targets]
    classes = logits.shape[1]
    vector = method == "vector"

    start = np.concatenate([np.ones(classes), np.zeros(classes)]) if vector else np.ones(1)
    # Vector scaling's 2 x classes parameters run off to infinity when the fitting rows of a
    # class are separable by its own log-probability; a standard-normal prior around the
    # identity (scikit-learn's L2 at C=1: the summed NLL + ||params - identity||^2 / 2) bounds
    # them. Temperature scaling's one parameter is fitted exactly.
    prior = VECTOR_PRIOR / len(logits) if vector else 0.0

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        scale, bias = (params[:classes], params[classes:]) if vector else (params[0], 0.0)
        z = logits * scale + bias
        log_q = z - special.logsumexp(z, axis=1, keepdims=True)
        residual = (np.exp(log_q) - onehot) / len(z)  # d(mean NLL)/dz
        value = float(-np.sum(onehot * log_q) / len(z)) + 0.5 * prior * float(np.sum((params - start) ** 2))
        if vector:
            gradient = np.concatenate([(residual * logits).sum(0), residual.sum(0)])
            return value, gradient + prior * (params - start)
        return value, np.array([float(np.sum(residual * logits))])

    result = optimize.minimize(
        objective, start, jac=True, method="L-BFGS-B", options={"gtol": GTOL, "ftol": 0.0, "maxiter": 10000}
    )
    if not result.success and np.max(np.abs(result.jac)) > 1e3 * GTOL:
        log.warning("Calibration (%s): L-BFGS stopped early: %s", method, result.message)
    params = result.x
    if vector:
        return Scaling(
            "vector",
            scale=tuple(float(v) for v in params[:classes]),
            bias=tuple(float(v) for v in params[classes:]),
        )
    if np.all(logits.argmax(1) == targets):
        log.info(
            "Temperature scaling: every one of the %d rows is ranked right, so the likelihood "
            "asks for an ever sharper temperature (fitted: %.3g); it may not hold on new rows.",
            len(targets),
            1.0 / params[0],
        )
    if params[0] <= 0:
        # A non-positive scale ranks the classes backwards: the probabilities carry no signal
        # a temperature can calibrate.
        raise ValueError(
            f"Temperature scaling found no positive temperature (scale {params[0]:.3g}): the "
            "probabilities rank the true class no better than chance on these rows."
        )
    return Scaling("temperature", temperature=float(1.0 / params[0]))


def fit_weights_and_temperature(
    P: Any, labels: Any, *, start: np.ndarray | None = None
) -> tuple[np.ndarray, Scaling]:
    """Member weights and one temperature fitted jointly: a calibrated weighted mean,
    `softmax(log(sum_j w_j p_j) / T)`, minimising the NLL of `labels`.

    The weights' scale cancels in the softmax, so L-BFGS-B runs on non-negative weights and
    the scale `1 / T`, from `start` (default uniform) and the temperature that fits it. The
    problem is not convex jointly: the result is never worse on these rows than `start` with
    its own temperature, which is kept should the solver end higher.

    Args:
        P: level-one predictions `(rows, members, classes)`.
        labels: `(rows,)` integer labels.
        start: starting weights (e.g. `optimal_weights`), or None for uniform.

    Returns:
        The weights (non-negative, summing to 1) and the temperature.
    """
    predictions = np.asarray(P, dtype="float64")
    rows, members, classes = predictions.shape
    targets = checked_labels(np.asarray(labels), classes)
    onehot = np.eye(classes)[targets]
    weights = np.full(members, 1.0 / members) if start is None else np.asarray(start, dtype="float64")
    first = fit_scaling(np.einsum("rmc,m->rc", predictions, weights), targets)

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, s = params[:members], params[members]
        mixture = np.einsum("rmc,m->rc", predictions, w)
        inside = mixture > LOG_EPSILON * w.sum()  # where the graph's clip leaves log(p) alone
        log_mixture = np.log(np.maximum(mixture, LOG_EPSILON * w.sum()))
        z = s * log_mixture
        log_q = z - special.logsumexp(z, axis=1, keepdims=True)
        residual = (np.exp(log_q) - onehot) / rows  # d(mean NLL)/dz
        value = float(-np.sum(onehot * log_q) / rows)
        slope = np.where(inside, residual * s / np.maximum(mixture, 1e-300), 0.0)
        # Where the clip binds, log(1e-7 * sum(w)) still moves with every weight, by 1 / sum(w).
        clipped = float(np.sum(np.where(inside, 0.0, residual * s))) / w.sum()
        return value, np.concatenate(
            [np.einsum("rc,rmc->m", slope, predictions) + clipped, [float(np.sum(residual * log_mixture))]]
        )

    begin = np.concatenate([weights, [1.0 / first.temperature]])
    result = optimize.minimize(
        objective,
        begin,
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None)] * members + [(1e-6, None)],
        options={"gtol": GTOL, "ftol": 0.0, "maxiter": 10000},
    )
    params = result.x if result.fun <= objective(begin)[0] and result.x[:members].sum() > 0 else begin
    fitted = params[:members] / params[:members].sum()
    return fitted, Scaling("temperature", temperature=float(1.0 / params[members]))
